"""FeatureCache: outputs of frozen towers, computed once and kept on disk.

An entry is keyed by the tower (its name, a hash of its weights and its preprocessing)
and by the content of the input (the bytes of an image file, the text of a caption),
so a changed image is recomputed and a renamed one is not.

On disk, one folder per tower fingerprint holds shard files (``shard-<random>.npz``,
each written once, atomically, under a name no other process uses) and ``index.json``,
which lists the shards with the SHA-256 of each. A shard counts only once it is in the
index, and the index is rewritten (atomically, under an ``fcntl`` lock on ``.lock``) only
after its shard is complete. So an interrupted extraction keeps every finished shard,
processes sharing a cache never lose each other's shards, and a shard whose bytes no
longer match its checksum (flipped bits, truncation, a file put in its place) is never
read: its entries count as missing and are computed again. Shards are read with
``allow_pickle=False``; nothing in the cache is unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import time
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

__all__ = ["FeatureCache", "weights_hash", "tower_fingerprint", "text_key"]

log = logging.getLogger("crossalign.features")

def weights_hash(module: torch.nn.Module, salt: str = "") -> str:
    """The one hash of a module's weights: every tensor of its state dict, by name and in order,
    after ``salt`` (what else the hash must depend on)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(salt.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tower_fingerprint(tower: torch.nn.Module, preprocess: dict) -> str:
    """Hash of a tower's name, weights and preprocessing: the key of its cached outputs."""
    prep = json.dumps(preprocess, sort_keys=True, default=str)
    return weights_hash(tower, str(getattr(tower, "name", type(tower).__name__)) + prep)


def text_key(text: str) -> str:
    """Content hash of a caption."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


INDEX = "index.json"
STALE_SECONDS = 3600  # an unlisted shard this old was left by a killed process, not a slow one


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the cache folder's lock (``fcntl.flock`` on ``.lock``), across processes."""
    from crossalign._io import DISK_ERRNOS, disk_error

    try:
        f = open(folder / ".lock", "a+b")
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(folder / ".lock", e) from e
        raise
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_shard(path: Path, sha256: str) -> tuple[np.ndarray, np.ndarray] | str:
    """``(keys, feats)`` of a shard whose bytes match ``sha256``, else why it cannot be used."""
    from crossalign._io import sha256_bytes

    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if sha256_bytes(data) != sha256:
        return "does not match its checksum (damaged or replaced)"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # never unpickles
            return z["keys"], z["feats"]
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        return f"is not a feature shard ({e})"


class FeatureCache:
    """Key -> feature vector store for one tower fingerprint.

    Args:
        root: cache folder shared by all towers.
        fingerprint: :func:`tower_fingerprint` of the tower whose outputs are stored.
    """

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self._index: dict[str, tuple[int, int]] | None = None
        self._shards: list[np.ndarray] = []
        self._bad: set[str] = set()  # shard names that failed their checksum

    def _read_index(self) -> dict[str, dict]:
        """``{shard name: {"sha256": ..., "rows": n}}`` as committed on disk."""
        path = self.dir / INDEX
        try:
            return json.loads(path.read_text())["shards"]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable cache index (%s); its features will be computed again",
                        path, e)
            return {}

    def _load(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index, self._shards = {}, []
            for name, entry in sorted(self._read_index().items()):
                got = _read_shard(self.dir / name, str(entry.get("sha256")))
                if isinstance(got, str):
                    log.warning("%s: %s; its %s features will be computed again",
                                self.dir / name, got, entry.get("rows", "?"))
                    self._bad.add(name)
                    continue
                keys, feats = got
                s = len(self._shards)
                self._shards.append(feats)
                for row, k in enumerate(keys.tolist()):
                    self._index[k] = (s, row)
        return self._index

    def refresh(self) -> None:
        """Forget what was read, so shards written by other processes are seen."""
        self._index, self._shards = None, []

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: str) -> bool:
        return key in self._load()

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys not yet stored (in input order, without repeats)."""
        index = self._load()
        return [k for k in dict.fromkeys(keys) if k not in index]

    def get(self, keys: list[str]) -> np.ndarray:
        """``[len(keys), width]`` features; every key must be present."""
        index = self._load()
        return np.stack([self._shards[s][r] for s, r in (index[k] for k in keys)])

    def put(self, keys: list[str], feats: np.ndarray) -> None:
        """Store a batch of features as one new shard, then list it in the index.

        Raises:
            WriteError: the cache folder cannot be written (full or read-only disk).
        """
        from crossalign._io import atomic_write_bytes, sha256_bytes

        if not keys:
            return
        index = self._load()
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys), feats=feats)
        data = buf.getvalue()
        name = f"shard-{uuid.uuid4().hex[:16]}.npz"  # unique: processes never write one file twice
        atomic_write_bytes(self.dir / name, data)
        self._commit(name, {"sha256": sha256_bytes(data), "rows": len(keys)})
        s = len(self._shards)
        self._shards.append(feats)
        for row, k in enumerate(keys):
            index[k] = (s, row)

    def _commit(self, name: str, entry: dict) -> None:
        """Add a written shard to ``index.json`` (read, change, replace under the lock).

        Shards that failed their checksum leave the index here, and their files go; so do
        files a killed process left unlisted (older than :data:`STALE_SECONDS`).
        """
        from crossalign._io import atomic_write_json

        with _locked(self.dir):
            shards = self._read_index()
            for bad in self._bad:
                shards.pop(bad, None)
                (self.dir / bad).unlink(missing_ok=True)
            self._bad.clear()
            shards[name] = entry
            atomic_write_json(self.dir / INDEX, {"version": 1, "shards": shards})
            self._drop_stale(set(shards))

    def _drop_stale(self, listed: set[str]) -> None:
        """Remove unlisted shards and temporary files no live writer can still be finishing."""
        now = time.time()
        for path in [*self.dir.glob("shard-*.npz"), *self.dir.glob(".shard-*.tmp")]:
            try:
                if path.name not in listed and now - path.stat().st_mtime > STALE_SECONDS:
                    path.unlink()
            except FileNotFoundError:  # another process cleaned it first
                pass
