"""Every check of a run's settings that needs nothing but the settings: :meth:`crossalign.config.RunConfig.validate`.

A bad value fails when the config resolves (a YAML file, an override, a keyword), before any
data is read or any tower built, with a message naming the setting. What can only be judged
against something built (a tower's width for ``model.head: none``, its block count for
``freeze: last:N``, the data's columns) is checked where it is built.
"""

from __future__ import annotations

import re

from crossalign.errors import ConfigError

__all__ = ["validate", "FIT_ON", "FREEZE"]

# train.fit_on -> the splits the weights learn from
FIT_ON: dict[str, tuple[str, ...]] = {"train": ("train",), "train+val": ("train", "val")}
FREEZE = re.compile(r"^(frozen|trainable|auto|last:\d+)$")
_CHOICES = {
    "data.shard_images": ("reference", "extract"),
    "model.head": ("linear", "mlp", "none"),
    "model.image.bn_stats": ("train", "keep"),
    "model.image.channels_last": ("auto", "true", "false"),
    "model.text.pooling": ("mean", "cls", "pooler"),
    "loss.name": ("clip", "siglip"),
    "train.keep": ("best", "last"),
    "train.fit_on": tuple(FIT_ON),
    "train.precision": ("fp32", "bf16"),
    "train.scheduler": ("none", "cosine", "plateau"),
    "cache.dtype": ("float16", "float32"),
    "evaluate.ranking": ("plain", "qbnorm"),
}
_UNIT = ("augment.crop_prob", "augment.jitter_prob", "augment.grayscale_prob", "augment.flip_prob",
         "augment.text_prob", "augment.synonym_prob", "augment.word_dropout", "train.wise_alpha",
         "train.min_lr_ratio")  # in [0, 1]
_DROPOUT = ("model.image.dropout", "model.text.dropout", "model.head_dropout")  # in [0, 1)
_AT_LEAST = {"train.batch_size": 1, "train.accum_steps": 1, "train.epochs": 0, "train.patience": 1,
             "train.grad_cache": 0, "runtime.eval_batch_size": 1, "runtime.num_workers": 0,
             "train.warmup_steps": 0, "train.checkpoint_every": 0, "train.log_every": 1,
             "model.embed_dim": 1, "model.text.max_tokens": 1, "augment.cached_views": 1,
             "augment.brightness": 0, "augment.contrast": 0, "augment.saturation": 0, "evaluate.qb_k": 1,
             "evaluate.qb_bank": 0, "data.min_image_side": 1, "data.max_pixels": 1}


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _pairs(cfg) -> None:
    for key in ("augment.crop_scale", "augment.crop_ratio"):
        low, high = _get(cfg, key)
        if not 0.0 < low <= high or (key == "augment.crop_scale" and high > 1.0):
            raise ConfigError(f"config: {key} must be two increasing positive numbers, got {low},{high}")
    ratios = cfg.data.split_ratios
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"config: data.split_ratios must be three non-negative fractions summing to 1, "
                          f"got {list(ratios)}")


def _together(cfg) -> None:
    """Settings that are each fine alone and wrong together."""
    t = cfg.train
    if t.fit_on == "train+val" and (t.keep != "last" or t.early_stopping):
        raise ConfigError("config: train.fit_on=train+val trains on the val split, so val cannot pick the "
                          "epoch: set train.keep=last and train.early_stopping=false (the epoch count is the "
                          "one chosen on held-out data)")
    if cfg.loss.name == "siglip" and cfg.loss.margin:
        raise ConfigError("config: loss.margin applies to the clip loss only; set it to 0 for siglip")
    if cfg.model.text.chunk_long and cfg.model.text.freeze.startswith("last:"):
        # the prefix cache keeps one row per caption; a chunked caption has several
        raise ConfigError("config: model.text.chunk_long does not combine with model.text.freeze=last:N; "
                          "use trainable or frozen")
    if t.grad_cache and all(getattr(cfg.model, side).freeze == "frozen" for side in ("image", "text")):
        # (freeze=auto is resolved when the towers are built; the engine checks it there)
        raise ConfigError("config: train.grad_cache runs the towers in chunks, but both towers are "
                          "frozen: only the heads run, over cached features; set train.grad_cache=0 "
                          "(in a staged recipe, set it in the stage whose towers train)")
    if cfg.model.logit_scale_init <= 0 or cfg.model.logit_scale_max < cfg.model.logit_scale_init:
        raise ConfigError(f"config: model.logit_scale_init must be positive and at most model.logit_scale_max, "
                          f"got {cfg.model.logit_scale_init} and {cfg.model.logit_scale_max}")


def validate(cfg) -> None:
    """Raise a ConfigError naming the first setting of ``cfg`` (a RunConfig) that cannot be."""
    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"config: {key} must be one of {', '.join(allowed)}, got {_get(cfg, key)!r}")
    for side in ("image", "text"):
        if not FREEZE.match(str(getattr(cfg.model, side).freeze)):
            raise ConfigError(f"config: model.{side}.freeze must be frozen, trainable, auto or last:N, "
                              f"got {getattr(cfg.model, side).freeze!r}")
    for key in _UNIT:
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"config: {key} must be in [0, 1], got {_get(cfg, key)}")
    for key in _DROPOUT:
        if not 0.0 <= _get(cfg, key) < 1.0:
            raise ConfigError(f"config: {key} must be in [0, 1), got {_get(cfg, key)}")
    if isinstance(cfg.train.grad_cache, bool) or not isinstance(cfg.train.grad_cache, int):
        raise ConfigError(f"config: train.grad_cache must be a whole number of pairs, "
                          f"got {cfg.train.grad_cache!r}")
    for key, low in _AT_LEAST.items():
        if _get(cfg, key) < low:
            raise ConfigError(f"config: {key} must be at least {low}, got {_get(cfg, key)}")
    if not 0.0 <= cfg.augment.hue <= 0.5:
        raise ConfigError(f"config: augment.hue must be in [0, 0.5], got {cfg.augment.hue}")
    if cfg.evaluate.qb_beta <= 0:
        raise ConfigError(f"config: evaluate.qb_beta must be positive, got {cfg.evaluate.qb_beta}")
    _pairs(cfg)
    _together(cfg)
