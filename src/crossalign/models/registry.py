"""Tower registry: ``register`` a builder under a name, ``create(name, **overrides)`` it.

Names are either registered ones (``efficientnet_lite0``, ``minilm``, ``lstm`` ...) or
prefixed library names: ``timm:<model>`` for any timm image model and ``hf:<name or
folder>`` for any Hugging Face text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["TowerInfo", "register", "create", "list_models", "model_info"]


@dataclass
class TowerInfo:
    """What ``crossalign models list`` shows about a registered tower."""

    name: str
    modality: str  # "image" | "text"
    builder: Callable[..., torch.nn.Module]
    description: str = ""
    offline: Callable[[], bool] = lambda: False  # are the weights on this machine?


_REGISTRY: dict[str, TowerInfo] = {}
_PREFIXES: dict[str, TowerInfo] = {}


def register(name: str, modality: str, description: str = "",
             offline: Callable[[], bool] | None = None, prefix: bool = False):
    """Decorator: register ``fn(**overrides) -> tower`` under ``name`` (or a ``name:`` prefix)."""

    def wrap(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        info = TowerInfo(name, modality, fn, description, offline or (lambda: False))
        (_PREFIXES if prefix else _REGISTRY)[name] = info
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the tower modules runs their @register decorators.
    import crossalign.models.image  # noqa: F401
    import crossalign.models.text  # noqa: F401


def model_info(name: str) -> TowerInfo:
    """The registry entry for ``name`` (a registered name or ``prefix:rest``)."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix = name.split(":", 1)[0] if ":" in name else ""
    if prefix in _PREFIXES:
        return _PREFIXES[prefix]
    raise KeyError(f"unknown tower {name!r}; registered: {list_models()} (or timm:<name>, hf:<name>)")


def create(name: str, **overrides) -> torch.nn.Module:
    """Build the tower registered as ``name``; prefixed names pass the rest as ``model_name``."""
    info = model_info(name)
    if info.name != name:  # prefixed
        overrides.setdefault("model_name", name.split(":", 1)[1])
    return info.builder(**overrides)


def list_models(modality: str | None = None) -> list[str]:
    """Registered tower names, optionally of one modality."""
    _ensure_loaded()
    return sorted(n for n, i in _REGISTRY.items() if modality in (None, i.modality))
