"""Distributed state, passed in explicitly (never looked up deep inside)."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DistInfo", "dist_info_from_env"]


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
