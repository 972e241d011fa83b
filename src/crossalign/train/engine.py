"""The training engine: one model's optimizer, schedule, data sides and position.

:func:`run_engine` builds the engine of a run (the recipe search builds one per fold, over
cached features: :func:`crossalign.train.trial.fold_engine`). A frozen tower never runs during
training: its outputs come once from the feature cache, and only what trains sees gradients.
With ``torchrun`` every process takes its slice of each global batch and the loss is computed
over the whole global batch.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crossalign.errors import RunError
from crossalign.config import LossConfig, RunConfig, default_cache_dir, logit_start, trained_splits
from crossalign.data.table import PairTable
from crossalign.data.validate import Problem
from crossalign.evaluate.retrieval import retrieval_metrics
from crossalign.models.dual import DualEncoder, build_model
from crossalign.train.checkpoint import checkpoint_state
from crossalign.train.grad_cache import all_reduce_grads, check_grad_cache, grad_cache_step
from crossalign.distributed import DistInfo, all_reduce_mean, resolve_device
from crossalign.train.batch_norm import has_batch_norm, sync_batch_norm
from crossalign.train.logs import RunLogger
from crossalign.train.schedule import make_scheduler
from crossalign.train.sides import ImageSide, TextSide, drop_failed_images, length_chunks, take
from crossalign.train.state import load_resume_point, save_resume_point

__all__ = ["Engine", "run_engine", "seed_everything"]

log = logging.getLogger("crossalign.train")


def loss_of(loss: LossConfig, model) -> LossConfig:
    """The loss ``model`` trains with: a model with a learned logit bias (a SigLIP checkpoint)
    trains with the sigmoid loss it learned it with; ``loss.name`` says so (in place)."""
    if model.logit_bias is not None and loss.name != "siglip":
        log.info("the model learned a logit bias with the sigmoid loss: it trains with loss.name=siglip, not %s",
                 loss.name)
        loss.name = "siglip"
    return loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: DualEncoder, cfg: RunConfig) -> torch.optim.Optimizer:
    groups: dict[tuple[bool, bool], list] = {(b, d): [] for b in (False, True) for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # biases, norms and the temperature are not shrunk towards zero
        decay = not (p.ndim < 2 or name in ("logit_scale", "logit_bias"))
        groups[(name.startswith(("image_tower.", "text_tower.")), decay)].append(p)
    backbone_lr = cfg.train.backbone_lr or cfg.train.lr  # pretrained towers usually want a smaller one
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": cfg.train.weight_decay if decay else 0.0,
          "lr": backbone_lr if backbone else cfg.train.lr}
         for (backbone, decay), ps in groups.items() if ps], lr=cfg.train.lr)


class _Step(torch.nn.Module):
    """Embeds one local batch; a module so DistributedDataParallel can wrap it."""

    def __init__(self, model: DualEncoder, images: ImageSide, texts: TextSide) -> None:
        super().__init__()
        self.model = model
        self._sides = (images, texts)  # a tuple: not registered as submodules

    def forward(self, img_rows: np.ndarray, txt_rows: np.ndarray, epoch: int):
        images, texts = self._sides
        img = images.train_embed(img_rows, epoch, txt_rows)  # [batch, embed_dim]
        txt = texts.train_embed(txt_rows, epoch)  # [batch, embed_dim]
        return img, txt, self.model.scale(), self.model.logit_bias


@dataclass
class _Position:
    epoch: int = 1  # epoch in progress (1-based)
    step: int = 0  # optimizer steps finished in that epoch
    global_step: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    loss_sum: float = 0.0  # training loss summed over this epoch's finished steps


def fit_splits(cfg: RunConfig) -> list[str]:
    """The splits the weights learn from (``train.fit_on``; ``RunConfig.validate`` refused the
    combinations where val would both be learned from and pick the epoch)."""
    if cfg.train.fit_on == "train+val":
        log.info("train.fit_on=train+val: the val split is trained on; its figures are of seen data")
    return list(trained_splits(cfg))


class Engine:
    """Trains ``model`` over its data sides: optimizer, schedule, order generator and position.

    ``rows`` are the text rows the weights learn from, ``t2i`` the image row of every text row
    and ``val`` the table validation embeds. Resume points go into the run folder ``run``; an
    engine without one (a fold of the recipe search) writes none.
    """

    def __init__(self, cfg: RunConfig, model: DualEncoder, images: ImageSide, texts: TextSide, *,
                 rows: np.ndarray, t2i: np.ndarray, val: PairTable, dist: DistInfo, device: str,
                 run: Path | None = None, progress: bool = False,
                 problems: list[Problem] | None = None) -> None:
        from crossalign.losses import make_loss

        self.cfg, self.model, self.images, self.texts = cfg, model, images, texts
        self.rows, self.t2i, self.val = rows, t2i, val
        self.dist, self.device, self.run, self.progress = dist, device, run, progress
        self.problems = problems if problems is not None else []  # rows skipped on the way here
        self.loss_fn = make_loss(loss_of(cfg.loss, model), dist)
        self._sync_batch_norm()
        self.step_module = _Step(model, images, texts)
        self.wrapped = self._wrap_ddp()
        self.opt = _optimizer(model, cfg)
        self.sched = make_scheduler(self.opt, cfg.train, self.steps_per_epoch())
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.pos = _Position()
        self.samples_per_s = 0.0  # of the last epoch trained

    def _sync_batch_norm(self) -> None:
        """With many processes, batch norm in a tower that trains sees the global batch.

        Otherwise each process would normalise with the statistics of its own slice, and N
        processes would not train like one process with N times the batch. A frozen tower
        only runs in evaluation mode (its outputs come from the cache), so it is left alone.
        """
        if self.dist.world_size == 1:
            return
        for side in (self.images, self.texts):
            if side.mode != "features" and has_batch_norm(side.tower):
                sync_batch_norm(side.tower, self.device)  # in place: the tower object is kept

    def _wrap_ddp(self) -> torch.nn.Module:
        if self.dist.world_size == 1:
            return self.step_module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.dist.local_rank] if self.device.startswith("cuda") else None
        return DDP(self.step_module, device_ids=ids)

    def local_batch(self) -> int:
        """Per-process batch: ``train.batch_size``, shrunk for data smaller than one global batch."""
        per_step = self.dist.world_size * self.cfg.train.accum_steps
        return max(1, min(self.cfg.train.batch_size, len(self.rows) // per_step))

    def steps_per_epoch(self) -> int:
        per_step = self.local_batch() * self.dist.world_size * self.cfg.train.accum_steps
        return max(1, len(self.rows) // per_step)  # the last partial global batch is dropped

    def _autocast(self):
        if self.cfg.train.precision == "bf16":  # else fp32 (RunConfig.validate allows no other)
            return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)
        return nullcontext()

    def _local(self, batch: np.ndarray) -> np.ndarray:
        """This process's slice of a global batch."""
        bs, rank = self.local_batch(), self.dist.rank
        return batch[rank * bs:(rank + 1) * bs]

    def _plan(self, perm: np.ndarray, global_bs: int, n_steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(image rows, samples)`` of every micro-batch this process runs from ``pos.step`` on."""
        accum = self.cfg.train.accum_steps
        locals_ = [self._local(perm[k * global_bs:(k + 1) * global_bs])
                   for k in range(self.pos.step * accum, n_steps * accum)]
        return [(self.t2i[local], local) for local in locals_]

    def _loss(self, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
              local: np.ndarray) -> torch.Tensor:
        """The loss of this process's rows ``local`` (over the global batch with many)."""
        ids = torch.as_tensor(self.t2i[local], device=img.device)
        kwargs = {"logit_bias": bias.float()} if bias is not None else {}
        return self.loss_fn(img.float(), txt.float(), scale.float(), ids, **kwargs)

    def _micro_step(self, batch: np.ndarray, epoch: int, sync: bool) -> float:
        """Add one micro-batch's gradient; ``sync``: the last of the step (gradients are
        reduced over processes)."""
        local = self._local(batch)
        if 0 < self.cfg.train.grad_cache < len(local):
            return self._cached_micro_step(local, epoch, sync)
        no_sync = self.wrapped.no_sync if (not sync and self.dist.world_size > 1) else nullcontext
        with no_sync():
            with self._autocast():
                img, txt, scale, bias = self.wrapped(self.t2i[local], local, epoch)
            loss = self._loss(img, txt, scale, bias, local)
            (loss / self.cfg.train.accum_steps).backward()
        return loss.item()

    def _cached_micro_step(self, local: np.ndarray, epoch: int, sync: bool) -> float:
        """:meth:`Engine._micro_step` with the towers run ``train.grad_cache`` rows at a time
        (:mod:`crossalign.train.grad_cache`): the same gradient, in a chunk's memory.

        The towers run outside DistributedDataParallel (each chunk runs twice; its hooks
        expect one forward and one backward), so the gradients are averaged over processes
        here, once, after the step's last micro-batch. Its buffer broadcast is not needed:
        batch norm in training mode is refused (``grad_cache.check_grad_cache``), and no
        other buffer changes while training.
        """
        img_in = self.images.inputs(self.t2i[local], epoch, local)  # the whole batch's, decoded once
        txt_in = self.texts.inputs(local, epoch)
        # parts of captions of similar length: each pads only to its own longest caption
        parts = length_chunks(self.texts.lengths(txt_in), self.cfg.train.grad_cache)

        def encode(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            with self._autocast():
                img, txt = self.images.encode(take(img_in, rows)), self.texts.encode(take(txt_in, rows))
            return img.float(), txt.float()  # [rows, embed_dim] each

        def loss_of(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
            return self._loss(img, txt, self.model.scale(), self.model.logit_bias, local)

        loss = grad_cache_step(encode, parts, loss_of, self.device, divisor=self.cfg.train.accum_steps)
        if sync:
            all_reduce_grads([p for p in self.model.parameters() if p.requires_grad], self.dist)
        return loss

    def _optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0
                                              else float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.after_step()
        return float(norm)

    def train_epoch(self, logger: RunLogger, epoch_gen_state: torch.Tensor) -> float:
        """Run the optimizer steps of ``self.pos.epoch`` from ``self.pos.step`` on."""
        from tqdm.auto import tqdm

        cfg, epoch = self.cfg.train, self.pos.epoch
        self.model.train()
        self.gen.set_state(epoch_gen_state)
        perm = self.rows[torch.randperm(len(self.rows), generator=self.gen).numpy()]
        global_bs = self.local_batch() * self.dist.world_size
        n_steps = self.steps_per_epoch()
        self.images.plan_epoch(epoch, self._plan(perm, global_bs, n_steps))  # decoding starts
        bar = tqdm(total=n_steps, initial=self.pos.step, desc=f"epoch {epoch}", leave=False,
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        t0, seen = time.perf_counter(), 0
        if self.pos.step == 0:
            self.pos.loss_sum = 0.0
        while self.pos.step < n_steps:
            first = self.pos.step * cfg.accum_steps
            micro = [self._micro_step(perm[(first + m) * global_bs:(first + m + 1) * global_bs], epoch,
                                      sync=m == cfg.accum_steps - 1) for m in range(cfg.accum_steps)]
            grad_norm = self._optimizer_step()
            self.pos.step += 1
            self.pos.global_step += 1
            step_loss = all_reduce_mean(float(np.mean(micro)), self.dist)  # the global batch's loss
            self.pos.loss_sum += step_loss
            seen += global_bs * cfg.accum_steps
            sps = seen / (time.perf_counter() - t0)
            temp = 1 / self.model.scale().item()
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{self.opt.param_groups[0]['lr']:.2e}",
                            T=f"{temp:.4f}", sps=f"{sps:.0f}")
            bar.update(1)
            if self.pos.global_step % max(1, cfg.log_every) == 0:
                logger.step({"step": self.pos.global_step, "epoch": epoch, "loss": step_loss,
                             "lr": self.opt.param_groups[0]["lr"], "temperature": temp,
                             "grad_norm": grad_norm, "samples_per_s": sps})
            if cfg.checkpoint_every and self.pos.step % cfg.checkpoint_every == 0 and self.pos.step < n_steps:
                self.save_resume(logger, epoch_gen_state)
        bar.close()
        self.samples_per_s = seen / max(time.perf_counter() - t0, 1e-9)
        return self.pos.loss_sum / max(1, n_steps)

    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        ids, t2i = self.val.caption_image_index()
        img = self.images.embed_all([self.images.index[i] for i in ids], self.cfg.runtime.eval_batch_size)
        txt = self.texts.embed_all([self.texts.index[o] for o in self.val.origin], self.cfg.runtime.eval_batch_size)
        self.model.train()
        return retrieval_metrics(img, txt, t2i)

    def save_resume(self, logger: RunLogger, epoch_gen_state: torch.Tensor) -> None:
        """Write a resume point into the run folder (the main process; no run folder, none)."""
        if self.run is None or not self.dist.is_main:
            return
        logger.flush_steps()
        position = {**self.pos.__dict__, "history": logger.epochs}
        save_resume_point(self.run, checkpoint_state(self.model), self.opt, self.sched.state_dict(),
                          position, epoch_gen_state)

    def restore(self) -> RunLogger:
        """Load the latest resume point (model, optimizer, schedule, RNGs, position, logs)."""
        state = load_resume_point(self.run)
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if unexpected:
            raise RunError(f"{self.run}: resume point does not match the model ({unexpected[:3]})")
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        pos = dict(state["position"])
        history = pos.pop("history")
        self.pos = _Position(**pos)
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.resume_gen_state = state["epoch_generator"]
        return RunLogger(self.run, self.dist.is_main, self.cfg.train.tensorboard,
                         resume_step=self.pos.global_step, history=history)


def run_engine(run: Path, cfg: RunConfig, table: PairTable, problems: list[Problem], dist: DistInfo,
               progress: bool) -> Engine:
    """The engine of the run in ``run``: its model built from ``train.seed`` (and started from
    ``train.init_from``), its sides over the train and val rows of ``table`` (a frozen tower's
    features extracted or read from the cache), learning from the ``train.fit_on`` splits.
    ``problems``: the rows already skipped; images that cannot be read are added to them."""
    from crossalign.data.augment import check_augment

    device = resolve_device(cfg.runtime.device, dist)
    check_augment(cfg.augment)  # a missing WordNet fails here, before any work
    # every process builds the same model: DDP copies rank 0's trainable weights anyway, but
    # a frozen tower never passes through DDP, and its features fill one shared cache
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, logit_start(cfg)).to(device)
    # a resumed run restores its own weights afterwards, but a frozen tower that the source
    # trained must hold that training before its features are extracted below
    if cfg.train.init_from:
        from crossalign.runs import warm_start

        names = warm_start(model, cfg, cfg.train.init_from)
        log.info("started from %s (model_best): %d tensors", cfg.train.init_from, len(names))
    check_grad_cache(model, cfg.train.grad_cache)  # before any feature is extracted
    if hasattr(model.text_tower, "fit_vocabulary"):
        model.text_tower.fit_vocabulary(table.select("train").caption)
    cache_root = default_cache_dir(cfg.cache) if cfg.cache.enabled else None
    used = table.select(["train", "val"])
    bs = cfg.runtime.eval_batch_size
    images = ImageSide(model, used, device, cache_root, bs, progress, cfg=cfg, dist=dist, training=True)
    used, dropped = drop_failed_images(used, images.failed)
    texts = TextSide(model, used, device, cache_root, bs, progress, cfg=cfg, dist=dist, training=True)
    rows = np.array([texts.index[o] for o in used.select(fit_splits(cfg)).origin])
    t2i = np.array([images.index[i] for i in texts.image_ids])
    return Engine(cfg, model, images, texts, rows=rows, t2i=t2i, val=used.select("val"), dist=dist,
                  device=device, run=run, progress=progress, problems=problems + dropped)
