"""The feature cache under faults: damaged or replaced segments, a damaged index, pickles,
and two trainings filling one cold cache at the same time.

A chunk is used only when its bytes match the SHA-256 its index holds; anything else
costs its entries, which are computed again, with a warning naming the file and rows.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from crossalign.embed import towers as embed
from crossalign.features import FeatureCache, tower_fingerprint
from crossalign.runs import embed_split, open_run, select_split

from _kill_runner import TINY, cli, command, env, recorded, rows, sets
from _ties import assert_recalls_within, assert_same_retrieval, recall_slack
from _tiny import CountingTower



class Trap:
    """Unpickling this creates ``path``: the proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def two_chunk_cache(root: Path) -> tuple[FeatureCache, list[str], np.ndarray, Path]:
    """A cache holding 6 entries in two chunks (4 rows, then 2) of one segment file;
    returns it, the keys, the vectors, the segment file."""
    cache = FeatureCache(root, "tower")
    keys = [f"k{i}" for i in range(6)]
    feats = np.arange(18, dtype=np.float32).reshape(6, 3)
    cache.put(keys[:4], feats[:4])
    cache.put(keys[4:], feats[4:])
    (seg,) = cache.segments()
    assert seg["rows"] == 6 and seg["chunks"] == 2
    return cache, keys, feats, root / "tower" / seg["name"]


ROW = 3 * 2  # bytes of one float16 row of width 3


def flip(path: Path) -> None:  # one bit of the second chunk (rows 4 and 5)
    data = bytearray(path.read_bytes())
    data[4 * ROW + 3] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:  # the second chunk cut short
    path.write_bytes(path.read_bytes()[:-4])


@pytest.mark.parametrize("damage", [flip, truncate])
def test_damaged_chunk_is_detected_and_recomputed(tmp_path, damage, caplog):
    _, keys, feats, seg = two_chunk_cache(tmp_path)
    damage(seg)
    cache = FeatureCache(tmp_path, "tower")
    with caplog.at_level(logging.WARNING, logger="crossalign.features"):
        assert cache.missing(keys) == keys[4:]  # only the damaged chunk's entries
    assert f"{seg}: rows 4-5" in caplog.text and "computed again" in caplog.text
    np.testing.assert_array_equal(cache.get(keys[:4]), feats[:4])
    cache.put(keys[4:], feats[4:])  # recomputed into a chunk of a new segment
    fresh = FeatureCache(tmp_path, "tower")
    np.testing.assert_array_equal(fresh.get(keys), feats)
    assert sum(s["rows"] for s in fresh.segments()) == 6  # the damaged chunk no longer counts


def test_a_segment_replaced_by_a_pickle_is_never_unpickled(tmp_path, caplog):
    _, keys, _, seg = two_chunk_cache(tmp_path)
    marker = tmp_path / "pickle-was-executed"
    seg.write_bytes(pickle.dumps(Trap(marker)) + b"\0" * 64)  # long enough for both chunks
    cache = FeatureCache(tmp_path, "tower")
    with caplog.at_level(logging.WARNING, logger="crossalign.features"):
        assert cache.missing(keys) == keys  # both chunks fail their checksums
    assert not marker.exists() and "do not match their checksum" in caplog.text


def test_damaged_index_costs_the_cache_not_the_run(tmp_path, caplog):
    cache, keys, feats, _ = two_chunk_cache(tmp_path)
    cache.close()
    (tmp_path / "tower" / "store.sqlite").write_bytes(b"not a database " * 300)
    cache = FeatureCache(tmp_path, "tower")
    with caplog.at_level(logging.WARNING, logger="crossalign.features"):
        assert cache.missing(keys) == keys
    assert "store.sqlite: unreadable cache index" in caplog.text
    assert (tmp_path / "tower" / "store.sqlite.damaged").exists()  # kept for a look, not read
    cache.put(keys, feats)
    np.testing.assert_array_equal(FeatureCache(tmp_path, "tower").get(keys), feats)


def test_image_features_after_segment_damage_equal_a_clean_run(tmp_path, shapes_dir):
    paths = sorted(str(p) for p in (shapes_dir / "images").glob("*.png"))[:8]
    tower = CountingTower()
    first = embed.image_features(tower, paths, tmp_path / "c", progress=False)
    first = np.asarray(first.feats)
    folder = tmp_path / "c" / tower_fingerprint(tower, tower.data_config)
    (seg,) = folder.glob("seg-*.bin")
    marker = tmp_path / "pickle-was-executed"
    seg.write_bytes(pickle.dumps(Trap(marker)) + b"\0" * seg.stat().st_size)
    again = embed.image_features(tower, paths, tmp_path / "c", progress=False)
    assert tower.calls == 16 and not marker.exists()  # recomputed, the pickle never run
    np.testing.assert_array_equal(np.asarray(again.feats), first)


# Features of a shared cache equal those of a private one up to rounding, not bit for bit: the
# process that comes second computes only what is still missing, so its items sit in other
# batches, and a tower's output for an item changes in the last bits when the batch around it
# does (the kernel a matrix product runs may depend on its shape: on some CPUs a product of a
# few rows rounds unlike one of many, and the last steps of a packed LSTM run only a batch's
# longest captions). The trainings on them then differ in the last bits as well.
FEATURE_TOL = dict(rtol=1e-5, atol=1e-6)
# how far a validation score (cosine) may move with them; measured differences are at most
# about 1e-7, and none at all where the kernels do not depend on the batch
SCORE_TOL = 1e-5


def entries(root: Path) -> dict[str, np.ndarray]:
    """key -> vector over every tower folder of a cache."""
    out: dict[str, np.ndarray] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for k, v in FeatureCache(root, folder.name).entries():
            out[f"{folder.name}/{k}"] = v
    return out


def _last_model_on_val(run: Path, data: Path):
    """The validation split embedded by a run's last weights, the way evaluation opens a run."""
    rd = open_run(run, data, which="last", quiet=True)
    emb = embed_split(rd, select_split(rd.table, "val"), progress=False)
    return (emb.image_emb, emb.text_emb), emb.text_to_image


def _same_training(shared: Path, solo: Path, validations: list, data: Path) -> None:
    """The same training up to float rounding (see FEATURE_TOL): losses, learning rates and
    temperatures agree closely; recalls within what the queries near-tied in the solo run's
    ``validations`` can move; the last weights score the validation pairs alike."""
    shared_rows, solo_rows = rows(shared / "metrics.csv"), rows(solo / "metrics.csv")
    assert [r.keys() for r in shared_rows] == [r.keys() for r in solo_rows]
    assert len(solo_rows) == len(validations) == 2
    for got, want, (img, txt, t2i) in zip(shared_rows, solo_rows, validations):
        g, w = {k: float(v) for k, v in got.items()}, {k: float(v) for k, v in want.items()}
        exact = ("epoch", "step", "train_loss", "lr", "temperature", "val_n_images", "val_n_captions")
        assert {k: g[k] for k in exact} == pytest.approx({k: w[k] for k in exact}, rel=1e-5), shared
        assert_recalls_within(g, w, recall_slack((img, txt), t2i, SCORE_TOL, prefix="val_"), shared)
    (got, t2i), (want, t2i_solo) = (_last_model_on_val(r, data) for r in (shared, solo))
    np.testing.assert_array_equal(t2i, t2i_solo)
    assert_same_retrieval(got, want, t2i, SCORE_TOL, min_clear=0.8)


def test_two_trainings_share_one_cold_cache(tmp_path, shapes_dir):
    """Both reach their first cache write before either makes it; both finish as if alone."""
    shared = tmp_path / "shared"
    configs = {"a": ["train.lr=0.0002"], "b": ["train.lr=0.001", "model.head_dropout=0.0"]}
    # pretrained image features: a random frozen small_cnn's outputs are about 1e-5 long, so
    # behind a head (its bias) every image embeds alike and each caption query is a tie
    base = TINY + ["train.epochs=2", "model.image.tower=efficientnet_lite0", "model.image.image_size=64"]
    procs = {}
    for name, extra in configs.items():
        other = "b" if name == "a" else "a"
        meet = {"target": "crossalign.features:FeatureCache.put", "call": 1, "action": "rendezvous",
                "mine": str(tmp_path / f"ready-{name}"), "other": str(tmp_path / f"ready-{other}")}
        cmd = command({"shard": 16, "faults": [meet]}, "train", "--data", str(shapes_dir),
                      "--out", str(tmp_path / name), *sets(base + extra + [f"cache.dir={shared}"]))
        procs[name] = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    for name, extra in configs.items():  # each alone, with a cache of its own
        solo = tmp_path / f"{name}-alone"
        record = {"target": "crossalign.train.engine:retrieval_metrics", "call": 1, "every": True,
                  "action": "record", "out": str(tmp_path / f"{name}-val")}
        alone = cli({"shard": 16, "faults": [record]}, "train", "--data", str(shapes_dir),
                    "--out", str(solo),
                    *sets(base + extra + [f"cache.dir={tmp_path / f'cache-{name}'}"]))
        assert alone.returncode == 0, alone.stderr
        _same_training(tmp_path / name, solo, recorded(tmp_path / f"{name}-val"), shapes_dir)
    mine, alone = entries(shared), entries(tmp_path / "cache-a")
    assert mine.keys() == alone.keys()
    for key, vec in alone.items():
        np.testing.assert_allclose(mine[key], vec, **FEATURE_TOL)
    # both processes wrote segments, and the index kept every chunk of both
    folder = next(p for p in shared.iterdir() if p.is_dir() and len(list(p.glob("seg-*.bin"))) > 1)
    listed = FeatureCache(shared, folder.name).segments()
    assert {s["name"] for s in listed} == {p.name for p in folder.glob("seg-*.bin")}
    assert all(s["rows"] > 0 for s in listed)


def test_files_a_killed_writer_left_are_cleaned_later(tmp_path):
    import os
    import time

    from crossalign.features import STALE_SECONDS

    _, keys, feats, _ = two_chunk_cache(tmp_path)
    folder = tmp_path / "tower"
    old, recent = folder / "seg-0ld0ld0ld0ld0ld0.bin", folder / "seg-recent.bin"
    tmp = folder / ".seg-x.bin.abc.tmp"
    for path in (old, recent, tmp):
        path.write_bytes(b"left by a killed process")
    long_ago = time.time() - STALE_SECONDS - 10
    for path in (old, tmp):
        os.utime(path, (long_ago, long_ago))
    FeatureCache(tmp_path, "tower").put(["k6"], np.ones((1, 3), np.float32))  # a new segment
    assert not old.exists() and not tmp.exists()
    assert recent.exists()  # could be a live writer's, about to be listed
    np.testing.assert_array_equal(FeatureCache(tmp_path, "tower").get(keys), feats)
