"""Tower registry: ``register`` a builder under a name, ``create(name, **overrides)`` it.

Names are either registered ones (``efficientnet_lite0``, ``minilm``, ``lstm`` ...) or
prefixed library names: ``timm:<model>`` for any timm image model and ``hf:<name or
folder>`` for any Hugging Face text encoder. Image tower names joined by ``+``
(``efficientnet_lite0+efficientnet_lite2``) build a
:class:`~crossalign.models.image.ConcatTower` of those towers.

The tower contract (what the dual encoder, the feature cache and the training loop rely on):

Every tower
    ``.name`` (str), ``.width`` (int, features per item), ``.modality`` ("image" | "text"),
    ``blocks() -> list[nn.Module]`` (trainable units from input to output, for ``last:N``),
    ``forward_prefix(*inputs, n_last) -> dict[str, Tensor]`` (everything before the last
    ``n_last`` blocks) and ``forward_suffix(prefix, n_last) -> [batch, width]`` (the rest):
    ``forward_suffix(forward_prefix(x, n), n) == forward(x)``; ``.supports_split`` is False
    where the prefix is only the raw input (an architecture the tower cannot cut), so
    caching it saves nothing. The prefix dict's keys are the tower's own business; callers
    hand it back unchanged (slicing every tensor along dim 0 selects items). Under ``last:N``
    the parameters registered after the first of the last N blocks train too (a final norm, a
    projection); a tower whose output parameters are registered before its blocks (a bare
    projection matrix) lists them in ``tail_parameters() -> list[nn.Parameter]``.
Image towers
    ``.data_config`` (``input_size``, ``interpolation``, ``crop_pct``, ``mean``, ``std``, and
    optionally timm's ``crop_mode``: ``squash`` resizes both sides; absent, the shorter side is
    resized and the centre cropped), ``forward(pixels [batch, 3, H, W]) -> [batch, width]``.
Text towers
    ``tokenize(texts) -> dict[str, Tensor]``, ``forward(**tokens) -> [batch, width]``,
    ``preprocess_config() -> dict`` (everything besides the weights that changes outputs).
    The token dict's keys are the tower's own (``input_ids`` and ``attention_mask`` for
    transformers encoders, ``text`` for open_clip's token ids); code that needs those of a
    transformers encoder (the ONNX export, word attributions) checks for them.
    Towers with a vocabulary learned from the training captions also have
    ``fit_vocabulary(texts)``, ``save_extras(run_dir)`` and ``load_extras(run_dir)`` (JSON).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from crossalign.errors import ConfigError

__all__ = ["TowerInfo", "register", "register_join", "create", "list_models", "list_prefixes", "model_info",
           "resolve_freeze", "describe", "describe_models"]


@dataclass
class TowerInfo:
    """What ``crossalign towers`` shows about a registered tower."""

    name: str
    modality: str  # "image" | "text"
    builder: Callable[..., torch.nn.Module]
    description: str = ""
    offline: Callable[[], bool] = lambda: False  # are the weights on this machine?
    scratch: bool = False  # trained from scratch: there are no pretrained weights to reload


_REGISTRY: dict[str, TowerInfo] = {}
_PREFIXES: dict[str, TowerInfo] = {}
_JOINS: dict[str, Callable[..., torch.nn.Module]] = {}  # modality -> builder of towers named "a+b"


def register(name: str, modality: str, description: str = "",
             offline: Callable[[], bool] | None = None, prefix: bool = False, scratch: bool = False):
    """Decorator: register ``fn(**overrides) -> tower`` under ``name`` (or a ``name:`` prefix)."""

    def wrap(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        info = TowerInfo(name, modality, fn, description, offline or (lambda: False), scratch)
        (_PREFIXES if prefix else _REGISTRY)[name] = info
        return fn

    return wrap


def register_join(modality: str):
    """Decorator: register ``fn(names, **overrides) -> tower``, the builder of the ``modality``
    towers named ``a+b`` (from the towers named ``a`` and ``b``)."""

    def wrap(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        _JOINS[modality] = fn
        return fn

    return wrap


def _parts(name: str) -> list[str]:
    return [p.strip() for p in name.split("+")]


def _concat_info(name: str) -> TowerInfo:
    parts = _parts(name)
    infos = [model_info(p) for p in parts]
    modality = infos[0].modality
    if modality not in _JOINS or any(i.modality != modality for i in infos):
        raise ConfigError(f"only {' or '.join(sorted(_JOINS))} towers can be joined with '+': {name!r}")
    return TowerInfo(name, modality, functools.partial(_JOINS[modality], parts),
                     "concatenated features of " + ", ".join(parts),
                     offline=lambda: all(i.offline() for i in infos),
                     scratch=all(i.scratch for i in infos))


def model_info(name: str) -> TowerInfo:
    """The registry entry for ``name`` (a registered name, ``prefix:rest`` or ``a+b``)."""
    if "+" in name and not name.startswith(tuple(f"{p}:" for p in _PREFIXES)):
        return _concat_info(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix = name.split(":", 1)[0] if ":" in name else ""
    if prefix in _PREFIXES:
        return _PREFIXES[prefix]
    raise ConfigError(f"unknown tower {name!r}; registered: {list_models()} (or timm:<name>, hf:<name>)")


def create(name: str, **overrides) -> torch.nn.Module:
    """Build the tower registered as ``name``; prefixed names pass the rest as ``model_name``."""
    info = model_info(name)
    if info.name != name:  # prefixed
        overrides.setdefault("model_name", name.split(":", 1)[1])
    return info.builder(**overrides)


def list_models(modality: str | None = None) -> list[str]:
    """Registered tower names, optionally of one modality."""
    return sorted(n for n, i in _REGISTRY.items() if modality in (None, i.modality))


def list_prefixes(modality: str | None = None) -> list[str]:
    """Library prefixes (``timm``, ``hf``) that accept any model name after the colon."""
    return sorted(n for n, i in _PREFIXES.items() if modality in (None, i.modality))


def resolve_freeze(tower: str, spec: str) -> str:
    """``auto`` becomes ``trainable`` for from-scratch towers and ``frozen`` for pretrained ones."""
    if spec != "auto":
        return spec
    return "trainable" if model_info(tower).scratch else "frozen"


def _preprocessing(tower: torch.nn.Module) -> str:
    if getattr(tower, "modality", "") == "image":
        c = tower.data_config
        return (f"{c['input_size'][-1]}px {c['interpolation']} crop {c['crop_pct']:g} "
                f"mean {tuple(round(m, 3) for m in c['mean'])} std {tuple(round(s, 3) for s in c['std'])}")
    p = tower.preprocess_config()
    return f"{p['tokenizer']} <= {p['max_tokens']} tokens, {p.get('pooling', 'its own')} pooling"


def describe(name: str, **overrides) -> dict:
    """Width, parameter count, default preprocessing and offline availability of one tower.

    Nothing is downloaded: registered towers load their packaged weights if present,
    ``timm:`` names are built randomly initialised (``hf:`` names need their config reachable).
    """
    info = model_info(name)
    # packaged weights load faster than a random init of the same network
    pretrained = info.name == name and not info.scratch and info.offline()
    tower = create(name, **{"pretrained": pretrained, **overrides})
    return {
        "name": name, "modality": info.modality, "width": int(tower.width),
        "params": sum(p.numel() for p in tower.parameters()), "preprocessing": _preprocessing(tower),
        "weights": ("from scratch" if info.scratch else "hub, local folder or file" if info.name != name
                    else "offline" if info.offline() else "not on this machine"),
        "blocks": len(tower.blocks()), "description": info.description,
    }


def describe_models(modality: str | None = None) -> list[dict]:
    """:func:`describe` for every registered tower, then one row per library prefix."""
    rows = [describe(n) for n in list_models(modality)]
    for p in list_prefixes(modality):
        info = _PREFIXES[p]
        rows.append({"name": f"{p}:<name>", "modality": info.modality, "width": None, "params": None,
                     "preprocessing": "the model's own", "weights": "hub, local folder or file",
                     "blocks": None, "description": info.description})
    return rows
