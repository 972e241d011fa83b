"""Scoring one recipe over cached features: only the heads train, on every fold at once.

A recipe search (:mod:`crossalign.train.tune`) tries many recipes on the same data. Each image
tower it may choose is built, and its features extracted, once (:class:`FeatureSet`, through the
feature cache); a trial then builds fresh heads around the same frozen towers and trains them
with the training engine (:class:`~crossalign.train.engine.Engine`, built by :func:`fold_engine`)
on every fold of a :class:`~crossalign.train.folds.FoldPlan`, the folds in step, epoch by epoch,
so the mean score over the folds is known after each epoch (what a pruner needs).

A fold trains exactly as ``crossalign train`` trains on its rows: its heads start from the random
state the engine's model build leaves after the towers, its own copy of torch's global random
stream (dropout) starts at ``train.seed``, and its batches come from the engine's seeded order.
So on a holdout plan with plain ranking, a trial's per-epoch validation metrics are those in
``metrics.csv`` of the same recipe trained by ``crossalign train``. No run folder is written.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from crossalign.config import RunConfig, default_cache_dir, logit_start
from crossalign.data.splits import sample_images
from crossalign.data.table import PairTable
from crossalign.distributed import DistInfo
from crossalign.errors import ConfigError
from crossalign.evaluate.bank import score_functions
from crossalign.evaluate.retrieval import metrics_from_ranks, retrieve
from crossalign.models.dual import build_towers, wrap_towers
from crossalign.distributed import resolve_device
from crossalign.train.engine import Engine
from crossalign.train.folds import Fold, FoldPlan
from crossalign.train.sides import ImageSide, TextSide, drop_failed_images

__all__ = ["OBJECTIVES", "objective_value", "FeatureSet", "RecipeScore", "fold_engine", "score_recipe"]

# rsum: R@1 + R@5 + R@10 in both directions; r1: the mean of text->image and image->text R@1
OBJECTIVES = ("rsum", "r1")


def objective_value(metrics: dict, objective: str) -> float:
    """The number a search maximises, from retrieval metrics."""
    if objective == "rsum":
        return float(metrics["rsum"])
    if objective == "r1":
        return float((metrics["t2i_R@1"] + metrics["i2t_R@1"]) / 2)
    raise ConfigError(f"search objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


class FeatureSet:
    """One tower choice over the pool (train + val rows): frozen towers and their cached features.

    ``rng_state`` is torch's random state right after the towers were built from
    ``train.seed``, where the engine's own model build goes on to initialise the heads.
    """

    def __init__(self, cfg: RunConfig, pool: PairTable, progress: bool = True) -> None:
        from crossalign.data.augment import check_augment

        check_augment(cfg.augment)
        self.device = resolve_device(cfg.runtime.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            self.towers = build_towers(cfg.model)
            self.rng_state = torch.get_rng_state()
            model = wrap_towers(*self.towers, cfg.model, logit_start(cfg)).to(self.device)
        for side in ("image", "text"):
            if getattr(cfg.model, side).freeze != "frozen":
                raise ConfigError(f"the recipe search trains heads over cached features, so the {side} tower "
                                  f"must be frozen; model.{side}.freeze is {getattr(cfg.model, side).freeze!r}")
        if hasattr(model.text_tower, "fit_vocabulary"):
            model.text_tower.fit_vocabulary(pool.select("train").caption)
        cache = default_cache_dir(cfg.cache) if cfg.cache.enabled else None
        bs, dist = cfg.runtime.eval_batch_size, DistInfo()
        self.images = ImageSide(model, pool, self.device, cache, bs, progress, cfg=cfg, dist=dist, training=True)
        self.pool, self.problems = drop_failed_images(pool, self.images.failed)
        self.texts = TextSide(model, self.pool, self.device, cache, bs, progress, cfg=cfg, dist=dist,
                              training=True)
        self.t2i = np.array([self.images.index[i] for i in self.texts.image_ids])  # [n_captions]


class _RandomStream:
    """A private copy of torch's global random state (CPU, and the CUDA device in use).

    Each fold draws its dropout from its own stream, as if it trained alone from ``seed``.
    """

    def __init__(self, seed: int, device: str) -> None:
        self.devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self):
        cuda = torch.cuda.get_rng_state(self.devices[0]) if self.devices else None
        return torch.get_rng_state(), cuda

    @contextmanager
    def active(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.state[0])
            if self.devices:
                torch.cuda.set_rng_state(self.state[1], self.devices[0])
            yield
            self.state = self._get()


class _NoLog:
    """The engine logs steps; a trial keeps none."""

    def step(self, row: dict) -> None:
        pass


def _known(table: PairTable, index: dict) -> PairTable:
    """Rows whose caption the feature set holds (an image unreadable for this tower is left out)."""
    return table.take(k for k, o in enumerate(table.origin) if o in index)


def fold_engine(cfg: RunConfig, fs: FeatureSet, train: PairTable, val: PairTable) -> Engine:
    """The engine of one fold: fresh heads around ``fs``'s frozen towers, learning from ``train``
    over its cached features and validated on ``val``. It has no run folder, so it writes no
    resume point."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(fs.rng_state)  # the heads start where build_model would start them
        model = wrap_towers(*fs.towers, cfg.model, logit_start(cfg)).to(fs.device)
    images, texts = copy.copy(fs.images), copy.copy(fs.texts)
    images.model = texts.model = model
    rows = np.array([texts.index[o] for o in train.origin])
    return Engine(cfg, model, images, texts, rows=rows, t2i=fs.t2i, val=val, dist=DistInfo(),
                  device=fs.device)


class _Fold:
    """One fold of a trial: its engine, its own random stream and its qbnorm bank."""

    def __init__(self, cfg: RunConfig, fs: FeatureSet, fold: Fold) -> None:
        train, val = _known(fold.train, fs.texts.index), _known(fold.val, fs.texts.index)
        self.engine = fold_engine(cfg, fs, train, val)
        self.stream = _RandomStream(cfg.train.seed, fs.device)
        bank = sample_images(train, cfg.evaluate.qb_bank, cfg.evaluate.qb_seed) if cfg.evaluate.qb_bank else train
        self.bank_images = [fs.images.index[i] for i in dict.fromkeys(bank.image_id)]
        self.bank_texts = [fs.texts.index[o] for o in bank.origin]

    def run_epoch(self) -> dict:
        """Train one epoch, then score the fold with the recipe's ranking."""
        engine, cfg = self.engine, self.engine.cfg
        with self.stream.active():
            engine.train_epoch(_NoLog(), engine.gen.get_state())
        plain = engine.validate()  # what the training loop monitors
        engine.sched.after_epoch(plain[cfg.train.monitor])
        engine.pos.epoch += 1
        engine.pos.step = 0
        return plain if cfg.evaluate.ranking == "plain" else self._ranked()

    @torch.no_grad()
    def _ranked(self) -> dict:
        """Validation metrics ranked as ``evaluate`` ranks (qbnorm: the fold's training queries as the bank)."""
        engine = self.engine
        images, texts, val = engine.images, engine.texts, engine.val
        engine.model.eval()
        bs = engine.cfg.runtime.eval_batch_size
        ids, t2i = val.caption_image_index()
        img = images.embed_all([images.index[i] for i in ids], bs)  # [n_val_images, dim]
        txt = texts.embed_all([texts.index[o] for o in val.origin], bs)  # [n_val_captions, dim]
        bank_img = images.embed_all(self.bank_images, bs)
        bank_txt = texts.embed_all(self.bank_texts, bs)
        engine.model.train()
        t2i_fn, i2t_fn, _ = score_functions(engine.cfg.evaluate, img, txt, bank_img, bank_txt)
        res = retrieve(img, txt, t2i, k=0, t2i_scores=t2i_fn, i2t_scores=i2t_fn)
        return metrics_from_ranks(res.t2i_ranks, res.i2t_ranks)


@dataclass
class RecipeScore:
    """What one recipe scored on a fold plan."""

    score: float  # mean over the folds of the objective after epoch ``epochs``
    fold_scores: list[float]  # each fold's objective after that epoch
    curve: list[float] = field(default_factory=list)  # the mean after each epoch
    epochs_run: int = 0
    epochs: int = 0  # the epoch count the score belongs to: the last trained, or with no schedule the best
    stopped: bool = False  # ``on_epoch`` asked to stop (a pruned trial)
    seconds: float = 0.0


def score_recipe(cfg: RunConfig, fs: FeatureSet, plan: FoldPlan, objective: str = "rsum",
                 on_epoch: Callable[[int, float], bool] | None = None) -> RecipeScore:
    """Train ``cfg``'s heads for up to ``train.epochs`` epochs on every fold and score each epoch.

    Early stopping is not applied. With a schedule (cosine, whose rate depends on the epoch
    count) the score is that of the last epoch, so the recipe's epoch count is what was scored.
    With no schedule the first ``e`` epochs of a longer run are exactly a run of ``e`` epochs, so
    the score is that of the best epoch (the earliest of equal ones) and ``epochs`` says which:
    the recipe trained for that many epochs scores it again. ``on_epoch(epoch, mean)`` is
    called after each epoch; returning True stops the recipe there.
    """
    t0 = time.perf_counter()
    objective_value({"rsum": 0.0, "t2i_R@1": 0.0, "i2t_R@1": 0.0}, objective)  # a bad name fails first
    folds = [_Fold(cfg, fs, fold) for fold in plan.folds]
    prefix_exact = cfg.train.scheduler == "none"
    out = RecipeScore(float("nan"), [])
    for epoch in range(1, cfg.train.epochs + 1):
        fold_scores = [objective_value(f.run_epoch(), objective) for f in folds]
        mean = float(np.mean(fold_scores))
        out.curve.append(mean)
        out.epochs_run = epoch
        if not prefix_exact or not out.epochs or mean > out.score:
            out.score, out.fold_scores, out.epochs = mean, fold_scores, epoch
        if on_epoch is not None and on_epoch(epoch, mean):
            out.stopped = epoch < cfg.train.epochs
            break
    out.seconds = time.perf_counter() - t0
    return out
