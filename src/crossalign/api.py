"""The notebook-facing API: the same power as the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from crossalign.config import RunConfig, load_config

__all__ = ["train", "resume", "tune", "load", "Aligner"]


def _config(config: str | Path | RunConfig | None, overrides: Sequence[str]) -> RunConfig:
    from crossalign.config import apply_overrides

    if isinstance(config, RunConfig):
        return apply_overrides(config, list(overrides))
    return load_config(config, list(overrides))


def _search_config(auto, dist):
    from crossalign.errors import ConfigError
    from crossalign.train.search import SearchConfig

    if dist is not None and dist.world_size > 1:
        raise ConfigError("--auto searches in one process; start it without --nproc or torchrun")
    return auto if isinstance(auto, SearchConfig) else SearchConfig()


def train(data: str | Path, out: str | Path, config: str | Path | RunConfig | None = None,
          overrides: Sequence[str] = (), progress: bool = True, dist=None, auto=False):
    """Train on ``data`` into the run folder ``out``; returns a :class:`TrainResult`.

    Args:
        data: data folder (any supported layout).
        out: run folder to create.
        config: a YAML path or a :class:`RunConfig` (defaults otherwise).
        overrides: ``key=value`` strings, as ``--set`` takes.
        auto: True, or a :class:`~crossalign.train.search.SearchConfig`: search the recipe on
            held-out training data first (see :func:`tune`; ``config`` is the base recipe), then
            train the chosen one; the run folder also holds the search's records.
    """
    from crossalign.train.loop import train as _train

    cfg = _config(config, overrides)
    if auto:
        from crossalign.train.search import auto_train

        return auto_train(data, out, cfg, _search_config(auto, dist), progress)[1]
    return _train(data, out, cfg, progress=progress, dist=dist)


def resume(run: str | Path, progress: bool = True, dist=None, auto=False):
    """Continue a stopped run from its latest resume point; returns a :class:`TrainResult`.

    With ``auto`` (a run of ``train(..., auto=...)``) the search continues first, to the trial
    count or budget of the given SearchConfig when set, then the fit resumes or starts.
    """
    from crossalign.train.loop import resume as _resume

    if auto:
        from crossalign.train.search import auto_train

        return auto_train(None, run, None, _search_config(auto, dist), progress, resume=True)[1]
    return _resume(run, progress=progress, dist=dist)


def tune(data: str | Path | None, out: str | Path, config: str | Path | RunConfig | None = None,
         overrides: Sequence[str] = (), search=None, progress: bool = True, resume: bool = False,
         **settings):
    """Search the recipe for ``data`` into ``out`` without the final fit (``crossalign tune``).

    Frozen towers' features are extracted once; each trial trains only the heads. Trials are
    scored on the val split, or by K-fold cross-validation over train + val when the val split
    is small; never on test. Returns a :class:`~crossalign.train.search.TuneResult`; the folder
    holds ``study.journal``, ``trials.csv``, ``search.json`` and the chosen ``config.yaml``.

    Args:
        data: data folder (None with ``resume``: the one the search used).
        out: the search folder.
        config: the base recipe, a YAML path or a :class:`RunConfig` (defaults otherwise).
        overrides: ``key=value`` strings for the base recipe.
        search: a :class:`~crossalign.train.search.SearchConfig`; or give its fields as keywords
            (``trials=40``, ``budget="10m"``, ``towers=["lite0", "lite0+lite2"]``, ``folds=5``, ...).
        resume: continue the search stored in ``out``; ``trials`` and ``budget`` may be given anew.
    """
    import dataclasses

    from crossalign.train import search as _search

    settings = {k: v for k, v in settings.items() if v is not None}
    if "budget" in settings:
        settings["budget"] = _search.parse_budget(settings["budget"])
    if "towers" in settings:
        settings["towers"] = tuple(settings["towers"])
    if resume:
        return _search.resume_search(out, settings.get("trials"), settings.get("budget"), progress)
    chosen = dataclasses.replace(search or _search.SearchConfig(), **settings)
    return _search.tune(data, out, _config(config, overrides), chosen, progress)


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

    def explain(self, image, text: str, method: str = "layercam", steps: int = 32):
        """Which regions of ``image`` and which words of ``text`` made them close: an
        :class:`~crossalign.explain.Explanation` (``.save(png, json)`` writes its picture and JSON)."""
        from crossalign.explain import explain_pair

        return explain_pair(self.model, image, text, method, steps, self.cfg.data.max_pixels)


def load(run: str | Path, which: str = "best", device: str = "cpu") -> Aligner:
    """Open a run folder's checkpoint (safetensors; nothing is unpickled) for embedding."""
    from crossalign.runs import load_model

    model, cfg = load_model(run, which, device)
    return Aligner(model, cfg, device)
