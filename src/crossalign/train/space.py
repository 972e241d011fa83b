"""The recipe search space: what is cheap to try once a frozen tower's features are cached.

A point of the space is a dict of the parameters below; :func:`recipe` turns it into a whole
:class:`~crossalign.config.RunConfig` on top of the user's base config, and :func:`base_params`
gives the base config as a point (the search tries it first, so the recipe it chooses scores
at least as well on the held-out data as the one the user would have trained anyway).

==============  ====================================================  ==========================
parameter       range                                                 config key
==============  ====================================================  ==========================
tower           the towers listed (``--auto-towers``)                 model.image.tower
image_dropout   0 - 0.7                                               model.image.dropout
text_dropout    0 - 0.5                                               model.text.dropout
lr              1e-4 - 1e-2 (log)                                     train.lr
weight_decay    1e-3 - 0.5 (log)                                      train.weight_decay
batch_size      128, 256, 512, 1024, 2048, 4096                       train.batch_size
scheduler       cosine, none                                          train.scheduler
epochs          min_epochs - max_epochs (log)                         train.epochs
scale_init      5 - 50 (log): the initial 1 / temperature             model.logit_scale_init (clip)
                                                                      or loss.siglip_scale_init
learn_scale     true, false                                           model.learn_logit_scale
head            linear, mlp                                           model.head
loss            clip (InfoNCE), siglip                                loss.name
ranking         plain, qbnorm                                         evaluate.ranking
qb_beta         5 - 50 (log), with qbnorm only                        evaluate.qb_beta
==============  ====================================================  ==========================

A value of the base config outside a categorical list joins the list; a parameter the search is
told to hold (``fix="ranking,loss"``) takes the base config's value in every trial. The plateau schedule
is left out: its steps follow the validation score, which differs between folds and the final
fit. The recipe trains for exactly ``epochs`` epochs (``train.early_stopping`` off) and keeps the
last of them as ``model_best`` (``train.keep: last``), since the epoch count is part of what is
chosen.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

from crossalign.config import RunConfig

__all__ = ["PARAMS", "ANCHORS", "CONFIG_KEYS", "suggest", "recipe", "base_params", "anchor_params", "params_named"]

PARAMS = ("tower", "image_dropout", "text_dropout", "lr", "weight_decay", "batch_size", "scheduler",
          "epochs", "scale_init", "learn_scale", "head", "loss", "ranking", "qb_beta")

_FLOATS = {  # name -> (low, high, log)
    "image_dropout": (0.0, 0.7, False),
    "text_dropout": (0.0, 0.5, False),
    "lr": (1e-4, 1e-2, True),
    "weight_decay": (1e-3, 0.5, True),
    "scale_init": (5.0, 50.0, True),
    "qb_beta": (5.0, 50.0, True),
}
_CHOICES = {
    "batch_size": [128, 256, 512, 1024, 2048, 4096],
    "scheduler": ["cosine", "none"],
    "learn_scale": [True, False],
    "head": ["linear", "mlp"],
    "loss": ["clip", "siglip"],
    "ranking": ["plain", "qbnorm"],
}


def _current(base: RunConfig) -> dict[str, Any]:
    """The base config's value of every parameter."""
    siglip = base.loss.name == "siglip"
    return {
        "tower": base.model.image.tower, "image_dropout": base.model.image.dropout,
        "text_dropout": base.model.text.dropout, "lr": base.train.lr, "weight_decay": base.train.weight_decay,
        "batch_size": base.train.batch_size, "scheduler": base.train.scheduler, "epochs": base.train.epochs,
        "scale_init": base.loss.siglip_scale_init if siglip else base.model.logit_scale_init,
        "learn_scale": base.model.learn_logit_scale, "head": base.model.head, "loss": base.loss.name,
        "ranking": base.evaluate.ranking, "qb_beta": base.evaluate.qb_beta,
    }


def _choices(name: str, base: RunConfig) -> list:
    options = list(_CHOICES[name])
    value = _current(base)[name]
    if name == "scheduler" and value == "plateau":
        return options
    return options if value in options else options + [value]


def _ranked_by(p: dict[str, Any], base: RunConfig) -> str:
    return p.get("ranking", base.evaluate.ranking)


def suggest(trial, base: RunConfig, towers: Sequence[str], min_epochs: int, max_epochs: int,
            fix: Sequence[str] = ()) -> dict[str, Any]:
    """Draw one point from an optuna ``trial``, always in the same order (a seeded search repeats).

    Parameters named in ``fix`` are not searched: the recipe keeps the base config's value.
    """
    p: dict[str, Any] = {}
    if len(towers) > 1:
        p["tower"] = trial.suggest_categorical("tower", list(towers))
    for name in PARAMS[1:]:
        if name in fix or (name == "qb_beta" and _ranked_by(p, base) != "qbnorm"):
            continue
        if name == "epochs":
            p[name] = trial.suggest_int(name, min_epochs, max_epochs, log=True)
        elif name in _FLOATS:
            low, high, log = _FLOATS[name]
            p[name] = trial.suggest_float(name, low, high, log=log)
        else:
            p[name] = trial.suggest_categorical(name, _choices(name, base))
    return p


def base_params(base: RunConfig, towers: Sequence[str], min_epochs: int, max_epochs: int,
                fix: Sequence[str] = ()) -> dict[str, Any]:
    """The base config as a point of the space (values clipped into the ranges)."""
    cur = _current(base)
    p: dict[str, Any] = {}
    if len(towers) > 1:
        p["tower"] = cur["tower"] if cur["tower"] in towers else towers[0]
    for name in PARAMS[1:]:
        if name in fix or (name == "qb_beta" and _ranked_by(p, base) != "qbnorm"):
            continue
        value = cur[name]
        if name == "epochs":
            value = min(max(int(value), min_epochs), max_epochs)
        elif name in _FLOATS:
            low, high, _ = _FLOATS[name]
            value = min(max(float(value), low), high)
        elif name == "scheduler" and value not in _CHOICES["scheduler"]:
            value = "cosine"
        p[name] = value
    return p


# Recipes tried right after the base config, before the sampler proposes its own: the fixed
# recipes that won on some of the data sets measured (bench/RESULTS.md, "Recipes on data of
# several sizes"), so the search always weighs them on the user's own held-out data.
ANCHORS = (
    # no feature dropout and no schedule, stopped at the best epoch: small data with one caption
    {"image_dropout": 0.0, "text_dropout": 0.0, "scheduler": "none"},
    # many negatives: batch 4096 at a ten times higher rate (Flickr8k's best head recipe)
    {"batch_size": 4096, "lr": 2e-3, "weight_decay": 0.1, "scheduler": "cosine"},
)


def anchor_params(base: RunConfig, towers: Sequence[str], min_epochs: int, max_epochs: int,
                  fix: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The :data:`ANCHORS` as points on top of the base config; a fixed parameter keeps the
    base value, and an anchor that comes out equal to the base (or another anchor) is dropped.
    An unscheduled anchor runs up to ``max_epochs`` and is scored at its best epoch."""
    first = base_params(base, towers, min_epochs, max_epochs, fix)
    out: list[dict[str, Any]] = []
    for anchor in ANCHORS:
        point = {**first, **{k: v for k, v in anchor.items() if k in first}}
        if point.get("scheduler") == "none" and "epochs" in point:
            point["epochs"] = max_epochs
        if point != first and point not in out:
            out.append(point)
    return out


# the config keys each parameter sets (recipe() sets train.early_stopping and train.keep too)
CONFIG_KEYS = {
    "tower": ("model.image.tower",), "image_dropout": ("model.image.dropout",),
    "text_dropout": ("model.text.dropout",), "lr": ("train.lr",), "weight_decay": ("train.weight_decay",),
    "batch_size": ("train.batch_size",), "scheduler": ("train.scheduler", "train.warmup_steps"),
    "epochs": ("train.epochs", "train.early_stopping", "train.patience", "train.keep"),
    "scale_init": ("model.logit_scale_init", "loss.siglip_scale_init"),
    "learn_scale": ("model.learn_logit_scale",), "head": ("model.head",), "loss": ("loss.name",),
    "ranking": ("evaluate.ranking",), "qb_beta": ("evaluate.qb_beta",),
}


def params_named(overrides: Sequence[str]) -> list[str]:
    """The parameters of the space whose config keys ``--set KEY=VALUE`` overrides name."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    return [p for p in PARAMS if keys & set(CONFIG_KEYS[p])]


def recipe(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The whole run config of a point: the base config with the point's values set."""
    cfg = copy.deepcopy(base)
    p = {**_current(base), **params}
    cfg.model.image.tower = str(p["tower"])
    cfg.model.image.dropout = float(p["image_dropout"])
    cfg.model.text.dropout = float(p["text_dropout"])
    cfg.train.lr = float(p["lr"])
    cfg.train.weight_decay = float(p["weight_decay"])
    cfg.train.batch_size = int(p["batch_size"])
    cfg.train.scheduler = str(p["scheduler"])
    cfg.train.epochs = int(p["epochs"])
    cfg.train.early_stopping = False
    cfg.train.keep = "last"  # model_best is the epoch count that was scored
    cfg.model.learn_logit_scale = bool(p["learn_scale"])
    cfg.model.head = str(p["head"])
    cfg.loss.name = str(p["loss"])
    if cfg.loss.name == "siglip":
        cfg.loss.siglip_scale_init = float(p["scale_init"])
    else:
        cfg.model.logit_scale_init = float(p["scale_init"])
    cfg.evaluate.ranking = str(p["ranking"])
    cfg.evaluate.qb_beta = float(p["qb_beta"])
    if not math.isfinite(cfg.train.lr) or cfg.train.epochs < 1:
        raise ValueError(f"recipe: not a point of the space: {params}")
    return cfg
