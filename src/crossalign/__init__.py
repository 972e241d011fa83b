"""crossalign: CLIP-style image-text alignment on your own paired data.

The library entry points mirror the command line: ``crossalign.train(data, out)``,
``crossalign.evaluate(run, data)``, ``crossalign.load(run)``. Heavy imports wait until first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "load", "__version__"]


def __getattr__(name: str):
    if name in ("train", "evaluate"):
        import importlib

        return importlib.import_module(f"crossalign.{name}")  # a callable package
    if name == "load":
        from crossalign.api import load

        return load
    raise AttributeError(f"module 'crossalign' has no attribute {name!r}")
