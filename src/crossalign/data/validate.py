"""Row checks shared by training, evaluation, indexing and ``crossalign check``.

Default policy: a bad row is skipped with a warning that names the file and row, the
run continues, and the number of skipped rows is reported at the end. ``strict``
turns the first problem into an error instead.

Two depths of checking. :func:`validate_rows` runs in every command and is cheap: rows
the reader could not use (bad UTF-8, malformed lines), empty or whitespace-only
captions, missing and zero-byte image files, and image paths that leave the data folder
(:func:`outside_roots`: a ``../`` name, an absolute path elsewhere, or a link whose target
lies outside; such a file is never opened). :func:`check_images` decodes every image
through the same :func:`~crossalign.data.transforms.inspect_image` door that training
uses; ``check`` runs it up front, training meets the same failures when it loads
the image and drops that image's rows (:func:`drop_failed_images`, the same problems
``check`` lists).

A :class:`Problem` of level ``error`` cost its row; ``warning`` marks something kept
but worth a look (a duplicate pair, a caption over the token limit, a tiny image).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

from crossalign.errors import DataError
from crossalign.data.table import PairTable
from crossalign.data.transforms import MAX_PIXELS, inspect_image
from crossalign.errors import ImageError

__all__ = ["Problem", "validate_rows", "report_problems", "check_images", "ImageCheck", "image_roots",
           "outside_roots", "drop_failed_images", "image_problem_kind", "count_skipped"]

log = logging.getLogger("crossalign.data")


@dataclass
class Problem:
    """One thing wrong with one input row or file."""

    kind: str  # missing_image | empty_caption | unreadable_image | non_utf8 | ...
    where: str  # "file:row" or a file path
    detail: str
    level: str = "error"  # error: the row is skipped; warning: kept, worth a look

    def message(self) -> str:
        return f"{self.where}: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


def _strict_error(p: Problem) -> DataError:
    return DataError(p.message().replace("; row skipped", ""))


def _file_sizes(paths: list[str]) -> dict[str, int]:
    """Size of each distinct path, -1 when it is not a file."""
    from crossalign.data.members import source_size

    sizes: dict[str, int] = {}
    for p in paths:
        if p not in sizes:
            sizes[p] = source_size(p)  # a plain file, or a member of a tar shard
    return sizes


def image_roots(table: PairTable) -> list[str]:
    """The folders a table's images may come from: those its reader named
    (``meta["image_roots"]`` or ``meta["image_dirs"]``), else the data folder itself."""
    roots = table.meta.get("image_roots") or table.meta.get("image_dirs")
    if roots:
        return [str(r) for r in roots]
    root = Path(str(table.meta.get("root", ".")))
    return [str(root if root.is_dir() else root.parent)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def outside_roots(paths: list[str], roots: list[str]) -> dict[str, str]:
    """The distinct ``paths`` that leave every folder of ``roots``, with the folder named.

    The one rule for what a data set may read, used by every command: the path as written
    (after ``..`` is resolved) must lie inside a root, and so must the file a link points
    to. Nothing is opened.
    """
    lexical = [os.path.abspath(r) for r in roots]
    real = [os.path.realpath(r) for r in roots]
    out: dict[str, str] = {}
    for p in dict.fromkeys(paths):
        if not any(_under(os.path.abspath(p), r) for r in lexical):
            out[p] = f"{p}: image path leaves the data folder {roots[0]}"
        elif not any(_under(os.path.realpath(p), r) for r in real):
            out[p] = (f"{p}: a link to {os.path.realpath(p)}, which is outside the data folder "
                      f"{roots[0]}; not read")
    return out


def validate_rows(table: PairTable, strict: bool = False) -> tuple[PairTable, list[Problem]]:
    """Drop rows the reader rejected, rows with an empty caption, rows whose image path
    leaves the data folder and rows whose image file is missing or empty.

    Returns the clean table and the problems found. With ``strict`` the first problem
    raises :class:`DataError`.
    """
    problems = [Problem(**d) for d in table.meta.get("skipped", [])]
    if strict and problems:
        raise _strict_error(problems[0])
    outside = outside_roots(table.image_path, image_roots(table))
    sizes = _file_sizes([p for p in table.image_path if p not in outside])
    keep: list[int] = []
    for i, (path, caption) in enumerate(zip(table.image_path, table.caption)):
        if not caption or not caption.strip():
            problems.append(Problem("empty_caption", table.origin[i], "empty caption; row skipped"))
        elif path in outside:
            problems.append(Problem("outside_data", table.origin[i], f"{outside[path]}; row skipped"))
        elif sizes[path] < 0:
            problems.append(Problem("missing_image", table.origin[i], f"image file not found: {path}; row skipped"))
        elif sizes[path] == 0:
            problems.append(Problem("empty_file", table.origin[i], f"image file is empty (0 bytes): {path}; "
                                                                   f"row skipped"))
        else:
            keep.append(i)
            continue
        if strict:
            raise _strict_error(problems[-1])
    clean = table.take(keep)
    clean.meta["skipped"] = []  # reported once, here
    return clean, problems


_IMAGE_KINDS = {"missing": "missing_image", "empty_file": "empty_file", "truncated": "truncated_image",
                "too_large": "too_large_image", "unreadable": "unreadable_image"}


def image_problem_kind(kind: str) -> str:
    """The :class:`Problem` kind of an :class:`~crossalign.data.transforms.ImageError` kind."""
    return _IMAGE_KINDS.get(kind, "unreadable_image")


def drop_failed_images(table: PairTable, failed: dict, strict: bool = False,
                       by: str = "image_id") -> tuple[PairTable, list[Problem]]:
    """Remove the rows whose image could not be read, one problem per row, named by row.

    Args:
        failed: image id (or path, with ``by="image_path"``) -> the ImageError or its message.
        strict: raise :class:`DataError` for the first such row instead (``data.strict``).
    """
    keys = getattr(table, by)
    problems = [Problem(image_problem_kind(getattr(failed[key], "kind", "unreadable")), table.origin[k],
                        f"{failed[key]}; row skipped") for k, key in enumerate(keys) if key in failed]
    if strict and problems:
        raise _strict_error(problems[0])
    keep = [k for k, key in enumerate(keys) if key not in failed]
    return (table.take(keep) if problems else table), problems


def count_skipped(problems: list[Problem]) -> dict[str, int]:
    """Rows skipped, by kind: the figure every command reports the same way."""
    counts: dict[str, int] = {}
    for p in problems:
        if p.level == "error":
            counts[p.kind] = counts.get(p.kind, 0) + 1
    return dict(sorted(counts.items()))


@dataclass
class ImageCheck:
    """What decoding one image found: its size, or why it failed."""

    path: str
    width: int = 0
    height: int = 0
    mode: str = ""
    kind: str = ""  # "" when the image is usable, else ImageError.kind
    message: str = ""


def _check_one(args: tuple[str, int]) -> ImageCheck:
    path, max_pixels = args
    try:
        w, h, mode = inspect_image(path, max_pixels)
    except ImageError as e:
        return ImageCheck(path, kind=e.kind, message=str(e))
    return ImageCheck(path, w, h, mode)


def check_images(paths: list[str], max_pixels: int = MAX_PIXELS, workers: int = 0) -> list[ImageCheck]:
    """Decode every image fully (in ``workers`` processes; 0 = one per CPU core).

    Small jobs stay in this process: starting workers costs more than a few hundred decodes.
    """
    jobs = [(p, max_pixels) for p in paths]
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < 500:
        return [_check_one(j) for j in jobs]
    try:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_check_one, jobs, chunksize=64))
    except BrokenProcessPool:  # a decoder crashed a worker: go slowly, in this process
        return [_check_one(j) for j in jobs]


def report_problems(problems: list[Problem], limit: int = 20) -> None:
    """Log each problem (up to ``limit``) and a total."""
    for p in problems[:limit]:
        log.warning(p.message())
    if len(problems) > limit:
        log.warning("... and %d more problems", len(problems) - limit)
    skipped = sum(p.level == "error" for p in problems)
    if skipped:
        log.warning("%d row(s) skipped because of bad input", skipped)
