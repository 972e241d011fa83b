"""Tests of resuming: a run stopped in this process at its N-th optimizer step, as a kill would
stop it, and the per-epoch rows of a run's metrics.csv."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import pytest

from crossalign.train import engine as engine_mod


@contextlib.contextmanager
def killed_at_step(monkeypatch, n: int):
    """Within the block, the ``n``-th optimizer step raises ``KeyboardInterrupt`` before it runs;
    the block must end that way (as a run killed there), and the real step is put back after."""
    real_step = engine_mod.Engine._optimizer_step
    calls = {"n": 0}

    def crashing_step(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self)

    monkeypatch.setattr(engine_mod.Engine, "_optimizer_step", crashing_step)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(engine_mod.Engine, "_optimizer_step", real_step)


def epoch_rows(run: Path) -> list[dict]:
    """The rows of ``run``'s metrics.csv, one per epoch, as strings."""
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))
