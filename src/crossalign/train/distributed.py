"""Distributed state, passed in explicitly (never looked up deep inside).

:func:`init_distributed` starts the process group once at the top of a run (torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) and returns
the :class:`DistInfo` that the loop hands to losses and metrics. One process needs no
process group: every helper here is a no-op when ``world_size`` is 1.

:func:`sync_batch_norm` makes the batch-norm layers of a tower that trains compute their
statistics over the global batch, so N processes normalise like one process holding
the N local batches (torch's ``SyncBatchNorm`` on GPUs, :class:`CpuSyncBatchNorm` on CPUs,
where torch's refuses to run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from crossalign.errors import ConfigError

__all__ = [
    "CpuSyncBatchNorm",
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup_distributed",
    "dist_info_from_env",
    "init_distributed",
    "is_dist_ready",
    "has_batch_norm",
    "sync_batch_norm",
]


@dataclass(frozen=True)
class DistInfo:
    """Who this process is among how many."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Read torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process otherwise."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def is_dist_ready() -> bool:
    """True when a default process group is up (torch.distributed built and initialised)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed(backend: str = "auto", info: DistInfo | None = None,
                     init_method: str = "env://") -> DistInfo:
    """Join the process group of a multi-process run; a no-op for one process.

    Args:
        backend: ``auto`` (nccl when CUDA is available, else gloo), ``nccl`` or ``gloo``.
        info: rank and world size; default: torchrun's environment.
        init_method: how ranks meet (``env://`` reads ``MASTER_ADDR``/``MASTER_PORT``;
            ``tcp://host:port`` or ``file:///path`` also work).

    Returns:
        This process's :class:`DistInfo`.
    """
    info = info or dist_info_from_env()
    if info.world_size == 1 or is_dist_ready():
        return info
    if not torch.distributed.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"unknown distributed backend {backend!r}; available: auto, nccl, gloo")
    if backend == "nccl":
        # one GPU per process: collectives use the current device
        torch.cuda.set_device(info.local_rank)
    torch.distributed.init_process_group(backend, init_method=init_method,
                                         rank=info.rank, world_size=info.world_size)
    return info


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none was started)."""
    if is_dist_ready():
        torch.distributed.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    """Wait for every rank (e.g. before rank 0 reads what all ranks wrote)."""
    if dist.world_size > 1:
        torch.distributed.barrier()


def all_reduce_mean(value: float | torch.Tensor, dist: DistInfo) -> float:
    """Mean of a scalar metric over ranks, as a Python float (a collective: every rank calls it)."""
    if dist.world_size == 1:
        return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    # nccl reduces only CUDA tensors; gloo only CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) \
        if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    t = torch.as_tensor(value, dtype=torch.float64, device=device).detach().clone().reshape(())
    torch.distributed.all_reduce(t)
    return float(t) / dist.world_size


# ---- batch norm over the global batch -----------------------------------------------------

class _GlobalSum(torch.autograd.Function):
    """Sum over ranks that gradients flow through: the backward sums the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    return _GlobalSum.apply(t)


class CpuSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch, over gloo.

    torch's ``SyncBatchNorm`` runs on GPUs only. This one does the same on any device with
    two differentiable all-reduces (the mean, then the variance about it), so the
    gradients of every rank's loss reach the statistics as with one process. Evaluation,
    and a single process, use plain batch norm. A timm ``BatchNormAct2d`` keeps its
    ``drop`` and ``act``, applied after the normalisation as there.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a [batch, channels, ...] input, got {x.dim()}D")

    def _post(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("drop", "act"):
            if name in self._modules:
                x = self._modules[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist_ready() and torch.distributed.get_world_size() > 1):
            return self._post(super().forward(x))
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))  # all but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        torch.distributed.all_reduce(count)
        count = float(count)  # elements per channel over the global batch
        mean = _global_sum(x.sum(dims)) / count  # [channels]
        var = _global_sum(((x - mean.view(shape)) ** 2).sum(dims)) / count  # biased, as BN normalises
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * count / max(count - 1, 1))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return self._post(y)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased_var.to(self.running_var.dtype), alpha=m)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same parameters
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():  # also a BatchNormAct2d's drop and act
        out.add_module(name, _to_cpu_sync(child))
    return out


def has_batch_norm(module: nn.Module) -> bool:
    """True when ``module`` holds a batch-norm layer."""
    return any(isinstance(m, _BatchNorm) for m in module.modules())


def sync_batch_norm(module: nn.Module, device: str) -> nn.Module:
    """``module`` with every batch-norm layer computing its statistics over all processes.

    Parameters and running statistics are shared with the layers replaced, and the names in
    the state dict stay the same, so a run trained this way loads into a plain model.
    Call it before wrapping in DistributedDataParallel and before building the optimizer.
    """
    if device.startswith("cuda"):
        # timm's converter: torch's would turn timm's BatchNormAct2d into a plain SyncBatchNorm
        # and drop its activation
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    return _to_cpu_sync(module)
