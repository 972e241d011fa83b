"""Make a package callable, so ``crossalign.train(...)`` works although ``crossalign.train``
is also the package holding the training code (importing a submodule rebinds the name)."""

from __future__ import annotations

import sys
import types
from typing import Callable

__all__ = ["make_callable"]


def make_callable(module_name: str, fn: Callable) -> None:
    """Calling the module ``module_name`` calls ``fn``."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
