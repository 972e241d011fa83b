"""From a data folder to a validated, split pair table: the first step of every command."""

from __future__ import annotations

import logging
from pathlib import Path

from crossalign.config import DataConfig
from crossalign.data.formats import read_pairs
from crossalign.data.splits import assign_splits, read_split_files
from crossalign.data.table import PairTable
from crossalign.data.validate import Problem, report_problems, validate_rows

__all__ = ["prepare_table", "split_table"]

log = logging.getLogger("crossalign.data")


def split_table(table: PairTable, cfg: DataConfig) -> PairTable:
    """Fill ``table.split`` where the data did not.

    Given splits win: images they leave out stay out (Flickr8k's 91 extra images), except
    when only a train list was given (MovieLens' ``train.txt``): then the rest is divided
    between val and test in the ratio of ``cfg.split_ratios``. Without given splits every
    image (or ``cfg.group_column`` group) gets a seeded split.
    """
    if not table.meta.get("splits_given"):
        return assign_splits(table, cfg.split_ratios, cfg.split_seed, cfg.group_column)
    present = set(table.split)
    if present & {"train"} and not present & {"val", "test"}:
        _, val, test = cfg.split_ratios
        assign_splits(table, (0.0, val, test), cfg.split_seed, cfg.group_column)
    return table


def prepare_table(data_dir: str | Path, cfg: DataConfig, run_dir: str | Path | None = None,
                  quiet: bool = False) -> tuple[PairTable, list[Problem]]:
    """Read, validate and split.

    The split comes from, in order: the run folder's ``splits/`` (so evaluation uses
    exactly the items training used), the data's own split files, or a seeded split by
    image (or by ``cfg.group_column``).
    """
    table = read_pairs(data_dir, cfg.format, cfg)
    table, problems = validate_rows(table, strict=cfg.strict)
    run_splits = read_split_files(Path(run_dir) / "splits") if run_dir else {}
    if run_splits:
        table.split[:] = [run_splits.get(i, "") for i in table.image_id]
    else:
        split_table(table, cfg)
    if not quiet:
        report_problems(problems)
    return table, problems
