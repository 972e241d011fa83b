"""The notebook-facing API: the same power as the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

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
    """A trained model ready to embed: normalised vectors, batched, with the run's preprocessing."""

    def __init__(self, model, cfg: RunConfig, device: str = "cpu") -> None:
        from crossalign.data.transforms import eval_transform

        self.model, self.cfg, self.device = model, cfg, device
        self._transform = eval_transform(model.image_tower.data_config)

    @torch.no_grad()
    def encode_image(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """``[n, embed_dim]`` for image paths or PIL images (one of them alone gives ``[1, embed_dim]``)."""
        from crossalign.data.transforms import load_image

        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        out = []
        for s in range(0, len(images), batch_size):
            chunk = [load_image(str(x)) if isinstance(x, (str, Path)) else x.convert("RGB")
                     for x in images[s:s + batch_size]]
            pixels = torch.stack([self._transform(im) for im in chunk]).to(self.device)
            out.append(self.model.encode_image(pixels).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.cfg.model.embed_dim), np.float32)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """``[n, embed_dim]`` for a list of strings (a single string gives ``[1, embed_dim]``)."""
        if isinstance(texts, str):
            texts = [texts]
        tower = self.model.text_tower
        out = []
        for s in range(0, len(texts), batch_size):
            tok = tower.tokenize(list(texts[s:s + batch_size]))
            out.append(self.model.encode_text(**{k: v.to(self.device) for k, v in tok.items()}).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.cfg.model.embed_dim), np.float32)


def load(run: str | Path, which: str = "best", device: str = "cpu") -> Aligner:
    """Load a run folder's checkpoint (safetensors; nothing is unpickled)."""
    from crossalign.train.checkpoint import load_model

    model, cfg = load_model(run, which, device)
    return Aligner(model, cfg, device)
