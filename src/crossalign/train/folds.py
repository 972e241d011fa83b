"""Where a recipe search scores its trials: the validation split, or K folds of train + val.

Only the user's training data is used: the rows of the train and val splits (the *pool*); the
test split never enters. A validation split of at least ``min_val_images`` images is used as
it is (*holdout*: train on train, score on val, exactly as ``crossalign train`` does). A smaller
one gives noisy scores, so the pool is cut into K folds instead and each trial is scored on
every fold, trained on the others (*K-fold cross-validation*).

Folds are made of whole units: all captions of an image, and all images sharing a value of
``data.group_column`` (a movie id, an album), land in one fold, so no scored caption describes
an image, or a sibling of an image, that the trial trained on. Units are ordered by a seeded
hash and each goes to the fold with the fewest images so far, so folds are balanced and do not
depend on row order.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossalign.data.splits import stable_bits
from crossalign.data.table import PairTable
from crossalign.errors import ConfigError, DataError

__all__ = ["Fold", "FoldPlan", "fold_of_images", "kfold", "plan_folds"]


@dataclass
class Fold:
    """One way of scoring: the rows that train and the rows that are scored."""

    train: PairTable
    val: PairTable


@dataclass
class FoldPlan:
    """How trials are scored, and the words that say so (printed and stored with the run)."""

    kind: str  # "holdout" | "kfold"
    folds: list[Fold]
    pool_images: int  # images of train + val
    val_images: int  # images of the val split
    min_val_images: int
    group_column: str = ""

    def describe(self) -> str:
        if self.kind == "holdout":
            return (f"holdout: trained on the train split, scored on the val split "
                    f"({self.val_images} images, at least {self.min_val_images})")
        by = f"image and {self.group_column}" if self.group_column else "image"
        return (f"{len(self.folds)}-fold cross-validation over train + val ({self.pool_images} images, "
                f"grouped by {by}), since the val split has {self.val_images} images, "
                f"fewer than {self.min_val_images}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "folds": len(self.folds), "pool_images": self.pool_images,
                "val_images": self.val_images, "min_val_images": self.min_val_images,
                "group_column": self.group_column, "description": self.describe(),
                "fold_images": [len(set(f.val.image_id)) for f in self.folds]}


def _units(table: PairTable, group_column: str) -> dict[str, str]:
    """Image id -> the name of its unit: images joined when they share a group value."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    groups = table.labels[group_column] if group_column else [None] * len(table)
    for image, group in zip(table.image_id, groups):
        a = find("i:" + image)
        if group is not None and str(group) != "":
            b = find("g:" + str(group))
            if a != b:
                parent[max(a, b)] = min(a, b)  # the smaller name leads: independent of order
    return {image: find("i:" + image) for image in table.image_id}


def fold_of_images(table: PairTable, k: int, seed: int = 0, group_column: str = "") -> dict[str, int]:
    """Image id -> fold in ``0..k-1``; an image's captions and a group's images share a fold."""
    if group_column and group_column not in table.labels:
        raise ConfigError(f"data.group_column {group_column!r} is not a column of the data; "
                          f"available: {sorted(table.labels)}")
    unit_of = _units(table, group_column)
    members: dict[str, list[str]] = {}
    for image in dict.fromkeys(table.image_id):
        members.setdefault(unit_of[image], []).append(image)
    if len(members) < k:
        raise DataError(f"{k}-fold cross-validation needs at least {k} images (or groups) in train + val, "
                        f"found {len(members)}")
    sizes = [0] * k
    fold: dict[str, int] = {}
    for unit in sorted(members, key=lambda u: (stable_bits(seed, "fold", u), u)):
        f = min(range(k), key=lambda j: (sizes[j], j))
        sizes[f] += len(members[unit])
        for image in members[unit]:
            fold[image] = f
    return fold


def kfold(table: PairTable, k: int, seed: int = 0, group_column: str = "") -> list[Fold]:
    """K folds of ``table``: fold ``j`` scores its own rows and trains on all the others."""
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {k}")
    fold = fold_of_images(table, k, seed, group_column)
    rows = [fold[i] for i in table.image_id]
    return [Fold(table.take(r for r, f in enumerate(rows) if f != j),
                 table.take(r for r, f in enumerate(rows) if f == j)) for j in range(k)]


def plan_folds(pool: PairTable, k: int = 5, min_val_images: int = 1000, seed: int = 0,
               group_column: str = "") -> FoldPlan:
    """Holdout on the val split when it holds ``min_val_images`` images or more, else K folds.

    Args:
        pool: the train and val rows (never test).
        k: folds of the cross-validation.
        min_val_images: the smallest val split trusted on its own.
        seed: seed of the fold assignment.
        group_column: a label column whose groups stay within one fold.
    """
    if "test" in set(pool.split):
        raise ValueError("plan_folds: the pool must hold train and val rows only")
    val_images = len(set(pool.select("val").image_id))
    n_images = len(set(pool.image_id))
    if val_images >= min_val_images:
        folds = [Fold(pool.select("train"), pool.select("val"))]
        return FoldPlan("holdout", folds, n_images, val_images, min_val_images, group_column)
    return FoldPlan("kfold", kfold(pool, k, seed, group_column), n_images, val_images, min_val_images,
                    group_column)
