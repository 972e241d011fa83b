"""From a data folder to a validated, split pair table: the first step of every command."""

from __future__ import annotations

import logging
from pathlib import Path

from crossalign.config import DataConfig
from crossalign.data.formats import read_pairs
from crossalign.data.splits import assign_splits, read_split_files
from crossalign.data.table import PairTable
from crossalign.data.validate import Problem, report_problems, validate_rows

__all__ = ["prepare_table"]

log = logging.getLogger("crossalign.data")


def prepare_table(data_dir: str | Path, cfg: DataConfig, run_dir: str | Path | None = None,
                  quiet: bool = False) -> tuple[PairTable, list[Problem]]:
    """Read, validate and split.

    The split comes from, in order: the run folder's ``splits/`` (so evaluation uses
    exactly the items training used), the data's own split files, or a seeded split by
    image (or by ``cfg.group_column``).
    """
    table = read_pairs(data_dir, cfg.format)
    table, problems = validate_rows(table, strict=cfg.strict)
    run_splits = read_split_files(Path(run_dir) / "splits") if run_dir else {}
    if run_splits:
        table.split[:] = [run_splits.get(i, "") for i in table.image_id]
    elif not table.meta.get("splits_given"):
        assign_splits(table, cfg.split_ratios, cfg.split_seed, cfg.group_column)
    if not quiet:
        report_problems(problems)
    return table, problems
