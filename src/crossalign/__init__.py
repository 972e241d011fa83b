"""crossalign: CLIP-style image-text alignment on your own paired data.

The library entry points mirror the command line: :func:`crossalign.api.train` and
:func:`crossalign.api.resume`, :func:`crossalign.evaluate.evaluate`,
:func:`crossalign.report.report`, and ``crossalign.load(run)`` (:func:`crossalign.api.load`).
Heavy imports wait until first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "tune", "__version__"]


def load(run, which: str = "best", device: str = "cpu", pair_weights: str = ""):
    """Open a run folder, or a pretrained pair (``hf:FOLDER``, ``open_clip:NAME`` with
    ``pair_weights``), for embedding; see :func:`crossalign.api.load`."""
    from crossalign.api import load as _load

    return _load(run, which, device, pair_weights)


def tune(data, out, config=None, overrides=(), **settings):
    """Search the recipe on your own data (no final fit); see :func:`crossalign.api.tune`."""
    from crossalign.api import tune as _tune

    return _tune(data, out, config, overrides, **settings)
