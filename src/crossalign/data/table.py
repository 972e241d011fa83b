"""The one record type every stage consumes: a table of (image, caption, split) rows.

Every reader produces a :class:`PairTable`; nothing downstream knows which file
format the pairs came from. An image has one or more captions; each row keeps
``origin`` ("file:row") so a later stage can name the exact input line it rejects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

__all__ = ["PairTable", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass
class PairTable:
    """Column-oriented pairs: one row per caption.

    Attributes:
        image_id: stable identifier of the image (file name or record key).
        image_path: absolute path of the image file.
        caption: the text.
        split: "train", "val", "test" or "" (unassigned).
        origin: "file:row" where the row was read, for error messages.
        labels: extra columns kept from the source (genre, year, ...).
        meta: facts about the whole table (format, root, whether split files were given).
    """

    image_id: list[str] = field(default_factory=list)
    image_path: list[str] = field(default_factory=list)
    caption: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)
    labels: dict[str, list] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.image_id)
        cols = [self.image_path, self.caption, self.split, self.origin, *self.labels.values()]
        if any(len(c) != n for c in cols):
            raise ValueError("PairTable: all columns must have the same length")

    def __len__(self) -> int:
        return len(self.image_id)

    def append(self, image_id: str, image_path: str, caption: str, split: str = "",
               origin: str = "", **labels: object) -> None:
        """Add one row (labels not seen before are back-filled with None)."""
        n = len(self)
        for key in labels:
            if key not in self.labels:
                self.labels[key] = [None] * n
        self.image_id.append(image_id)
        self.image_path.append(image_path)
        self.caption.append(caption)
        self.split.append(split)
        self.origin.append(origin)
        for key, col in self.labels.items():
            col.append(labels.get(key))

    def take(self, rows: Iterable[int] | np.ndarray) -> "PairTable":
        """A new table holding the given row indices, in that order."""
        idx = [int(i) for i in rows]
        return PairTable(
            image_id=[self.image_id[i] for i in idx],
            image_path=[self.image_path[i] for i in idx],
            caption=[self.caption[i] for i in idx],
            split=[self.split[i] for i in idx],
            origin=[self.origin[i] for i in idx],
            labels={k: [v[i] for i in idx] for k, v in self.labels.items()},
            meta=dict(self.meta),
        )

    def select(self, splits: str | Sequence[str]) -> "PairTable":
        """Rows of one split (``"test"``), several, or ``"all"``."""
        if splits == "all":
            return self.take(range(len(self)))
        wanted = {splits} if isinstance(splits, str) else set(splits)
        return self.take(i for i, s in enumerate(self.split) if s in wanted)

    def images(self) -> tuple[list[str], list[str]]:
        """Unique image ids in first-seen order, with their paths."""
        seen: dict[str, str] = {}
        for iid, path in zip(self.image_id, self.image_path):
            seen.setdefault(iid, path)
        return list(seen), list(seen.values())

    def caption_image_index(self) -> tuple[list[str], np.ndarray]:
        """Unique image ids and, per caption row, the index of its image in that list."""
        ids, _ = self.images()
        pos = {iid: i for i, iid in enumerate(ids)}
        return ids, np.array([pos[i] for i in self.image_id], dtype=np.int64)

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Images and captions per split."""
        out: dict[str, dict[str, int]] = {}
        for name in sorted(set(self.split)):
            sub = self.select(name)
            out[name or "unassigned"] = {"images": len(set(sub.image_id)), "captions": len(sub)}
        return out
