"""Learning-rate schedules: cosine with linear warm-up (per step) or ReduceLROnPlateau (per epoch)."""

from __future__ import annotations

import math

import torch

from crossalign.errors import ConfigError

__all__ = ["make_scheduler", "Schedule"]


class Schedule:
    """One interface over both kinds: ``after_step()`` each optimizer step, ``after_epoch(score)``."""

    def __init__(self, opt: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
                 min_lr_ratio: float, plateau_factor: float, plateau_patience: int) -> None:
        self.kind = kind
        self.inner: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
        if kind == "cosine":
            def factor(step: int) -> float:
                if step < warmup_steps:
                    return (step + 1) / max(1, warmup_steps)
                progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
                return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

            self.inner = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        elif kind == "plateau":
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=plateau_factor, patience=plateau_patience)
        elif kind == "none":
            self.inner = None
        else:
            raise ConfigError(f"unknown scheduler {kind!r}; use cosine, plateau or none")

    def after_step(self) -> None:
        if self.kind == "cosine":
            self.inner.step()

    def after_epoch(self, score: float) -> None:
        if self.kind == "plateau":
            self.inner.step(score)

    def state_dict(self) -> dict | None:
        if self.inner is None:
            return None
        sd = dict(self.inner.state_dict())
        sd.pop("lr_lambdas", None)  # functions are rebuilt from the config, not stored
        return sd

    def load_state_dict(self, sd: dict | None) -> None:
        if self.inner is not None and sd:
            if self.kind == "cosine":
                sd = {**sd, "lr_lambdas": [None] * len(self.inner.lr_lambdas)}
            self.inner.load_state_dict(sd)


def make_scheduler(opt: torch.optim.Optimizer, cfg, steps_per_epoch: int) -> Schedule:
    """Build the schedule named by ``cfg.scheduler`` (a TrainConfig)."""
    total = max(1, steps_per_epoch * cfg.epochs)
    return Schedule(opt, cfg.scheduler, total, cfg.warmup_steps, cfg.min_lr_ratio,
                    cfg.plateau_factor, cfg.plateau_patience)
