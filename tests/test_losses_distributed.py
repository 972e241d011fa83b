"""Two gloo processes on the CPU against one process holding the global batch.

Each rank runs a small shared linear model (same seed) on its half of a fixed global
batch, computes the loss, backpropagates and averages the parameter gradients over
ranks (what DDP does). With ``gather_with_grad`` the loss (mean over ranks) and the
averaged gradients must match the single-process ones; without it the loss still does,
and the gradients differ the way the docstring of ``crossalign.losses`` says.
"""

from __future__ import annotations

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from crossalign.losses import ClipLoss, SigLipLoss
from crossalign.distributed import (DistInfo, all_reduce_mean, barrier, cleanup_distributed,
                                    init_distributed)

WORLD = 2
IDS = torch.tensor([0, 1, 2, 3, 0, 4, 2, 5])  # images 0 and 2 appear on both ranks
LOCAL = len(IDS) // WORLD
CONFIGS = [(name, with_grad, local, True) for name in ("clip", "siglip")
           for with_grad in (True, False) for local in (False, True)]
CONFIGS.append(("clip", True, True, False))  # no image ids: only the own pair is positive
ENCODERS = ("img.weight", "img.bias", "txt.weight", "txt.bias")


class _Tiny(torch.nn.Module):
    """Two linear heads plus a learnable log-scale and bias, identical on every rank."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.img = torch.nn.Linear(6, 5)
        self.txt = torch.nn.Linear(6, 5)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.3))
        self.bias = torch.nn.Parameter(torch.tensor(-1.5))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(int(IDS.max()) + 1, 6, generator=g)
    return images[IDS], torch.randn(len(IDS), 6, generator=g)  # [8, 6] each, same image -> same row


def _run(config: tuple, dist: DistInfo) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean loss over ranks and rank-averaged parameter gradients for one configuration."""
    name, with_grad, local, use_ids = config
    cls = ClipLoss if name == "clip" else SigLipLoss
    kwargs = dict(margin=0.1) if name == "clip" else {}
    loss_fn = cls(dist=dist, gather_with_grad=with_grad, local_loss=local, **kwargs)
    rows = slice(dist.rank * LOCAL, (dist.rank + 1) * LOCAL) if dist.world_size > 1 else slice(None)
    model = _Tiny()
    x_img, x_txt = _inputs()
    img = F.normalize(model.img(x_img[rows]), dim=-1)  # [local, 5]
    txt = F.normalize(model.txt(x_txt[rows]), dim=-1)
    ids = IDS[rows] if use_ids else None
    loss = loss_fn(img, txt, model.log_scale.exp(), ids, model.bias)
    loss.backward()
    grads = {}
    for pname, p in model.named_parameters():
        if p.grad is None:  # the bias when the loss is clip
            p.grad = torch.zeros_like(p)
        if dist.world_size > 1:
            torch.distributed.all_reduce(p.grad)
            p.grad /= dist.world_size
        grads[pname] = p.grad
    return all_reduce_mean(loss, dist), grads


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed("gloo", DistInfo(rank, WORLD, rank), init_method=f"file://{init_file}")
    try:
        results = {config: _run(config, dist) for config in CONFIGS}
        if dist.is_main:
            torch.save(results, out_file)
        barrier(dist)
    finally:
        cleanup_distributed()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=1e-5)


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD,
                       join=True, start_method="spawn")
    results = torch.load(out)
    for config in CONFIGS:
        loss, grads = results[config]
        ref_loss, ref_grads = _run(config, DistInfo())
        with_grad, local = config[1], config[2]
        assert abs(loss - ref_loss) < 1e-5, config  # the value is global in every mode
        if with_grad:
            for pname, g in ref_grads.items():
                assert _close(grads[pname], g), (config, pname)
            continue
        # the replicated temperature and bias always get their global gradient
        assert _close(grads["log_scale"], ref_grads["log_scale"]), config
        assert _close(grads["bias"], ref_grads["bias"]), config
        if not local:  # encoders get 1 / world_size of the global gradient
            for pname in ENCODERS:
                assert _close(grads[pname] * WORLD, ref_grads[pname]), (config, pname)
        else:  # the terms where this rank's texts are columns of others' rows are missing
            assert not _close(grads["txt.weight"], ref_grads["txt.weight"]), config
