"""The training engine: exact resume, schedules, accumulation, clipping, early stopping."""

import csv
import json

import pytest
import torch
from _resume import epoch_rows, killed_at_step

from crossalign.api import train
from crossalign.train import engine as engine_mod

FAST = ["train.batch_size=32", "train.checkpoint_every=3", "train.early_stopping=false",
        "train.tensorboard=false", "model.head=mlp", "model.head_dropout=0.2"]


def test_resume_after_crash_mid_epoch_is_exact(tmp_path, shapes_dir, monkeypatch):
    full = train(shapes_dir, tmp_path / "full", overrides=FAST + ["train.epochs=3"], progress=False)
    # crash in the middle of epoch 2, after a resume point and a few more steps
    with killed_at_step(monkeypatch, 12):
        train(shapes_dir, tmp_path / "cut", overrides=FAST + ["train.epochs=3"], progress=False)
    latest = json.loads((tmp_path / "cut" / "resume" / "latest.json").read_text())["tag"]
    assert latest.startswith("0002-")  # the resume point is inside epoch 2
    resumed = train(resume=tmp_path / "cut", progress=False)
    timing = {"samples_per_s", "epoch_seconds"}
    assert {k: v for k, v in resumed.best_metrics.items() if k not in timing} == \
        {k: v for k, v in full.best_metrics.items() if k not in timing}
    a, b = epoch_rows(tmp_path / "full"), epoch_rows(tmp_path / "cut")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["val_rsum"] for r in a] == [r["val_rsum"] for r in b]
    with open(tmp_path / "cut" / "steps.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_cosine_schedule_warmup_and_decay(tmp_path, shapes_dir):
    train(shapes_dir, tmp_path / "r", overrides=FAST + ["train.epochs=2", "train.scheduler=cosine",
          "train.warmup_steps=3", "train.log_every=1", "train.lr=0.01"], progress=False)
    with open(tmp_path / "r" / "steps.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    # logged after each step: warm-up 2/3, 3/3 of the peak, then a cosine decay to 0
    assert lrs[0] == pytest.approx(0.01 * 2 / 3) and lrs[1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_plateau_accumulation_and_early_stopping(tmp_path, shapes_dir):
    # a tiny lr: the monitor soon stops improving, plateau halves lr, early stopping ends the run
    res = train(shapes_dir, tmp_path / "p", overrides=[
        "train.batch_size=16", "train.accum_steps=2", "train.tensorboard=false", "train.epochs=12",
        "train.scheduler=plateau", "train.plateau_patience=0", "train.lr=1e-6", "train.patience=2",
        "train.monitor=t2i_R@1"], progress=False)
    rows = epoch_rows(tmp_path / "p")
    best, bad, lr = -1.0, 0, 1e-6
    for r in rows:
        score = float(r["val_t2i_R@1"])
        if score > best:
            best, bad = score, 0
        else:
            bad, lr = bad + 1, lr / 2
        assert float(r["lr"]) == pytest.approx(lr)
    assert bad == 2 and len(rows) < 12  # stopped by patience, not by the epoch limit
    assert float(next(r for r in rows if int(r["epoch"]) == res.best_epoch)["val_t2i_R@1"]) == best
    # 240 training captions, 16 per micro-batch, 2 micro-batches per step: 7 steps an epoch
    assert [int(r["step"]) for r in rows] == [7 * (k + 1) for k in range(len(rows))]


# the test puts its own optimizer step in; torch's scheduler warns that the step was replaced
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden:UserWarning")
def test_gradient_clipping_limits_the_update(tmp_path, shapes_dir):
    from crossalign.config import load_config
    from crossalign.data.prepare import prepare_table
    from crossalign.distributed import DistInfo

    seen = {}
    for clip in (0.05, 0.0):
        cfg = load_config(None, FAST + [f"train.grad_clip={clip}"])
        table, problems = prepare_table(shapes_dir, cfg.data)
        eng = engine_mod.run_engine(tmp_path / str(clip), cfg, table, problems, DistInfo(), progress=False)
        params = [p for p in eng.model.parameters() if p.requires_grad]
        eng.opt.step = lambda: seen.__setitem__(clip, float(torch.norm(torch.stack([p.grad.norm() for p in params]))))
        eng._micro_step(eng.rows[:32], epoch=1, sync=True)
        reported = eng._optimizer_step()
        assert reported > 0.05  # the norm before clipping
    assert seen[0.05] == pytest.approx(0.05, rel=1e-4)  # what the optimizer saw
    assert seen[0.0] > 0.05  # clip 0 = off


def test_bf16_autocast_and_siglip_train_on_cpu(tmp_path, shapes_dir):
    res = train(shapes_dir, tmp_path / "b", overrides=FAST + ["train.epochs=2", "train.precision=bf16",
                "loss.name=siglip", "train.lr=0.003"], progress=False)
    rows = epoch_rows(tmp_path / "b")
    assert all(torch.isfinite(torch.tensor(float(r["train_loss"]))) for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # the checkpoint holds the SigLIP bias, and loads back
    import crossalign

    aligner = crossalign.load(res.run_dir)
    assert aligner.model.logit_bias is not None
