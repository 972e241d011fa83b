"""What every reader shares: the error type, tolerant text decoding, a row builder.

Readers never stop at a bad row. Text is decoded as UTF-8 with undecodable bytes kept
as lone surrogates, so the one row that holds them can be named and skipped while the
rest of the file loads. Rows a reader cannot use at all go into ``table.meta["skipped"]``
(dicts shaped like :class:`crossalign.data.validate.Problem`); validation reports them
with the rest.
"""

from __future__ import annotations

import csv
import io
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from crossalign.data.splits import normalize_split
from crossalign.errors import DataError
from crossalign.data.table import PairTable

__all__ = ["RowBuilder", "read_text", "has_bad_bytes", "clean_caption",
           "find_image_root", "column", "resolve_separator", "csv_rows", "add_csv_rows"]


_BAD_BYTES = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of invalid UTF-8


def read_text(path: Path) -> str:
    """A text file as UTF-8 (BOM dropped); invalid bytes survive as lone surrogates."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return raw.decode("utf-8-sig", errors="surrogateescape")


def has_bad_bytes(*texts: object) -> bool:
    """True when any string came from bytes that are not valid UTF-8."""
    return any(isinstance(t, str) and _BAD_BYTES.search(t) for t in texts)


def clean_caption(text: object) -> str:
    """Caption text without surrounding whitespace (``None`` becomes empty)."""
    return "" if text is None else str(text).strip()


def column(header: list[str], wanted: str, fallbacks: Iterable[str]) -> int:
    """Index of a header column: ``wanted`` if set, else the first fallback present (-1 if none)."""
    low = [h.strip().lower() for h in header]
    for name in ([wanted] if wanted else list(fallbacks)):
        if name.strip().lower() in low:
            return low.index(name.strip().lower())
    return -1


def resolve_separator(option: str, first_line: str) -> str:
    """The field separator: the configured one (``tab``/``\\t`` allowed) or tab/comma sniffed."""
    aliases = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    if option:
        return aliases.get(option.lower(), option)
    return "\t" if "\t" in first_line else ","


def find_image_root(candidates: Iterable[Path], sample: list[str]) -> Path:
    """The first candidate folder holding the sampled relative image paths (else the first one)."""
    cands = [c for c in dict.fromkeys(candidates) if c.is_dir()]
    for cand in cands:
        if sample and all((cand / s).is_file() for s in sample[:3]):
            return cand
    for cand in cands:  # some images missing: take the folder that has any of them
        if any((cand / s).is_file() for s in sample[:20]):
            return cand
    return cands[0] if cands else Path(".")


class RowBuilder:
    """Collects rows into a :class:`PairTable`, diverting rows with undecodable text."""

    def __init__(self) -> None:
        self.table = PairTable()
        self.skipped: list[dict] = []
        self.image_roots: list[str] = []  # folders the images may come from, when not the data folder

    def skip(self, kind: str, where: str, detail: str) -> None:
        self.skipped.append({"kind": kind, "where": where, "detail": f"{detail}; row skipped",
                             "level": "error"})

    def add(self, image_id: str, image_path: str | Path, caption: object, split: str = "",
            origin: str = "", **labels: object) -> None:
        """Append one row; a row with invalid UTF-8 in any text is skipped and recorded."""
        if has_bad_bytes(image_id, caption, *labels.values()):
            self.skip("non_utf8", origin, "text is not valid UTF-8")
            return
        self.table.append(image_id, str(image_path), clean_caption(caption), normalize_split(split),
                          origin, **labels)

    def finish(self, **meta: object) -> PairTable:
        """The table, with reader facts (format, root, ...) in ``meta``.

        ``splits_given`` is true when the source assigned any row a split; rows it left
        out then stay out (as Flickr8k's images in no split file).
        """
        self.table.meta.update(meta)
        self.table.meta["splits_given"] = any(self.table.split)
        self.table.meta["skipped"] = self.skipped
        return self.table


@contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """The csv module's field size limit (a process-wide setting) raised while a file is read."""
    old = csv.field_size_limit(max(csv.field_size_limit(), limit))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def csv_rows(path: Path, sep: str) -> list[tuple[int, list[str]]]:
    """``(first line number, fields)`` per CSV record; quoted newlines stay inside a field.

    The csv module refuses fields over 128 KiB by default; a long synopsis is not an error,
    so the limit is 16 MiB while this file is read, and back as it was after.
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=sep)
    rows, prev = [], 0
    with _field_limit(1 << 24):
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return rows
            except csv.Error as e:  # an unclosed quote, a field over the size limit
                raise DataError(f"{path}:{prev + 1}: cannot parse CSV ({e})") from None
            rows.append((prev + 1, row))
            prev = reader.line_num


def add_csv_rows(out: RowBuilder, rows, header: list[str], cols_ic: tuple[int, int], sep: str, path: Path,
                 locate: Callable[[str], tuple[Path, str]]) -> None:
    """Rows of a header CSV into ``out``; ``locate(name)`` gives ``(image path, split)``.

    A caption holding unquoted separators (too many fields) is joined back together when
    the caption is the last column; otherwise such a row is skipped and named.
    """
    ii, ci = cols_ic
    cols = [h.strip() for h in header]
    extra = [(k, c) for k, c in enumerate(cols) if k not in (ii, ci) and c]
    for line, row in rows:
        if not row or all(not x.strip() for x in row):
            continue
        where = f"{path}:{line}"
        if len(row) > len(cols):
            if ci != len(cols) - 1:
                out.skip("bad_row", where, f"{len(row)} fields but the header has {len(cols)}")
                continue
            row = row[:ci] + [sep.join(row[ci:])]
        row = row + [""] * (len(cols) - len(row))
        name = row[ii].strip()
        if not name:
            out.skip("bad_row", where, "no image name")
            continue
        img, split = locate(name)
        labels = {c: row[k] for k, c in extra}
        split = labels.pop("split", None) or split
        out.add(name, img, row[ci], split, where, **labels)
