"""Readers: every layout on disk becomes one :class:`PairTable`.

The canonical layout is a folder with ``images/``, ``captions.txt`` (CSV with header
``image,caption``, one row per caption) and optional ``splits/{train,val,test}.txt``.
The other layouts users already have are read as they are (``crossalign.data.readers``):

========== =================================================================
folder     ``images/`` + ``captions.txt`` (+ ``splits/``); Kaggle Flickr8k too
flickr8k   ``Flickr8k.token.txt`` + ``Flickr_8k.{train,dev,test}Images.txt``
karpathy   ``dataset_flickr8k.json`` / ``dataset_coco.json`` (split + sentences)
coco       ``captions_train2014.json`` (images + annotations)
csv        open_clip CSV/TSV (``filepath``, ``title``)
jsonl      one object per line: ``image`` + ``caption`` or ``captions``
sidecar    images with a ``.txt`` of the same stem (one caption per line)
movielens  ``posters/<id>.jpg`` + a CSV with id, title, plot (+ ``train.txt``)
webdataset tar shards (``key.jpg`` + ``key.txt``), streamed
========== =================================================================

:func:`detect_format` picks one from the files present; ``format=`` (``data.format``)
overrides it. A data path may be a folder or, for the file-based layouts, the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from crossalign.config import DataConfig
from crossalign.data.readers._base import read_text
from crossalign.errors import DataError
from crossalign.data.readers.benchmarks import (find_token_file, json_files, read_coco, read_flickr_token,
                                                read_karpathy)
from crossalign.data.readers.folder import looks_like_sidecar, read_canonical, read_sidecar
from crossalign.data.readers.shards import SHARD_EXTS, read_webdataset
from crossalign.data.readers.tables import (POSTER_DIRS, find_movie_table, read_csv, read_jsonl,
                                            read_movielens, table_files)
from crossalign.data.splits import read_split_files
from crossalign.data.table import PairTable

__all__ = ["read_pairs", "read_canonical", "READERS", "FORMAT_ALIASES", "detect_format"]

READERS: dict[str, Callable[[Path, DataConfig], PairTable]] = {
    "folder": read_canonical,
    "flickr8k": read_flickr_token,
    "karpathy": read_karpathy,
    "coco": read_coco,
    "csv": read_csv,
    "jsonl": read_jsonl,
    "sidecar": read_sidecar,
    "movielens": read_movielens,
    "webdataset": read_webdataset,
}

FORMAT_ALIASES = {"canonical": "folder", "flickr": "flickr8k", "flickr30k": "flickr8k", "tsv": "csv",
                  "open_clip": "csv", "wds": "webdataset", "tar": "webdataset", "posters": "movielens"}


def _detect_file(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(SHARD_EXTS):
        return "webdataset"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith(".json"):
        with open(path, "rb") as f:
            head = f.read(1 << 16).decode("utf-8", errors="replace")
        if name.startswith("dataset_") or '"sentences"' in head:
            return "karpathy"
        if name.startswith("captions_") or '"annotations"' in head:
            return "coco"
    if name.endswith((".token.txt", ".token")) or "#0\t" in read_text(path)[:4096]:
        return "flickr8k"
    raise DataError(f"{path}: cannot tell the data layout from this file; pass `format` "
                    f"(known: {sorted(READERS)})")


def _has_posters(root: Path, cfg: DataConfig) -> bool:
    return any((root / d).is_dir() for d in ([cfg.image_dir] if cfg.image_dir else POSTER_DIRS))


def _csv_has_image_column(root: Path, cfg: DataConfig) -> bool:
    want = (cfg.image_column or "filepath").lower()
    for path in table_files(root, (".csv", ".tsv")):
        first = read_text(path).split("\n", 1)[0].lower()
        if want in [c.strip().strip('"') for c in first.replace("\t", ",").split(",")]:
            return True
    return False


def detect_format(root: Path, cfg: DataConfig | None = None) -> str:
    """Guess the layout of ``root`` (a folder or a file) from the files it holds."""
    root, cfg = Path(root), cfg or DataConfig()
    if root.is_file():
        return _detect_file(root)
    checks = [
        ("folder", lambda: (root / "captions.txt").is_file()),
        ("flickr8k", lambda: find_token_file(root) is not None),
        ("karpathy", lambda: bool(json_files(root, "sentences", "dataset_*.json"))),
        ("coco", lambda: bool(json_files(root, "annotations", "captions_*.json"))),
        ("jsonl", lambda: bool(table_files(root, (".jsonl",)))),
        ("webdataset", lambda: any(p.name.lower().endswith(SHARD_EXTS)
                                   for p in [*root.glob("*"), *root.glob("*/*")])),
        ("csv", lambda: _csv_has_image_column(root, cfg)),
        ("movielens", lambda: _has_posters(root, cfg) and find_movie_table(root, cfg) is not None),
        ("sidecar", lambda: looks_like_sidecar(root)),
    ]
    for name, check in checks:
        if check():
            return name
    raise DataError(
        f"{root}: no known data layout found (expected captions.txt and images/, or another layout); "
        f"known formats: {sorted(READERS)}; pass `format` to choose one"
    )


def _apply_split_folder(table: PairTable, root: Path) -> None:
    """``splits/`` beside any layout wins when the layout itself gave no split."""
    if table.meta.get("splits_given") or not root.is_dir():
        return
    mapping = read_split_files(root / "splits")
    if mapping:
        table.split[:] = [mapping.get(i, "") for i in table.image_id]
        table.meta["splits_given"] = any(table.split)


def read_pairs(root: str | Path, format: str = "auto", options: DataConfig | None = None) -> PairTable:
    """Read a data set in any known layout into a :class:`PairTable`.

    Args:
        root: data folder, or a data file for the file-based layouts.
        format: a name of :data:`READERS` (or an alias), or ``"auto"`` for ``options.format``
            (itself ``"auto"`` by default: detect the layout).
        options: reader options (column names, separator, image folder); defaults otherwise.
    """
    root, cfg = Path(root), options or DataConfig()
    if "{" in str(root) and not root.exists():  # a shard pattern: train-{000..099}.tar
        from crossalign.data.readers.shards import read_webdataset

        table = read_webdataset(root, cfg)
        table.meta["format"] = "webdataset"
        return table
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if root.is_file() and root.name == "captions.txt":
        root = root.parent
    fmt = (format if format and format != "auto" else cfg.format or "auto").strip().lower()
    fmt = detect_format(root, cfg) if fmt == "auto" else FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in READERS:
        raise DataError(f"unknown format {format!r}; known: {sorted(READERS)}")
    table = READERS[fmt](root, cfg)
    _apply_split_folder(table, root)
    table.meta["format"] = fmt
    return table
