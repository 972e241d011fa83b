"""Row-per-pair files: open_clip CSV/TSV, JSONL, and MovieLens-style posters with a movie table.

- open_clip CSV/TSV: columns ``filepath`` and ``title`` (``data.image_column``,
  ``data.caption_column`` and ``data.separator`` change them; the separator is sniffed
  from the header otherwise). Paths are relative to the file. Files named ``train.csv``,
  ``val.tsv`` ... give the split; so does a ``split`` column.
- JSONL: one object per line with ``image`` and ``caption`` (a string) or ``captions`` (a
  list); a ``split`` key or the file name gives the split; other keys become labels.
- MovieLens style: ``posters/<movie id>.jpg`` plus a CSV with the id, title and plot text
  (``data.id_column``, ``data.caption_column``); optional ``train.txt`` (and ``val.txt``,
  ``test.txt``) of ids. The plot is the caption; every other column (title, genres, year)
  is kept as a label, with the year taken from a "Title (1995)" when there is no year column.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from crossalign.config import DataConfig
from crossalign.data.readers._base import (RowBuilder, add_csv_rows, column, csv_rows, read_text, resolve_separator)
from crossalign.data.transforms import list_images
from crossalign.errors import DataError
from crossalign.data.splits import read_split_files, split_from_name
from crossalign.data.table import PairTable

__all__ = ["read_csv", "read_jsonl", "read_movielens", "table_files", "find_movie_table",
           "ID_COLUMNS", "PLOT_COLUMNS"]

ID_COLUMNS = ("movieid", "movie_id", "id", "imdbid", "imdb_id", "tmdbid", "tmdb_id")
PLOT_COLUMNS = ("plot", "overview", "synopsis", "description", "summary", "storyline")
POSTER_DIRS = ("posters", "Posters", "images", "Images")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def table_files(root: Path, exts: tuple[str, ...]) -> list[Path]:
    """``root`` itself, or the files of folder ``root`` with one of ``exts`` (not captions.txt)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.suffix.lower() in exts and p.is_file())


def _header(path: Path, cfg: DataConfig) -> tuple[str, list[str], object]:
    sep = resolve_separator(cfg.separator, read_text(path).split("\n", 1)[0])
    rows = iter(csv_rows(path, sep))
    _, header = next(rows, (0, []))
    return sep, header, rows


def _base_dir(path: Path, root: Path, cfg: DataConfig) -> Path:
    folder = root if root.is_dir() else root.parent
    return folder / cfg.image_dir if cfg.image_dir else path.parent


def read_csv(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read open_clip-style CSV/TSV files (``filepath`` + ``title`` columns by default)."""
    root, cfg = Path(root), cfg or DataConfig()
    files = table_files(root, (".csv", ".tsv"))
    if not files:
        raise DataError(f"{root}: no .csv or .tsv file found")
    out = RowBuilder()
    for path in files:
        sep, header, rows = _header(path, cfg)
        ii = column(header, cfg.image_column, ["filepath"])
        ci = column(header, cfg.caption_column, ["title"])
        if ii < 0 or ci < 0:
            want = f"'{cfg.image_column or 'filepath'}' and '{cfg.caption_column or 'title'}'"
            raise DataError(f"{path}: line 1: header must contain {want} (set data.image_column and "
                            f"data.caption_column for other names), got {header}")
        base, split = _base_dir(path, root, cfg), split_from_name(path.name)
        add_csv_rows(out, rows, header, (ii, ci), sep, path, lambda name: (base / name, split))
    return out.finish(format="csv", root=str(root))


def _jsonl_record(obj: dict, cfg: DataConfig) -> tuple[str, list, dict] | str:
    """``(image, captions, labels)`` of one JSONL object, or the reason it cannot be used."""
    image_key = cfg.image_column or next((k for k in ("image", "file_name", "filepath") if k in obj), "image")
    if not isinstance(obj.get(image_key), str) or not obj[image_key].strip():
        return f"no '{image_key}' string"
    keys = [cfg.caption_column] if cfg.caption_column else ["caption", "captions", "text"]
    cap_key = next((k for k in keys if k in obj), None)
    if cap_key is None:
        return f"no {' or '.join(repr(k) for k in keys)}"
    caps = obj[cap_key]
    caps = caps if isinstance(caps, list) else [caps]
    labels = {k: v for k, v in obj.items() if k not in (image_key, cap_key)
              and (isinstance(v, (str, int, float, bool)) or
                   (isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v)))}
    return obj[image_key].strip(), caps, labels


def read_jsonl(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read JSONL files: one object per line with ``image`` and ``caption`` or ``captions``."""
    root, cfg = Path(root), cfg or DataConfig()
    files = table_files(root, (".jsonl",))
    if not files:
        raise DataError(f"{root}: no .jsonl file found")
    out = RowBuilder()
    for path in files:
        base, file_split = _base_dir(path, root, cfg), split_from_name(path.name)
        for n, line in enumerate(read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                out.skip("bad_row", where, f"not valid JSON ({e.msg})")
                continue
            rec = _jsonl_record(obj, cfg) if isinstance(obj, dict) else "not a JSON object"
            if isinstance(rec, str):
                out.skip("bad_row", where, rec)
                continue
            name, caps, labels = rec
            split = str(labels.pop("split", "") or file_split)
            for j, cap in enumerate(caps):
                origin = where if len(caps) == 1 else f"{where}:captions[{j}]"
                out.add(name, base / name, cap if isinstance(cap, str) else None, split, origin, **labels)
    return out.finish(format="jsonl", root=str(root))


def find_movie_table(root: Path, cfg: DataConfig) -> tuple[Path, list[str], int, int] | None:
    """The CSV/TSV of ``root`` with a movie id column and a text column, as (path, header, id, text)."""
    for path in table_files(root, (".csv", ".tsv")) if root.is_dir() else []:
        _, header, _ = _header(path, cfg)
        idc = column(header, cfg.id_column, ID_COLUMNS)
        txt = column(header, cfg.caption_column, PLOT_COLUMNS)
        txt = txt if txt >= 0 or cfg.caption_column else column(header, "", ["title"])
        if idc >= 0 and txt >= 0:
            return path, header, idc, txt
    return None


def _poster_dir(root: Path, cfg: DataConfig) -> Path:
    for name in ([cfg.image_dir] if cfg.image_dir else POSTER_DIRS):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: posters folder not found (looked for {', '.join(POSTER_DIRS)}; "
                    f"set data.image_dir)")


def _movie_splits(root: Path) -> dict[str, str]:
    return {**read_split_files(root), **read_split_files(root / "splits")}


def read_movielens(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read posters named by movie id plus a movie table with plot text."""
    root, cfg = Path(root), cfg or DataConfig()
    found = find_movie_table(root, cfg) if root.is_dir() else None
    if found is None:
        raise DataError(f"{root}: no movie table (.csv/.tsv with an id column such as movieId and a "
                        f"plot column such as plot or overview) found")
    path, header, idc, txt = found
    posters = _poster_dir(root, cfg)
    by_stem = {p.stem: p for p in list_images(posters)}
    splits = _movie_splits(root)
    out = RowBuilder()
    sep, _, rows = _header(path, cfg)

    def locate(movie_id: str) -> tuple[Path, str]:
        img = by_stem.get(movie_id, posters / f"{movie_id}.jpg")
        return img, splits.get(movie_id) or splits.get(img.name, "")

    add_csv_rows(out, rows, header, (idc, txt), sep, path, locate)
    table = out.table
    names = [Path(p).name for p in table.image_path]
    table.labels["movie_id"] = table.image_id  # the id column, kept as a label (a split group)
    table.image_id = names
    if "year" not in {k.lower() for k in table.labels} and "title" in table.labels:
        table.labels["year"] = [(m.group(1) if (m := _YEAR.search(str(t or ""))) else "")
                                for t in table.labels["title"]]
    return out.finish(format="movielens", root=str(root), image_dirs=[str(posters)])
