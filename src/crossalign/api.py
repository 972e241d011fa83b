"""The notebook-facing API: the same power as the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from crossalign.config import RunConfig, load_config

__all__ = ["train", "resume", "load", "Aligner"]


def train(data: str | Path, out: str | Path, config: str | Path | RunConfig | None = None,
          overrides: Sequence[str] = (), progress: bool = True, dist=None):
    """Train on ``data`` into the run folder ``out``; returns a :class:`TrainResult`.

    Args:
        data: data folder (any supported layout).
        out: run folder to create.
        config: a YAML path or a :class:`RunConfig` (defaults otherwise).
        overrides: ``key=value`` strings, as ``--set`` takes.
    """
    from crossalign.config import apply_overrides
    from crossalign.train.loop import train as _train

    if isinstance(config, RunConfig):
        cfg = apply_overrides(config, list(overrides))
    else:
        cfg = load_config(config, list(overrides))
    return _train(data, out, cfg, progress=progress, dist=dist)


def resume(run: str | Path, progress: bool = True, dist=None):
    """Continue a stopped run from its latest resume point; returns a :class:`TrainResult`."""
    from crossalign.train.loop import resume as _resume

    return _resume(run, progress=progress, dist=dist)


class Aligner:
    """A trained model ready to embed: normalised vectors, batched, with the run's preprocessing.

    Both methods go through :mod:`crossalign.embed`, the same path evaluation and the index
    use, so an image embeds the same way from a path, from its bytes or as a PIL image.
    """

    def __init__(self, model, cfg: RunConfig, device: str = "cpu") -> None:
        self.model, self.cfg, self.device = model, cfg, device

    def encode_image(self, images, batch_size: int = 64) -> np.ndarray:
        """``[n, embed_dim]`` for image paths, file bytes or PIL images (one alone: ``[1, embed_dim]``).

        Every image goes through ``load_image`` (EXIF rotation, transparency on white, 16-bit
        scaling, the run's ``data.max_pixels``). Raises ``ImageError`` naming a bad one.
        """
        from crossalign.embed import embed_pictures

        if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or hasattr(images, "convert"):
            images = [images]
        return embed_pictures(self.model, list(images), device=self.device, batch_size=batch_size,
                              max_pixels=self.cfg.data.max_pixels)

    def encode_text(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """``[n, embed_dim]`` for a list of strings (a single string gives ``[1, embed_dim]``)."""
        from crossalign.embed import embed_texts

        if isinstance(texts, str):
            texts = [texts]
        return embed_texts(self.model, list(texts), device=self.device, batch_size=batch_size)


def load(run: str | Path, which: str = "best", device: str = "cpu") -> Aligner:
    """Open a run folder's checkpoint (safetensors; nothing is unpickled) for embedding."""
    from crossalign.runs import load_model

    model, cfg = load_model(run, which, device)
    return Aligner(model, cfg, device)
