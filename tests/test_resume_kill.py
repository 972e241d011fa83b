"""SIGKILL at any point of a training, then ``crossalign train --resume``: nothing lost.

The kills are real (``SIGKILL``, no clean-up runs): either sent from outside at a moment
the test does not choose, or raised inside the process at a chosen call through
``tests/_kill_runner.py``, which patches one function and then runs the command line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from crossalign.features import FeatureCache
from crossalign.train.state import load_resume_point

from _kill_runner import TIMING, TINY, cli, env, rows, sets

def latest_tag(run: Path) -> str | None:
    path = run / "resume" / "latest.json"
    return json.loads(path.read_text())["tag"] if path.exists() else None


def cache_entries(root: Path) -> dict[str, np.ndarray]:
    """Every key -> vector of every tower folder under a cache root."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for k, v in FeatureCache(root, folder.name).entries():
            out[f"{folder.name}/{k}"] = v
    return out


def listed_rows(folder: Path) -> list[int]:
    """Rows listed per segment of a tower folder."""
    return [s["rows"] for s in FeatureCache(folder.parent, folder.name).segments()]


def killed(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode == -signal.SIGKILL, \
        f"{where}: not killed (exit {proc.returncode})\n{proc.stderr}"


def test_five_kills_then_resume_match_an_uninterrupted_run(tmp_path, shapes_dir):
    rng = random.Random(12)  # the kill points are drawn, reproducibly
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = sets(TINY + [f"cache.dir={cache}"])
    kill = {"action": "kill"}

    # 1. mid feature extraction: a chunk is on disk but not yet in the cache's index
    n_commit = rng.randint(2, 3)
    p = cli({"shard": 16, "faults": [{**kill, "target": "crossalign.features:FeatureCache._commit",
                                      "call": n_commit}]},
            "train", "--data", str(shapes_dir), "--out", str(run), *args)
    killed(p, "feature extraction")
    assert latest_tag(run) is None  # before the first resume point: --resume starts again
    (folder,) = [d for d in cache.iterdir() if d.is_dir()]
    (seg,) = folder.glob("seg-*.bin")  # one writer, one segment file
    width = seg.stat().st_size // (16 * n_commit * 2)  # n_commit float16 chunks of 16 rows written
    assert seg.stat().st_size == 16 * n_commit * 2 * width
    assert sum(listed_rows(folder)) == 16 * (n_commit - 1)  # the last one never listed

    # 2. mid-step: after forward and backward, before the optimizer's update
    p = cli({"shard": 16, "faults": [{**kill, "target": "crossalign.train.engine:Engine._optimizer_step",
                                      "call": rng.randint(6, 14)}]}, "train", "--resume", str(run))
    killed(p, "optimizer step")
    assert "starting it again from the beginning" in p.stderr
    assert latest_tag(run).startswith("0001-")
    cached = sum(listed_rows(folder))
    assert cached == sum(1 for _ in (shapes_dir / "images").iterdir()) - _test_images(run)

    # 3. mid-checkpoint write: the model file of a new resume point is written, the rest not
    before = latest_tag(run)
    k = rng.randint(1, 3)
    p = cli({"faults": [{**kill, "target": "crossalign.train.state:save_tensors", "call": 2 * k}]},
            "train", "--resume", str(run))
    killed(p, "resume point write")
    half = {f.name.split("-", 1)[1].split(".")[0] for f in (run / "resume").glob("model-*")}
    assert len(half) == 2 and latest_tag(run) in half and latest_tag(run) >= before
    load_resume_point(run)  # the committed generation is whole and passes its checksums

    # 4. mid-validation: embeddings of the validation split done, metrics not
    epochs_done = len(rows(run / "metrics.csv")) if (run / "metrics.csv").exists() else 0
    p = cli({"faults": [{**kill, "target": "crossalign.train.engine:retrieval_metrics", "call": 1}]},
            "train", "--resume", str(run))
    killed(p, "validation")
    assert len(rows(run / "metrics.csv")) == epochs_done

    # 5. between epochs: the epoch's resume point is written, the next epoch not begun
    p = cli({"faults": [{**kill, "target": "crossalign.train.engine:Engine.train_epoch", "call": 2}]},
            "train", "--resume", str(run))
    killed(p, "between epochs")
    assert latest_tag(run) == f"{epochs_done + 2:04d}-0000000"

    done = cli(None, "train", "--resume", str(run))
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["resumed"] is True

    # the uninterrupted run trains on the features the kills left behind: from the same
    # features, a resumed training is the same bits as one never stopped (every state it
    # depends on is restored exactly), on any CPU
    ref = tmp_path / "ref"
    p = cli({"shard": 16}, "train", "--data", str(shapes_dir), "--out", str(ref),
            *sets(TINY + [f"cache.dir={cache}"]))
    assert p.returncode == 0, p.stderr
    assert rows(run / "metrics.csv") == rows(ref / "metrics.csv")
    assert len(rows(run / "metrics.csv")) == 4
    assert rows(run / "steps.csv") == rows(ref / "steps.csv")  # each step once, with the same loss
    best, want = (json.loads((r / "summary.json").read_text())["best_val"] for r in (run, ref))
    assert {k: v for k, v in best.items() if k not in TIMING} == \
        {k: v for k, v in want.items() if k not in TIMING}
    # the cache the kills left behind holds what an undisturbed one holds, every entry once
    # (nothing computed twice, by the resumed runs or the reference); equal up to rounding,
    # not bit for bit: the items left after the first kill were computed in other batches than
    # one pass uses, and a tower's output changes in the last bits with the batch around it
    # where the kernel a matrix product runs depends on its shape
    p = cli({"shard": 16}, "train", "--data", str(shapes_dir), "--out", str(tmp_path / "fresh"),
            *sets(TINY + ["train.epochs=1", f"cache.dir={tmp_path / 'fresh_cache'}"]))
    assert p.returncode == 0, p.stderr
    mine, theirs = cache_entries(cache), cache_entries(tmp_path / "fresh_cache")
    assert mine.keys() == theirs.keys()
    for key, vec in theirs.items():
        np.testing.assert_allclose(mine[key], vec, rtol=1e-5, atol=1e-6)


def _test_images(run: Path) -> int:
    """Images of the test split (training extracts features of train and val only)."""
    return len((run / "splits" / "test.txt").read_text().split())


def test_sigkill_from_outside_then_resume(tmp_path, shapes_dir):
    """A kill at a moment the test does not choose: once a resume point exists, mid-run."""
    run = tmp_path / "run"
    over = TINY + ["train.epochs=3", "train.checkpoint_every=2", f"cache.dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "crossalign", "-q", "train", "--data", str(shapes_dir), "--out", str(run),
           *sets(over)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and latest_tag(run) is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the training ended before it could be killed"
    assert not (run / "summary.json").exists()
    cut = latest_tag(run)
    assert cut is not None
    done = subprocess.run([sys.executable, "-m", "crossalign", "-q", "train", "--resume", str(run)],
                          env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] is True
    # the features were all extracted before the kill, into the cache the reference reads too:
    # the same features, so the same bits
    ref = cli(None, "train", "--data", str(shapes_dir), "--out", str(tmp_path / "ref"), *sets(over))
    assert ref.returncode == 0, ref.stderr
    assert rows(run / "metrics.csv") == rows(tmp_path / "ref" / "metrics.csv")
    assert rows(run / "steps.csv") == rows(tmp_path / "ref" / "steps.csv")
