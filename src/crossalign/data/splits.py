"""Train/val/test assignment: given split files win, otherwise a seeded split by group.

All captions of an image (or of a group such as a movie id) always land in one split,
so no held-out caption describes an image the model trained on. Split names from the
usual sources are mapped to ours: Karpathy's ``restval`` goes to train, Flickr's ``dev``
to val.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Sequence

from crossalign.errors import ConfigError
from crossalign.data.table import SPLITS, PairTable

__all__ = ["assign_splits", "read_split_files", "write_split_files", "normalize_split",
           "split_from_name", "stable_bits", "stable_seed", "unit_hash", "sample_images", "SPLIT_ALIASES"]

# every name a data set uses for a split -> ours
SPLIT_ALIASES = {
    "train": "train", "training": "train", "restval": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


def normalize_split(name: object) -> str:
    """``"dev"`` -> ``"val"``, ``"restval"`` -> ``"train"``; unknown or empty -> ``""``."""
    return SPLIT_ALIASES.get(str(name or "").strip().lower(), "")


def split_from_name(name: str) -> str:
    """The split a file name announces (``captions_train2014.json``, ``Flickr_8k.devImages.txt``,
    ``val-000.tar``), or ``""``; words are split at case changes, digits and punctuation."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", Path(name).name)
    found = {normalize_split(w) for w in words} - {""}
    return found.pop() if len(found) == 1 else ""


def read_split_files(folder: str | Path) -> dict[str, str]:
    """Map image id -> split from ``folder/{train,val,test}.txt`` (one id per line).

    ``dev.txt``, ``validation.txt`` and ``restval.txt`` are read too (as val, val, train).
    """
    folder = Path(folder)
    mapping: dict[str, str] = {}
    for alias, name in SPLIT_ALIASES.items():
        path = folder / f"{alias}.txt"
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
        for line in text.splitlines():
            key = line.strip()
            if key:
                mapping[key] = name
    return mapping


def stable_bits(*parts: object) -> int:
    """The one seeded hash: 64 stable pseudo-random bits from any parts (``seed, key, ...``).

    Python's ``hash()`` is salted per process for strings, so it differs between data-loader
    workers and runs; this does not.
    """
    digest = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def stable_seed(*parts: object) -> int:
    """A stable 63-bit seed (for ``random.Random`` or ``torch.Generator``) from any parts."""
    return stable_bits(*parts) >> 1


def unit_hash(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for a key (independent of row order)."""
    return stable_bits(seed, key) / 2**64


def assign_splits(table: PairTable, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  group_column: str = "", only_unassigned: bool = True) -> PairTable:
    """Fill ``table.split`` deterministically by group (image id unless a label column is named).

    Groups are sorted by a seeded hash and cut at the cumulative ratios, so the split of
    an image does not change when other images are added or removed.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ConfigError(f"split ratios must be three non-negative numbers, got {ratios}")
    if group_column and group_column not in table.labels:
        raise ConfigError(f"group column {group_column!r} not in the data; available: {sorted(table.labels)}")
    total = float(sum(ratios))
    groups = table.labels[group_column] if group_column else table.image_id
    todo = sorted({str(g) for g, s in zip(groups, table.split) if not (only_unassigned and s)})
    order = sorted(todo, key=lambda g: unit_hash(g, seed))
    cut1 = round(len(order) * ratios[0] / total)
    cut2 = cut1 + round(len(order) * ratios[1] / total)
    chosen = {g: ("train" if i < cut1 else "val" if i < cut2 else "test") for i, g in enumerate(order)}
    for i, g in enumerate(groups):
        if not (only_unassigned and table.split[i]):
            table.split[i] = chosen[str(g)]
    return table


def sample_images(table: PairTable, n: int, seed: int = 0) -> PairTable:
    """All rows of ``n`` images chosen by a seeded hash of their id (independent of row order)."""
    ids, _ = table.images()
    if n >= len(ids):
        return table
    chosen = set(sorted(ids, key=lambda i: unit_hash(i, seed))[:n])
    return table.take(k for k, i in enumerate(table.image_id) if i in chosen)


def write_split_files(table: PairTable, folder: str | Path) -> None:
    """Write ``{train,val,test}.txt`` (image ids) so a later stage uses exactly these items."""
    from crossalign._io import atomic_write_text

    folder = Path(folder)
    for name in SPLITS:
        ids = list(dict.fromkeys(i for i, s in zip(table.image_id, table.split) if s == name))
        atomic_write_text(folder / f"{name}.txt", "".join(f"{i}\n" for i in ids))
