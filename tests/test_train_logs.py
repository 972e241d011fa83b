"""Run logs: the epoch line names the monitored metric with its value; TensorBoard event files
hold the scalars that metrics.csv and steps.csv hold."""

from __future__ import annotations

import csv
import logging
import re

import pytest

from crossalign.api import train

TINY = ["model.image.tower=small_cnn", "model.image.width=16", "model.image.image_size=32",
        "model.text.tower=lstm", "model.text.width=16", "model.text.vocab_size=64",
        "train.epochs=2", "train.batch_size=32", "train.log_every=1", "train.early_stopping=false",
        "train.tensorboard=true"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, shapes_dir):
    """A tiny two-epoch run with TensorBoard on, and the log lines it printed."""
    run = tmp_path_factory.mktemp("logged") / "run"
    logger, handler = logging.getLogger("crossalign.train"), _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train(shapes_dir, run, overrides=TINY, progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return run, handler.lines


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_epoch_line_gives_the_monitored_metric_its_value(logged_run):
    run, lines = logged_run
    rows = _csv(run / "metrics.csv")
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epoch_lines) == len(rows) == 2
    for line, row in zip(epoch_lines, rows):
        m = re.search(r"\brsum (\d+\.\d\d)\b", line)
        assert m, line  # the name is followed by its value
        assert float(m.group(1)) == pytest.approx(float(row["val_rsum"]), abs=0.005)
        assert f"t2i R@1 {float(row['val_t2i_R@1']):.2f}" in line


def test_monitor_other_than_rsum_is_logged_with_its_value(tmp_path, shapes_dir, caplog):
    with caplog.at_level(logging.INFO, logger="crossalign.train"):
        train(shapes_dir, tmp_path / "run", progress=False,
              overrides=TINY + ["train.epochs=1", "train.tensorboard=false", "train.monitor=i2t_R@5"])
    row = _csv(tmp_path / "run" / "metrics.csv")[0]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1 "))
    assert f"i2t_R@5 {float(row['val_i2t_R@5']):.2f}" in line, line


def test_tensorboard_event_files_hold_the_logged_scalars(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = logged_run
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in RUN/tensorboard"
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/val_rsum", "step/loss", "step/lr", "step/temperature"} <= tags
    for row in _csv(run / "metrics.csv"):
        epoch = int(row["epoch"])
        for key in ("train_loss", "val_rsum", "val_t2i_R@1"):
            value = {e.step: e.value for e in acc.Scalars(f"epoch/{key}")}[epoch]
            assert value == pytest.approx(float(row[key]), rel=1e-5, abs=1e-5)
    steps = _csv(run / "steps.csv")
    logged = {e.step: e.value for e in acc.Scalars("step/loss")}
    assert sorted(logged) == [int(r["step"]) for r in steps]
    for r in steps:
        assert logged[int(r["step"])] == pytest.approx(float(r["loss"]), rel=1e-5, abs=1e-6)
