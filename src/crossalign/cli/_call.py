"""The one mapping from a command's parsed flags to its function: ``--some-flag V`` is the
parameter ``some_flag=V``, and ``-q`` is ``progress=False``."""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Any, Callable

__all__ = ["call", "as_flags", "names"]


def call(fn: Callable, args: argparse.Namespace, **given: Any) -> Any:
    """``fn`` called with every parameter among the parsed flags (and ``given``)."""
    params = inspect.signature(fn).parameters
    kw = {k: v for k, v in vars(args).items() if k in params}
    if "progress" in params:
        kw["progress"] = not args.quiet
    kw.update(given)
    return fn(**kw)


def as_flags(message: str) -> str:
    """A library message names parameters in backticks (`max_epochs`); a command names flags."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: "--" + m[1].replace("_", "-"), message)


def names(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")`` (an argparse type)."""
    return tuple(s.strip() for s in text.split(",") if s.strip())
