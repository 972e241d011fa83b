"""The dual encoder: two towers, a head on each into one space, and a logit scale.

Models only encode; the loss lives in :mod:`crossalign.losses`. ``project_*`` takes tower
outputs (which may come from the feature cache), ``encode_*`` takes raw inputs.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from crossalign.errors import ConfigError
from crossalign.config import ModelConfig

log = logging.getLogger("crossalign.models")

__all__ = ["DualEncoder", "make_head", "apply_freeze", "lock_frozen_modules", "build_model", "build_towers",
           "wrap_towers", "is_frozen", "n_last_blocks"]


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
            raise ConfigError(f"head=none needs a tower of width embed_dim={cfg.embed_dim}, got {in_dim}")
        return nn.Identity()
    raise ConfigError(f"unknown head {cfg.head!r}; use linear, mlp or none")


def _feature_dropout(p: float, option: str) -> nn.Module:
    if not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"{option} must be in [0, 1), got {p!r}")
    return nn.Dropout(float(p)) if p else nn.Identity()


def is_frozen(spec: str) -> bool:
    """True for ``frozen`` (the tower never trains; its outputs can be cached)."""
    return spec == "frozen"


def n_last_blocks(spec: str) -> int | None:
    """N of a ``last:N`` spec, else None."""
    return int(spec.split(":", 1)[1]) if spec.startswith("last:") else None


def apply_freeze(tower: nn.Module, spec: str) -> None:
    """``frozen``: nothing trains; ``trainable``: everything; ``last:N``: the last N blocks
    (and whatever follows them, such as a final norm) train."""
    if spec == "trainable":
        tower.requires_grad_(True)
        return
    tower.requires_grad_(False)
    if spec == "frozen":
        return
    try:
        n = n_last_blocks(spec)
    except ValueError:
        n = None
    if n is None:
        raise ConfigError(f"freeze must be frozen, trainable or last:N (or auto in the config), got {spec!r}")
    if hasattr(tower, "parts"):  # towers side by side: the last N blocks of each
        if not 0 <= n <= len(tower.blocks()):
            raise ConfigError(f"last:{n} asks for more blocks than the shortest tower of {tower.name} "
                              f"has ({len(tower.blocks())})")
        for part in tower.parts:
            apply_freeze(part, spec)
        return
    blocks = tower.blocks()
    if not 0 <= n <= len(blocks):
        raise ConfigError(f"last:{n} asks for more blocks than the tower has ({len(blocks)})")
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
    for p in getattr(tower, "tail_parameters", list)():  # after the blocks, registered before them
        p.requires_grad_(True)


def lock_frozen_modules(module: nn.Module) -> None:
    """Put every submodule whose parameters are all frozen in eval mode, recursively.

    Batch-norm statistics of frozen blocks stay as loaded, and dropout in frozen blocks
    (an embedding layer, say) is off, so a partly trained tower's frozen part computes
    what it would compute for a cache. Parameter-free modules (activations, dropout
    inside a trainable block) keep the mode they are given.
    """
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        elif params:
            lock_frozen_modules(child)


class DualEncoder(nn.Module):
    """Image tower + text tower, each with a head, L2-normalised, and a learnable logit scale."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, cfg: ModelConfig,
                 logit_bias_init: float | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_tower = image_tower
        self.text_tower = text_tower
        # sides whose frozen tower holds weights another run trained (a warm start): checkpoints
        # store them rather than rebuild them from the tower's source
        self.weights_from_run: set[str] = set()
        self.image_head = make_head(image_tower.width, cfg)
        self.text_head = make_head(text_tower.width, cfg)
        # feature dropout in front of each head (no weights: checkpoints keep their keys)
        self.image_drop = _feature_dropout(cfg.image.dropout, "model.image.dropout")
        self.text_drop = _feature_dropout(cfg.text.dropout, "model.text.dropout")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)),
                                        requires_grad=cfg.learn_logit_scale)
        # SigLIP's learnable bias on the logits; None for losses that have none
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias_init))) if logit_bias_init is not None else None
        if "auto" in (cfg.image.freeze, cfg.text.freeze):  # built directly, not by build_model
            _resolve_freeze(cfg)
        apply_freeze(self.image_tower, cfg.image.freeze)
        apply_freeze(self.text_tower, cfg.text.freeze)

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        # a frozen tower, and the frozen part of a partly trained one, keeps its batch-norm
        # statistics and dropout off
        for tower, spec in ((self.image_tower, self.cfg.image.freeze), (self.text_tower, self.cfg.text.freeze)):
            if is_frozen(spec) or not any(p.requires_grad for p in tower.parameters()):
                tower.eval()
            elif mode:
                lock_frozen_modules(tower)
        if mode and self.cfg.image.bn_stats == "keep":
            for m in self.image_tower.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at ``logit_scale_max`` (CLIP's 100)."""
        return self.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(self.image_drop(features)), dim=-1)  # [batch, embed_dim]

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(self.text_drop(features)), dim=-1)  # [batch, embed_dim]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_tower(pixels))

    def encode_text(self, **tokens: torch.Tensor) -> torch.Tensor:
        """Embed the output of ``text_tower.tokenize`` (``input_ids``, ``attention_mask``, ...)."""
        return self.project_text(self.text_tower(**tokens))

    def forward(self, pixels: torch.Tensor,
                **tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(pixels), self.encode_text(**tokens), self.scale()


def _resolve_freeze(cfg: ModelConfig) -> None:
    from crossalign.models.registry import model_info, resolve_freeze

    for side in ("image", "text"):
        tcfg = getattr(cfg, side)
        tcfg.freeze = resolve_freeze(tcfg.tower, tcfg.freeze)
        if model_info(tcfg.tower).scratch and is_frozen(tcfg.freeze):
            log.warning("%s tower %s is trained from scratch but freeze=frozen: it stays random", side, tcfg.tower)


def wrap_towers(image_tower: nn.Module, text_tower: nn.Module, cfg: ModelConfig,
                start: tuple[float, float | None] | None = None) -> DualEncoder:
    """Heads and logit scale around two built towers.

    ``start`` is the logit scale and bias (None: no bias) to start from, plain numbers that
    ``config.logit_start`` settles from the run's loss (default: ``cfg.logit_scale_init``, no
    bias). A pretrained model starts from its checkpoint's scale (``cfg.logit_scale_init``, set
    by ``build_pretrained``) and from its bias when the checkpoint learned one (SigLIP). Several models
    may share frozen towers (recipe search)."""
    import dataclasses

    scale, bias = start if start is not None else (cfg.logit_scale_init, None)
    if cfg.pretrained_model:
        scale = cfg.logit_scale_init
        learned = getattr(image_tower, "pretrained_logit_bias", None)
        bias = learned if learned is not None else bias
    if scale != cfg.logit_scale_init:
        cfg = dataclasses.replace(cfg, logit_scale_init=scale)
    return DualEncoder(image_tower, text_tower, cfg, logit_bias_init=bias)


def build_towers(cfg: ModelConfig, pretrained: dict[str, bool] | None = None) -> tuple[nn.Module, nn.Module]:
    """The image and text towers of ``cfg`` from the registry (``freeze: auto`` resolved in place)."""
    from crossalign.models.registry import create

    from crossalign.models.pretrained import build_pretrained, resolve_pretrained

    resolve_pretrained(cfg)
    _resolve_freeze(cfg)
    load = {"image": True, "text": True, **(pretrained or {})}
    if cfg.pretrained_model:
        return build_pretrained(cfg, load)
    img, txt = cfg.image, cfg.text
    img_kw = {"pretrained": img.pretrained and load["image"], "checkpoint": img.checkpoint if load["image"] else "",
              "image_size": img.image_size, "width": img.width}
    txt_kw = {"pretrained": txt.pretrained and load["text"], "checkpoint": txt.checkpoint if load["text"] else "",
              "pooling": txt.pooling, "max_tokens": txt.max_tokens, "chunk_long": txt.chunk_long,
              "vocab_size": txt.vocab_size, "width": txt.width, "layers": txt.layers}
    from crossalign.models.image import apply_channels_last

    image_tower = apply_channels_last(create(cfg.image.tower, **img_kw), img.channels_last)
    text_tower = create(cfg.text.tower, **txt_kw)
    return image_tower, text_tower


def build_model(cfg: ModelConfig, start: tuple[float, float | None] | None = None,
                pretrained: dict[str, bool] | None = None) -> DualEncoder:
    """Create both towers from the registry and wrap them.

    ``freeze: auto`` in ``cfg`` is resolved in place (``trainable`` for from-scratch towers,
    ``frozen`` otherwise), so the config then says what was built.

    Args:
        cfg: the model config.
        start: the logit scale and bias to start from (``config.logit_start(run_config)``).
        pretrained: side ("image" / "text") -> False skips loading pretrained weights that a
            checkpoint will overwrite anyway.
    """
    return wrap_towers(*build_towers(cfg, pretrained), cfg, start)
