"""Who this process is among how many, passed in explicitly (never looked up deep inside).

:func:`init_distributed` starts the process group once where a command starts (torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) and returns
the :class:`DistInfo` that training, feature extraction, losses and metrics are handed. One
process needs no process group: every helper here is a no-op when ``world_size`` is 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from crossalign.errors import ConfigError

__all__ = ["DistInfo", "all_reduce_mean", "barrier", "cleanup_distributed", "dist_info_from_env",
           "init_distributed", "is_dist_ready"]


@dataclass(frozen=True)
class DistInfo:
    """Who this process is among how many."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, dist: DistInfo | None = None) -> str:
    """``auto`` is ``cuda`` where a GPU is, else ``cpu``; ``cuda`` in a process of several is
    the process's own GPU (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist is not None and dist.world_size > 1:
        return f"cuda:{dist.local_rank}"
    return name


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
