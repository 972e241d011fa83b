"""Settings given as keyword arguments: ``crossalign.train(data, out, epochs=10, image_tower="lite2")``.

Every setting of :class:`~crossalign.config.RunConfig` has one keyword: its last name when no
other setting shares it (``epochs`` for ``train.epochs``), else its section's name and its own
joined by ``_`` (``image_tower`` for ``model.image.tower``, ``text_tower`` for
``model.text.tower``, and so for a name that says little alone: ``loss_name``, ``cache_dir``,
``augment_image``). :func:`keywords` lists them all.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from functools import lru_cache
from typing import Any

from crossalign.config import RunConfig
from crossalign.errors import ConfigError

__all__ = ["keywords", "as_overrides"]

# last names that say too little without their section
_VAGUE = {"name", "enabled", "dir", "dtype", "image", "text", "format", "strict", "layers"}


def _dotted(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += _dotted(type(default), f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


@lru_cache(maxsize=1)
def keywords() -> dict[str, str]:
    """``{keyword: dotted setting}`` for every setting of a run config (``then`` excepted)."""
    keys = [k for k in _dotted(RunConfig) if k != "then"]
    last = Counter(k.rsplit(".", 1)[-1] for k in keys)
    out = {}
    for k in keys:
        parts = k.split(".")
        alone = last[parts[-1]] == 1 and parts[-1] not in _VAGUE
        name = parts[-1] if alone else "_".join(parts[-2:])
        if name in out:
            raise AssertionError(f"two settings share the keyword {name}: {out[name]} and {k}")
        out[name] = k
    return out


def _text(value: Any) -> str:
    """A value as ``--set`` would take it (YAML)."""
    import yaml

    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def as_overrides(settings: dict[str, Any]) -> list[str]:
    """``key=value`` strings, as ``--set`` takes them, for settings given as keywords.

    Raises:
        ConfigError: a keyword that names no setting (the message lists the near ones).
    """
    known = keywords()
    out = []
    for name, value in settings.items():
        if name not in known:
            import difflib

            near = difflib.get_close_matches(name, list(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"{name!r} is not a parameter or a setting{hint} (every setting has a "
                              f"keyword: crossalign.api.keywords())")
        out.append(f"{known[name]}={_text(value)}")
    return out
