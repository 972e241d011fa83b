"""Readers: every layout on disk becomes one :class:`PairTable`.

The canonical layout is a folder with ``images/``, ``captions.txt`` (CSV with header
``image,caption``, one row per caption) and optional ``splits/{train,val,test}.txt``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from crossalign.data.splits import read_split_files
from crossalign.data.table import PairTable

__all__ = ["DataError", "read_pairs", "read_canonical", "READERS", "detect_format"]


class DataError(ValueError):
    """Input data that cannot be read; the message names the file (and row)."""


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: text is not valid UTF-8 ({e.reason})") from None


def read_canonical(root: str | Path) -> PairTable:
    """Read ``images/`` + ``captions.txt`` (+ ``splits/``)."""
    root = Path(root)
    cap_path = root / "captions.txt"
    img_dir = root / "images"
    if not cap_path.is_file():
        raise DataError(f"{cap_path}: captions file not found")
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: images folder not found")
    text = _decode(cap_path.read_bytes(), cap_path)
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if header is None:
        raise DataError(f"{cap_path}: file is empty")
    cols = [h.strip().lower() for h in header]
    if "image" not in cols or "caption" not in cols:
        raise DataError(f"{cap_path}: line 1: header must contain 'image' and 'caption', got {header}")
    ii, ci = cols.index("image"), cols.index("caption")
    extra = [(k, c) for k, c in enumerate(cols) if k not in (ii, ci)]
    splits = read_split_files(root / "splits")
    table = PairTable()
    for row in reader:
        line = reader.line_num
        if not row or all(not x.strip() for x in row):
            continue
        if len(row) < len(cols):
            row = row + [""] * (len(cols) - len(row))
        name = row[ii].strip()
        labels = {c: row[k] for k, c in extra}
        table.append(name, str(img_dir / name), row[ci], splits.get(name, ""),
                     f"{cap_path}:{line}", **labels)
    table.meta.update(format="folder", root=str(root), splits_given=bool(splits))
    return table


READERS: dict[str, Callable[[Path], PairTable]] = {"folder": read_canonical}


def detect_format(root: Path) -> str:
    """Guess the layout of ``root`` from the files it holds."""
    if (root / "captions.txt").is_file():
        return "folder"
    raise DataError(
        f"{root}: no known data layout found (expected captions.txt and images/); "
        f"known formats: {sorted(READERS)}"
    )


def read_pairs(root: str | Path, format: str = "auto") -> PairTable:
    """Read a data set in any known layout into a :class:`PairTable`."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in READERS:
        raise DataError(f"unknown format {fmt!r}; known: {sorted(READERS)}")
    return READERS[fmt](root)
