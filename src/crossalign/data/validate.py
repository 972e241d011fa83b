"""Row checks shared by training, evaluation and indexing.

Default policy: a bad row is skipped with a warning that names the file and row, the
run continues, and the number of skipped rows is reported at the end. ``strict``
turns the first problem into an error instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from crossalign.data.formats import DataError
from crossalign.data.table import PairTable

__all__ = ["Problem", "validate_rows", "report_problems"]

log = logging.getLogger("crossalign.data")


@dataclass
class Problem:
    """One thing wrong with one input row or file."""

    kind: str  # missing_image | empty_caption | unreadable_image | ...
    where: str  # "file:row" or a file path
    detail: str

    def message(self) -> str:
        return f"{self.where}: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


def validate_rows(table: PairTable, strict: bool = False) -> tuple[PairTable, list[Problem]]:
    """Drop rows with an empty caption or a missing image file.

    Returns the clean table and the problems found. With ``strict`` the first problem
    raises :class:`DataError`.
    """
    problems: list[Problem] = []
    keep: list[int] = []
    exists: dict[str, bool] = {}
    for i in range(len(table)):
        path = table.image_path[i]
        if path not in exists:
            exists[path] = os.path.isfile(path)
        if not table.caption[i] or not table.caption[i].strip():
            problems.append(Problem("empty_caption", table.origin[i], "empty caption; row skipped"))
        elif not exists[path]:
            problems.append(Problem("missing_image", table.origin[i],
                                    f"image file not found: {path}; row skipped"))
        else:
            keep.append(i)
            continue
        if strict:
            raise DataError(problems[-1].message().replace("; row skipped", ""))
    return table.take(keep), problems


def report_problems(problems: list[Problem], limit: int = 20) -> None:
    """Log each problem (up to ``limit``) and a total."""
    for p in problems[:limit]:
        log.warning(p.message())
    if len(problems) > limit:
        log.warning("... and %d more problems", len(problems) - limit)
    if problems:
        log.warning("%d row(s) skipped because of bad input", len(problems))
