"""Batch norm over the global batch of a multi-process run (the process group itself is
:mod:`crossalign.distributed`).

:func:`sync_batch_norm` makes the batch-norm layers of a tower that trains compute their
statistics over the global batch, so N processes normalise like one process holding
the N local batches (torch's ``SyncBatchNorm`` on GPUs, :class:`CpuSyncBatchNorm` on CPUs,
where torch's refuses to run).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from crossalign.distributed import is_dist_ready

__all__ = ["CpuSyncBatchNorm", "has_batch_norm", "sync_batch_norm"]


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
