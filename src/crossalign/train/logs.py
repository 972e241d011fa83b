"""Run logs: per-epoch ``metrics.csv``, per-step ``steps.csv`` and TensorBoard event files.

Only the main process logs. On resume, rows past the resume point are dropped, so the
logs of a resumed run read as those of an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from crossalign._io import atomic_path

__all__ = ["RunLogger"]

log = logging.getLogger("crossalign.train")


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _num(v: str):
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except (TypeError, ValueError):
        return v


class RunLogger:
    """Collects epoch and step rows; writes them atomically (epochs) or in blocks (steps)."""

    def __init__(self, run: Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0,
                 history: list[dict] | None = None) -> None:
        self.run, self.enabled = Path(run), enabled
        self.epochs: list[dict] = list(history or [])
        self.steps: list[dict] = []
        self._steps_flushed: list[dict] = []
        self.tb = None
        if not enabled:
            return
        if resume_step:
            self._steps_flushed = [r for r in _read_csv(self.run / "steps.csv") if r["step"] <= resume_step]
            _write_csv(self.run / "metrics.csv", self.epochs) if self.epochs else None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events a killed run wrote after its last resume point
                self.tb = SummaryWriter(str(self.run / "tensorboard"), purge_step=resume_step or None)
            except ImportError:
                log.warning("tensorboard is not installed: no event files are written")

    def step(self, row: dict) -> None:
        if not self.enabled:
            return
        self.steps.append(row)
        if self.tb:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"step/{k}", v, row["step"])

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        self.epochs.append(row)
        _write_csv(self.run / "metrics.csv", self.epochs)
        self.flush_steps()
        if self.tb:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"epoch/{k}", v, row["epoch"])
            self.tb.flush()

    def flush_steps(self) -> None:
        if self.enabled and self.steps:
            self._steps_flushed += self.steps
            self.steps = []
            _write_csv(self.run / "steps.csv", self._steps_flushed)

    def close(self) -> None:
        self.flush_steps()
        if self.tb:
            self.tb.close()
