"""FeatureCache: outputs of frozen towers, computed once and kept on disk.

An entry is keyed by the tower (its name, a hash of its weights and its preprocessing)
and by the content of the input (the bytes of an image file, the text of a caption),
so a changed image is recomputed and a renamed one is not. Entries live in append-only
shard files written atomically: an interrupted extraction keeps every finished shard.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

__all__ = ["FeatureCache", "tower_fingerprint", "file_key", "text_key"]


def tower_fingerprint(tower: torch.nn.Module, preprocess: dict) -> str:
    """Hash of a tower's name, weights and preprocessing.

    Hashing the weights of a large tower takes a while, so the result is remembered on
    the tower while none of its parameters can train (a frozen tower's weights stay put).
    """
    prep = json.dumps(preprocess, sort_keys=True, default=str)
    frozen = not any(p.requires_grad for p in tower.parameters())
    memo = tower.__dict__.setdefault("_fingerprints", {})
    if frozen and prep in memo:
        return memo[prep]
    h = hashlib.blake2b(digest_size=16)
    h.update(str(getattr(tower, "name", type(tower).__name__)).encode())
    h.update(prep.encode())
    for name, t in tower.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if frozen:
        memo[prep] = h.hexdigest()
    return h.hexdigest()


def file_key(path: str | Path) -> str:
    """Content hash of a file (not its name or time stamp)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


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

    def _load(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index, self._shards = {}, []
            for path in sorted(self.dir.glob("shard-*.npz")):
                try:
                    with np.load(path, allow_pickle=False) as z:
                        keys, feats = z["keys"], z["feats"]
                except Exception:  # a damaged shard costs its entries, not the cache
                    continue
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
        """Store a batch of features as one new shard (atomic)."""
        from crossalign._io import atomic_path

        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        index = self._load()
        n = len(list(self.dir.glob("shard-*.npz")))
        path = self.dir / f"shard-{n:06d}-{hashlib.blake2b(keys[0].encode(), digest_size=4).hexdigest()}.npz"
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keys=np.array(keys), feats=feats)
        s = len(self._shards)
        self._shards.append(feats)
        for row, k in enumerate(keys):
            index[k] = (s, row)
