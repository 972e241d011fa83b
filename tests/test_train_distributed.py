"""Training with two processes (gloo on the CPU) equals one process on the global batch:
frozen towers with linear heads (through ``--nproc``), batch norm synced over processes, a
trainable batch-norm tower with MLP heads, and feature extraction shared out into one cache.

"Equals" up to float rounding, never bit for bit: two processes each sum the gradient of
their half of the batch and all-reduce adds the halves, where one process sums all rows in
one matrix product (and the contrastive loss is taken over ``[16, 32]`` logits per process
instead of ``[32, 32]``), so the weights, and then every score, differ in the last bits; a
shared-out extraction also encodes each item in another batch (see the test's comment).
Validation is therefore compared as ``tests/_ties.py`` describes: scores within a tolerance,
the ranks of the queries clear of near-ties, recalls within what the near-tied ones can move.
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from crossalign.api import train
from crossalign._io import sha256_file
from crossalign.runs import embed_split, open_run, select_split
from crossalign.features import FeatureCache, text_key
from crossalign.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from crossalign.train.batch_norm import CpuSyncBatchNorm, sync_batch_norm

from _ties import assert_recalls_within, assert_same_retrieval, recall_slack, recorded_validation

# feature dropout draws its masks per process (statistically the same training, not the same bits),
# so the tests of exact equality between N processes and one turn it off
NO_DROPOUT = ["model.image.dropout=0", "model.text.dropout=0"]
SETS = ["train.epochs=2", "train.tensorboard=false", "train.early_stopping=false", "model.head=linear",
        *NO_DROPOUT]


# how far a score (a cosine similarity) of two processes may be from one process's: measured
# differences are about 1e-7 (the weights' last bits, see the docstring); the room above that
# is for CPUs whose kernels round differently
SCORE_TOL = 1e-5


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _last_model_on_val(run, data):
    """The validation split embedded by a run's last weights, the way evaluation opens a run."""
    rd = open_run(run, data, which="last", quiet=True)
    emb = embed_split(rd, select_split(rd.table, "val"), progress=False)
    return (emb.image_emb, emb.text_emb), emb.text_to_image


def _assert_same_epochs(ddp_run, one_run, validations, loss_tol: float,
                        tol: float = SCORE_TOL) -> list[dict]:
    """Per epoch: the same steps, losses within ``loss_tol``, recalls within what the queries
    near-tied (at ``tol``) in the one-process run's ``validations`` can move; the slacks."""
    ddp, single = _rows(ddp_run), _rows(one_run)
    assert len(ddp) == len(single) == len(validations) == 2
    slacks = []
    for x, y, (img, txt, t2i) in zip(ddp, single, validations):
        assert int(x["step"]) == int(y["step"])  # same number of global steps
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), abs=loss_tol)
        slacks.append(recall_slack((img, txt), t2i, tol, prefix="val_"))
        assert_recalls_within(x, y, slacks[-1], f"epoch {x['epoch']}")
    return slacks


def _assert_same_best_epoch(ddp_best: int, one_best: int, one_run, slacks: list[dict]) -> None:
    """The best epoch (the larger R-sum) is the same, unless rounding could swap the two."""
    rsum = [float(r["val_rsum"]) for r in _rows(one_run)]
    if abs(rsum[0] - rsum[1]) > slacks[0]["val_rsum"] + slacks[1]["val_rsum"]:
        assert ddp_best == one_best


def test_two_processes_match_one_process(tmp_path, shapes_dir):
    args = []
    for s in SETS + ["train.batch_size=16"]:
        args += ["--set", s]
    # --nproc starts torchrun itself: 2 processes, 16 rows each = a global batch of 32
    done = subprocess.run([sys.executable, "-m", "crossalign", "-q", "train", "--nproc", "2",
                           "--data", str(shapes_dir), "--out", str(tmp_path / "ddp"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with recorded_validation() as validations:
        one = train(shapes_dir, tmp_path / "one", overrides=SETS + ["train.batch_size=32"], progress=False)
    slacks = _assert_same_epochs(tmp_path / "ddp", tmp_path / "one", validations, loss_tol=1e-4)
    (got, t2i), (want, t2i_one) = (_last_model_on_val(tmp_path / r, shapes_dir) for r in ("ddp", "one"))
    np.testing.assert_array_equal(t2i, t2i_one)
    assert_same_retrieval(got, want, t2i, SCORE_TOL, min_clear=0.8)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    _assert_same_best_epoch(summary["best_epoch"], one.best_epoch, tmp_path / "one", slacks)


# ---- batch norm over the global batch ------------------------------------------------------

WORLD = 2


class _BNNet(torch.nn.Module):
    """Conv + 2-D batch norm, pooled, then linear + 1-D batch norm: both kinds get synced."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)
        self.bn1 = torch.nn.BatchNorm1d(3, momentum=None)  # cumulative running average

    def forward(self, x):
        h = torch.relu(self.bn2(self.conv(x))).mean((2, 3))  # [batch, 4]
        return self.bn1(self.fc(h))  # [batch, 3]


def _bn_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 5, 5, generator=g) * 2 + 1, torch.randn(8, 3, generator=g)


def _bn_step(net, dist: DistInfo) -> dict:
    """Two training steps' outputs, rank-averaged gradients and running statistics."""
    x, target = _bn_batch()
    rows = slice(dist.rank * 4, dist.rank * 4 + 4) if dist.world_size > 1 else slice(None)
    outs = []
    for _ in range(2):
        net.zero_grad()
        out = net(x[rows])  # [local, 3]
        ((out * target[rows]).sum(1) ** 2).mean().backward()
        outs.append(out.detach())
    grads = {}
    for name, p in net.named_parameters():
        g = p.grad.clone()
        if dist.world_size > 1:
            torch.distributed.all_reduce(g)
            g /= dist.world_size
        grads[name] = g
    return {"out": outs, "grads": grads, "buffers": {k: v.clone() for k, v in net.named_buffers()}}


def _bn_worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed("gloo", DistInfo(rank, WORLD, rank), init_method=f"file://{init_file}")
    try:
        synced = sync_batch_norm(_BNNet(), "cpu")
        assert sum(isinstance(m, CpuSyncBatchNorm) for m in synced.modules()) == 2
        torch.save({"synced": _bn_step(synced, dist), "plain": _bn_step(_BNNet(), dist)},
                   f"{out_file}.{rank}")
        barrier(dist)
    finally:
        cleanup_distributed()


def test_synced_batch_norm_over_two_processes_is_batch_norm_over_the_global_batch(tmp_path):
    mp.start_processes(_bn_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=WORLD,
                       join=True, start_method="spawn")
    ranks = [torch.load(f"{tmp_path / 'out'}.{r}") for r in range(WORLD)]
    ref = _bn_step(_BNNet(), DistInfo())
    close = dict(rtol=1e-4, atol=1e-5)
    for step in range(2):
        out = torch.cat([r["synced"]["out"][step] for r in ranks])  # [8, 3]
        assert torch.allclose(out, ref["out"][step], **close), step
        # the control: each process normalising with its own half's statistics differs
        plain = torch.cat([r["plain"]["out"][step] for r in ranks])
        assert not torch.allclose(plain, ref["out"][step], **close)
    for r in ranks:
        for name, g in ref["grads"].items():  # fc.bias: zero before batch norm, up to rounding
            assert torch.allclose(r["synced"]["grads"][name], g, rtol=1e-4, atol=1e-4), name
        for name, b in ref["buffers"].items():  # running mean/var and counts: the global batch's
            assert torch.allclose(r["synced"]["buffers"][name].double(), b.double(), **close), name


def test_converted_model_keeps_its_state_dict_names():
    net = _BNNet()
    names = list(net.state_dict())
    synced = sync_batch_norm(_BNNet(), "cpu")
    assert list(synced.state_dict()) == names
    with torch.no_grad():  # one process, evaluation: plain batch norm
        x = _bn_batch()[0]
        assert torch.allclose(synced.eval()(x), net.eval()(x))


# ---- whole runs in two spawned processes ---------------------------------------------------

TINY = ["model.image.tower=small_cnn", "model.image.width=16", "model.image.image_size=32",
        "model.text.tower=lstm", "model.text.width=16", "model.text.vocab_size=64",
        "train.epochs=2", "train.tensorboard=false", "train.early_stopping=false", "train.lr=1e-3",
        *NO_DROPOUT]
COUNTED = ("ImageTower", "LSTMTextTower")  # the frozen towers of the sharded extraction below


def _count_rows(counts: dict):
    """A hook on every module: rows each tower encodes without gradients (feature extraction)."""
    def hook(module, args, output):
        name = type(module).__name__
        if name in COUNTED and not torch.is_grad_enabled():
            counts[name] = counts.get(name, 0) + int(output.shape[0])
    return torch.nn.modules.module.register_module_forward_hook(hook)


def _train_worker(rank: int, init_file: str, data: str, out: str, sets: list, seen_file: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed("gloo", DistInfo(rank, WORLD, rank), init_method=f"file://{init_file}")
    counts: dict = {}
    handle = _count_rows(counts)
    try:
        with recorded_validation() as validations:
            train(data, out, overrides=sets, progress=False, dist=dist)
        torch.save({"counts": counts, "validations": validations}, f"{seen_file}.{rank}")
    finally:
        handle.remove()
        cleanup_distributed()


def _spawn_run(tmp_path, data, name: str, sets: list) -> tuple[list[dict], list]:
    """Rows each process's towers encoded, and the validations of rank 0 (the one that logs)."""
    args = (str(tmp_path / f"{name}.init"), str(data), str(tmp_path / name), sets,
            str(tmp_path / f"{name}.seen"))
    mp.start_processes(_train_worker, args=args, nprocs=WORLD, join=True, start_method="spawn")
    seen = [torch.load(f"{tmp_path / name}.seen.{r}", weights_only=False) for r in range(WORLD)]
    return [s["counts"] for s in seen], seen[0]["validations"]


@pytest.fixture()
def one_thread():
    """The reference run uses one thread, like each worker (threads fight on a busy CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _assert_same_validations(ddp: list, one: list, tol: float, min_clear: float) -> None:
    """Every epoch's validation: the same pairs, scores within ``tol``, clear ranks equal."""
    assert len(ddp) == len(one) == 2
    for (img, txt, t2i), (img1, txt1, t2i1) in zip(ddp, one):
        np.testing.assert_array_equal(t2i, t2i1)
        assert_same_retrieval((img, txt), (img1, txt1), t2i, tol, min_clear=min_clear)


def test_trainable_batch_norm_tower_with_mlp_heads_matches_one_process(tmp_path, shapes_dir, one_thread):
    sets = TINY + ["model.head=mlp", "model.head_dropout=0", "model.head_hidden=32"]
    _, ddp_validations = _spawn_run(tmp_path, shapes_dir, "ddp", sets + ["train.batch_size=16"])
    with recorded_validation() as validations:
        train(shapes_dir, tmp_path / "one", overrides=sets + ["train.batch_size=32"], progress=False)
    # towers trained from scratch for one epoch still score many items alike (about half the
    # caption queries are within 2e-6 of a competitor), so the tolerance is the tight one these
    # runs allow: scores differ by about 5e-8 (the gradient's summation order, see the docstring)
    tol = 1e-6
    _assert_same_epochs(tmp_path / "ddp", tmp_path / "one", validations, loss_tol=2e-4, tol=tol)
    _assert_same_validations(ddp_validations, validations, tol, min_clear=0.4)
    weights = [load_file(tmp_path / run / "model_last.safetensors") for run in ("ddp", "one")]
    bn = [k for k in weights[1] if k.startswith("image_tower.") and k.endswith("running_mean")]
    assert bn and weights[0].keys() == weights[1].keys()
    for k in bn:  # running statistics gathered over the global batch, as one process sees it
        assert torch.allclose(weights[0][k], weights[1][k], rtol=1e-3, atol=1e-4), k


def _split_images(run) -> list[str]:
    return [ln for s in ("train", "val") for ln in (run / "splits" / f"{s}.txt").read_text().split()]


def _cache_contents(root, keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per fingerprint folder: which of ``keys`` it holds, and their features."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        cache = FeatureCache(root, folder.name)
        held = [k for k in keys if k not in set(cache.missing(keys))]
        if held:
            out[folder.name] = dict(zip(held, cache.get(held)))
    return out


def test_sharded_feature_extraction_fills_one_cold_cache(tmp_path, shapes_dir, one_thread):
    # pretrained image features: a random frozen small_cnn's outputs are about 1e-5 long, so
    # behind a linear head (its bias) every image embeds alike and each caption query is a
    # tie between all images, decided by the last bits
    sets = TINY + ["model.image.tower=efficientnet_lite0", "model.image.image_size=64",
                   "model.image.freeze=frozen", "model.text.freeze=frozen", "model.head=linear",
                   "train.batch_size=16"]
    counts, ddp_validations = _spawn_run(tmp_path, shapes_dir, "ddp",
                                         sets + [f"cache.dir={tmp_path / 'cache2'}"])
    single: dict = {}
    handle = _count_rows(single)
    try:
        with recorded_validation() as validations:
            train(shapes_dir, tmp_path / "one", progress=False,
                  overrides=sets[:-1] + ["train.batch_size=32", f"cache.dir={tmp_path / 'cache1'}"])
    finally:
        handle.remove()
    images = _split_images(tmp_path / "one")
    assert images == _split_images(tmp_path / "ddp")
    with open(shapes_dir / "captions.txt", newline="") as f:
        captions = sorted({r["caption"] for r in csv.DictReader(f) if r["image"] in set(images)})
    n = {"ImageTower": len(images), "LSTMTextTower": len(captions)}
    for tower, total in n.items():
        assert single[tower] == total  # one process encodes each item once
        shares = sorted(c[tower] for c in counts)
        assert sum(shares) == total and shares[1] - shares[0] <= 1, (tower, shares)  # half each
    keys = [sha256_file(shapes_dir / "images" / i) for i in images] + [text_key(c) for c in captions]
    merged = _cache_contents(tmp_path / "cache2", keys)
    alone = _cache_contents(tmp_path / "cache1", keys)
    assert merged.keys() == alone.keys() and len(merged) == 2  # same towers: one image, one text
    assert sorted(len(v) for v in merged.values()) == sorted(n.values())  # complete
    for fp, feats in merged.items():
        # each process encodes its share in batches of other items than one process's batches:
        # a tower's output for an item is the same only up to rounding when the matrix shapes
        # (the batch) change, as the kernel a matrix product runs may depend on them
        assert feats.keys() == alone[fp].keys()
        for k, v in feats.items():
            np.testing.assert_allclose(v, alone[fp][k], rtol=1e-5, atol=1e-6)
    _assert_same_epochs(tmp_path / "ddp", tmp_path / "one", validations, loss_tol=2e-4)
    _assert_same_validations(ddp_validations, validations, SCORE_TOL, min_clear=0.8)
