"""Training with two processes (gloo on the CPU) equals one process on the global batch."""

import csv
import json
import subprocess
import sys

import pytest

from crossalign.api import train

SETS = ["train.epochs=2", "train.tensorboard=false", "train.early_stopping=false", "model.head=linear"]


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_two_processes_match_one_process(tmp_path, shapes_dir):
    args = []
    for s in SETS + ["train.batch_size=16"]:
        args += ["--set", s]
    # --nproc starts torchrun itself: 2 processes, 16 rows each = a global batch of 32
    done = subprocess.run([sys.executable, "-m", "crossalign", "-q", "train", "--nproc", "2",
                           "--data", str(shapes_dir), "--out", str(tmp_path / "ddp"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(shapes_dir, tmp_path / "one", overrides=SETS + ["train.batch_size=32"], progress=False)
    ddp, single = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    assert len(ddp) == len(single) == 2
    for a, b in zip(ddp, single):
        assert int(a["step"]) == int(b["step"])  # same number of global steps
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-4)
        assert float(a["val_rsum"]) == pytest.approx(float(b["val_rsum"]), abs=1e-6)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert one.best_epoch == summary["best_epoch"]
