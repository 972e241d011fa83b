"""The dual encoder: two towers, a head on each into one space, and a logit scale.

Models only encode; the loss lives in :mod:`crossalign.losses`. ``project_*`` takes tower
outputs (which may come from the feature cache), ``encode_*`` takes raw inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crossalign.config import ModelConfig

__all__ = ["DualEncoder", "make_head", "apply_freeze", "build_model", "is_frozen"]


def make_head(in_dim: int, cfg: ModelConfig) -> nn.Module:
    """Projection from a tower's width into the shared space."""
    if cfg.head == "linear":
        return nn.Linear(in_dim, cfg.embed_dim)
    if cfg.head == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, cfg.head_hidden), nn.GELU(), nn.Dropout(cfg.head_dropout),
            nn.Linear(cfg.head_hidden, cfg.embed_dim),
        )
    if cfg.head == "none":
        if in_dim != cfg.embed_dim:
            raise ValueError(f"head=none needs a tower of width embed_dim={cfg.embed_dim}, got {in_dim}")
        return nn.Identity()
    raise ValueError(f"unknown head {cfg.head!r}; use linear, mlp or none")


def is_frozen(spec: str) -> bool:
    return spec == "frozen"


def apply_freeze(tower: nn.Module, spec: str) -> None:
    """``frozen``: nothing trains; ``trainable``: everything; ``last:N``: the last N blocks
    (and whatever follows them, such as a final norm) train."""
    if spec == "trainable":
        tower.requires_grad_(True)
        return
    tower.requires_grad_(False)
    if spec == "frozen":
        return
    if not spec.startswith("last:"):
        raise ValueError(f"freeze must be frozen, trainable or last:N, got {spec!r}")
    n = int(spec.split(":", 1)[1])
    blocks = tower.blocks()
    if not 0 <= n <= len(blocks):
        raise ValueError(f"last:{n} asks for more blocks than the tower has ({len(blocks)})")
    if n == 0:
        return
    first = blocks[len(blocks) - n]
    # parameters registered after the first unfrozen block (in module order) train too
    seen_first = False
    block_params = {id(p) for b in blocks[: len(blocks) - n] for p in b.parameters()}
    first_params = {id(p) for p in first.parameters()}
    for p in tower.parameters():
        if id(p) in first_params:
            seen_first = True
        if seen_first and id(p) not in block_params:
            p.requires_grad_(True)


class DualEncoder(nn.Module):
    """Image tower + text tower, each with a head, L2-normalised, and a learnable logit scale."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_head = make_head(image_tower.width, cfg)
        self.text_head = make_head(text_tower.width, cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)),
                                        requires_grad=cfg.learn_logit_scale)
        apply_freeze(self.image_tower, cfg.image.freeze)
        apply_freeze(self.text_tower, cfg.text.freeze)

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        # a frozen tower keeps its batch-norm statistics and dropout off
        for tower, spec in ((self.image_tower, self.cfg.image.freeze), (self.text_tower, self.cfg.text.freeze)):
            if is_frozen(spec):
                tower.eval()
        return self

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at ``logit_scale_max`` (CLIP's 100)."""
        return self.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features), dim=-1)  # [batch, embed_dim]

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features), dim=-1)  # [batch, embed_dim]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_tower(pixels))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project_text(self.text_tower(input_ids, attention_mask))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(pixels), self.encode_text(input_ids, attention_mask), self.scale()


def build_model(cfg: ModelConfig) -> DualEncoder:
    """Create both towers from the registry and wrap them."""
    from crossalign.models.registry import create

    img_kw = {"pretrained": cfg.image.pretrained, "checkpoint": cfg.image.checkpoint}
    txt_kw = {"pretrained": cfg.text.pretrained, "checkpoint": cfg.text.checkpoint,
              "pooling": cfg.text.pooling, "max_tokens": cfg.text.max_tokens}
    image_tower = create(cfg.image.tower, **img_kw)
    text_tower = create(cfg.text.tower, **txt_kw)
    return DualEncoder(image_tower, text_tower, cfg)
