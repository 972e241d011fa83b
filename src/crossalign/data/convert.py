"""``crossalign convert``: any supported layout to the canonical folder.

The canonical folder is ``images/`` (the image files, copied), ``captions.txt`` (CSV
``image,caption`` plus one column per label) and ``splits/{train,val,test}.txt``. The
split written is the one training would use on the source (given, or seeded by image or
group), so a converted folder trains and evaluates on the same items as the original.
Rows that validation rejects are not converted; they are reported like everywhere else.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path, PurePosixPath

from crossalign._io import atomic_path, atomic_write_text
from crossalign.config import DataConfig
from crossalign.data.formats import read_pairs
from crossalign.errors import DataError
from crossalign.data.prepare import split_table
from crossalign.data.splits import write_split_files
from crossalign.data.table import PairTable
from crossalign.data.validate import Problem, report_problems, validate_rows

__all__ = ["convert_to_folder", "canonical_names"]

_UNSAFE = re.compile(r"[^\w.\-]+")


def _safe_name(image_id: str, source: str) -> str:
    """A relative file name for ``image_id``: its own path parts made safe, with an image suffix."""
    parts = [_UNSAFE.sub("_", p) for p in PurePosixPath(image_id.replace("\\", "/")).parts
             if p not in ("", ".", "..", "/")]
    name = "/".join(p for p in parts if p.strip("_")) or "image"
    suffix = Path(source).suffix.lower()
    return name if Path(name).suffix.lower() == suffix or not suffix else name + suffix


def canonical_names(table: PairTable) -> dict[str, str]:
    """Image id -> file name under ``images/``, unique even when two ids clean up alike."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for iid, path in zip(*table.images()):
        name = _safe_name(iid, path)
        stem, suffix, k = name[: len(name) - len(Path(name).suffix)], Path(name).suffix, 1
        while name.lower() in taken:
            name, k = f"{stem}-{k}{suffix}", k + 1
        taken.add(name.lower())
        names[iid] = name
    return names


def _copy(src: str, dest: Path) -> None:
    from crossalign.data.members import parse_ref, read_member, source_size

    if dest.is_file() and dest.stat().st_size == source_size(src):
        return  # already converted
    ref = parse_ref(src)
    with atomic_path(dest) as tmp:
        if ref is not None:  # a member of a tar shard
            tmp.write_bytes(read_member(ref))
        else:
            shutil.copyfile(src, tmp)


def _label_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "|".join(str(v) for v in value)
    return str(value)


def _captions_csv(table: PairTable, names: dict[str, str]) -> str:
    labels = [k for k in table.labels if k not in ("image", "caption")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "caption", *labels])
    for r in range(len(table)):
        w.writerow([names[table.image_id[r]], table.caption[r],
                    *(_label_text(table.labels[k][r]) for k in labels)])
    return buf.getvalue()


def convert_to_folder(src: str | Path, out: str | Path, cfg: DataConfig | None = None,
                      quiet: bool = False) -> tuple[PairTable, list[Problem]]:
    """Write ``src`` (any supported layout) as a canonical folder at ``out``.

    Returns the converted table (ids and paths as they are in ``out``) and the rows skipped.
    """
    cfg = cfg or DataConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "captions.txt").is_file():
        raise DataError(f"{out}: folder exists and is not empty (and holds no captions.txt); "
                        f"choose a new folder")
    table = read_pairs(src, cfg.format, cfg)
    table, problems = validate_rows(table, strict=cfg.strict)
    split_table(table, cfg)
    names = canonical_names(table)
    for iid, path in zip(*table.images()):
        _copy(path, out / "images" / names[iid])
    atomic_write_text(out / "captions.txt", _captions_csv(table, names))
    table.image_id[:] = [names[i] for i in table.image_id]
    table.image_path[:] = [str(out / "images" / i) for i in table.image_id]
    write_split_files(table, out / "splits")
    if not quiet:
        report_problems(problems)
    return table, problems
