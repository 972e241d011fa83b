"""A cache of an earlier version (``index.json`` beside ``shard-*.npz``) moves into the
store, and a pickle in one of its shards is refused even when its checksum is right.

The checksum in ``index.json`` proves a shard is the file that was listed, not that it is
safe: whoever can write the cache folder can rewrite the index too. So the shard is read
with ``np.load(..., allow_pickle=False)``: an object array (which NumPy stores as a
pickle) is refused unread and its entries are computed again. The payload below creates a
file when it is unpickled, so its absence proves nothing was run.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from crossalign import embed
from crossalign._io import sha256_bytes
from crossalign.features import FeatureCache, tower_fingerprint

from _tiny import CountingTower


class Trap:
    """Unpickling this creates ``path``: the proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def object_array(marker: Path) -> np.ndarray:
    return np.array([Trap(marker)], dtype=object)


def npz_with_pickled_keys(marker: Path, rows: int) -> bytes:
    """A shard as the cache writes one, but its ``keys`` member an object array."""
    buf = io.BytesIO()
    np.savez(buf, keys=object_array(marker), feats=np.zeros((rows, 3), np.float32))
    return buf.getvalue()


def npy_of_objects(marker: Path, rows: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, object_array(marker), allow_pickle=True)
    return buf.getvalue()


def plain_pickle(marker: Path, rows: int) -> bytes:
    return pickle.dumps({"keys": object_array(marker), "feats": np.zeros((rows, 3), np.float32)})


PAYLOADS = [npz_with_pickled_keys, npy_of_objects, plain_pickle]


def payload_is_live(data: bytes, marker: Path) -> None:
    """The payload does run when loaded the unsafe way (so its absence below means something)."""
    if data[:2] == b"PK":
        with np.load(io.BytesIO(data), allow_pickle=True) as z:
            z["keys"]
    else:
        np.load(io.BytesIO(data), allow_pickle=True)
    assert marker.exists()
    marker.unlink()


def npz(keys: list[str], feats: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, keys=np.array(keys), feats=feats)
    return buf.getvalue()


def old_cache(folder: Path, shards: dict[str, bytes]) -> None:
    """A cache folder as earlier versions wrote it: the shards and an index of their checksums."""
    folder.mkdir(parents=True)
    for name, data in shards.items():
        (folder / name).write_bytes(data)
    index = {name: {"sha256": sha256_bytes(data), "rows": 0} for name, data in shards.items()}
    (folder / "index.json").write_text(json.dumps({"version": 1, "shards": index}))


def test_an_old_cache_moves_into_the_store(tmp_path):
    keys = [f"k{i}" for i in range(5)]
    feats = np.arange(15, dtype=np.float32).reshape(5, 3)
    feats[4] = np.nan  # earlier versions kept unreadable images as NaN rows: not features
    folder = tmp_path / "cache" / "tower"
    old_cache(folder, {"shard-a.npz": npz(keys[:3], feats[:3]), "shard-b.npz": npz(keys[3:], feats[3:])})
    cache = FeatureCache(tmp_path / "cache", "tower")
    assert cache.missing(keys) == ["k4"]
    np.testing.assert_array_equal(cache.get(keys[:4]), feats[:4])
    assert not (folder / "index.json").exists() and not list(folder.glob("shard-*.npz"))


@pytest.mark.parametrize("make", PAYLOADS, ids=[p.__name__ for p in PAYLOADS])
def test_pickled_shard_with_a_valid_checksum_is_refused_unread(tmp_path, make, caplog):
    keys = [f"k{i}" for i in range(5)]
    feats = np.arange(15, dtype=np.float32).reshape(5, 3)
    marker = tmp_path / "pickle-was-executed"
    data = make(marker, 2)
    payload_is_live(data, marker)
    folder = tmp_path / "cache" / "tower"
    old_cache(folder, {"shard-good.npz": npz(keys[:3], feats[:3]), "shard-bad.npz": data})

    fresh = FeatureCache(tmp_path / "cache", "tower")
    with caplog.at_level(logging.WARNING, logger="crossalign.features"):
        assert fresh.missing(keys) == keys[3:]  # the checksum matched; the pickle was refused
    assert not marker.exists()
    assert str(folder / "shard-bad.npz") in caplog.text and "computed again" in caplog.text
    np.testing.assert_array_equal(fresh.get(keys[:3]), feats[:3])


def test_extraction_recomputes_a_pickled_old_shard_with_a_valid_checksum(tmp_path, shapes_dir):
    paths = sorted(str(p) for p in (shapes_dir / "images").glob("*.png"))[:6]
    tower = CountingTower()
    first = np.asarray(embed.image_features(tower, paths, None, progress=False).feats)
    folder = tmp_path / "cache" / tower_fingerprint(tower, tower.data_config)
    marker = tmp_path / "pickle-was-executed"
    old_cache(folder, {"shard-x.npz": npz_with_pickled_keys(marker, 6)})
    again = embed.image_features(tower, paths, tmp_path / "cache", progress=False)
    assert not marker.exists()
    assert tower.calls == 12  # every image encoded again, none taken from the pickle
    np.testing.assert_allclose(np.asarray(again.feats), first, rtol=1e-3, atol=1e-6)  # stored as float16
