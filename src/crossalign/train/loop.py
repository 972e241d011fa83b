"""The training loop: contrastive training, validation each epoch, best checkpoint, early stop.

A frozen tower never runs during training: its outputs come once from the feature
cache, and only the heads (and whatever else trains) see gradients.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crossalign._io import atomic_write_json, atomic_path
from crossalign.config import RunConfig, default_cache_dir, save_config, to_dict
from crossalign.data.prepare import prepare_table
from crossalign.data.splits import write_split_files
from crossalign.data.table import PairTable
from crossalign.data.validate import Problem
from crossalign.evaluate.retrieval import retrieval_metrics
from crossalign.losses import ClipLoss
from crossalign.models.dual import DualEncoder, build_model, is_frozen
from crossalign.train.checkpoint import save_model
from crossalign.train.sides import ImageSide, TextSide, drop_failed_images

__all__ = ["train", "TrainResult", "resolve_device", "seed_everything"]

log = logging.getLogger("crossalign.train")


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_loss(cfg: RunConfig) -> torch.nn.Module:
    if cfg.loss.name == "clip":
        return ClipLoss(margin=cfg.loss.margin)
    raise ValueError(f"unknown loss {cfg.loss.name!r}; available: clip")


def _optimizer(model: DualEncoder, cfg: RunConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # biases, norms and the temperature are not shrunk towards zero
        (no_decay if p.ndim < 2 or name == "logit_scale" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.lr)


def _validate(model: DualEncoder, images: ImageSide, texts: TextSide, table: PairTable,
              batch_size: int) -> dict:
    model.eval()
    ids, t2i = table.caption_image_index()
    img = images.embed_all([images.index[i] for i in ids], batch_size)
    txt = texts.embed_all([texts.index[o] for o in table.origin], batch_size)
    model.train()
    return retrieval_metrics(img, txt, t2i)


class _CsvLog:
    """Per-epoch metrics appended to ``metrics.csv`` (header from the first row)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []

    def append(self, row: dict) -> None:
        self.rows.append(row)
        keys = list(self.rows[0])
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)


def _run_epoch(model, images, texts, rows, t2i_all, loss_fn, opt, cfg, gen, progress) -> float:
    from tqdm.auto import tqdm

    model.train()
    perm = rows[torch.randperm(len(rows), generator=gen).numpy()]
    bs = cfg.train.batch_size
    n_batches = max(1, len(perm) // bs) if len(perm) >= bs else 1
    total, seen = 0.0, 0
    bar = tqdm(range(n_batches), desc="train", leave=False, disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for b in bar:
        batch = perm[b * bs:(b + 1) * bs]
        img_idx = t2i_all[batch]
        img_emb = images.train_embed(img_idx)  # [batch, embed_dim]
        txt_emb = texts.train_embed(batch)  # [batch, embed_dim]
        loss = loss_fn(img_emb, txt_emb, model.scale(), torch.as_tensor(img_idx, device=img_emb.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.grad_clip)
        opt.step()
        total += loss.item() * len(batch)
        seen += len(batch)
        bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{1 / model.scale().item():.4f}",
                        sps=f"{seen / (time.perf_counter() - t0):.0f}")
    return total / max(seen, 1)


def _setup(data_dir, out, cfg: RunConfig) -> tuple[Path, PairTable, list[Problem]]:
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    table, problems = prepare_table(data_dir, cfg.data)
    write_split_files(table, run / "splits")
    for split in ("train", "val"):
        if not table.select(split).caption:
            raise ValueError(f"{data_dir}: the {split} split is empty; give more images or change data.split_ratios")
    return run, table, problems


def train(data: str | Path, out: str | Path, cfg: RunConfig, progress: bool = True) -> TrainResult:
    """Train a dual encoder on ``data`` and write the run folder ``out``.

    Writes ``config.yaml``, ``splits/``, ``metrics.csv``, ``model_best.safetensors``,
    ``model_last.safetensors`` and ``summary.json``.
    """
    t_start = time.perf_counter()
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    run, table, problems = _setup(data, out, cfg)
    model = build_model(cfg.model).to(device)
    cache_root = default_cache_dir(cfg.cache) if cfg.cache.enabled else None
    used = table.select(["train", "val"])
    images = ImageSide(model, used, device, cache_root if is_frozen(cfg.model.image.freeze) else None,
                       cfg.train.eval_batch_size, progress)
    used, dropped = drop_failed_images(used, images.failed)
    problems += dropped
    texts = TextSide(model, used, device, cache_root if is_frozen(cfg.model.text.freeze) else None,
                     cfg.train.eval_batch_size, progress)
    atomic_write_json(run / "problems.json", [p.to_dict() for p in problems])
    tr, va = used.select("train"), used.select("val")
    rows = np.array([texts.index[o] for o in tr.origin])
    t2i_all = np.array([images.index[i] for i in texts.image_ids])
    loss_fn, opt = _make_loss(cfg), _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    csv_log, best, best_epoch, bad_epochs = _CsvLog(run / "metrics.csv"), -math.inf, 0, 0
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _run_epoch(model, images, texts, rows, t2i_all, loss_fn, opt, cfg, gen, progress)
        val = _validate(model, images, texts, va, cfg.train.eval_batch_size)
        row = {"epoch": epoch, "train_loss": train_loss, "lr": opt.param_groups[0]["lr"],
               "temperature": 1 / model.scale().item(), "epoch_seconds": time.perf_counter() - t0,
               **{f"val_{k}": v for k, v in val.items()}}
        csv_log.append(row)
        save_model(model, run / "model_last.safetensors", {"epoch": epoch, "val": val})
        score = val[cfg.train.monitor]
        improved = score > best
        if improved:
            best, best_epoch, bad_epochs = score, epoch, 0
            save_model(model, run / "model_best.safetensors", {"epoch": epoch, "val": val})
        else:
            bad_epochs += 1
        log.info("epoch %d loss %.4f val t2i R@1 %.2f i2t R@1 %.2f %s", epoch, train_loss,
                 val["t2i_R@1"], val["i2t_R@1"], "*" if improved else "")
        if cfg.train.early_stopping and bad_epochs >= cfg.train.patience:
            log.info("early stop: %s did not improve for %d epochs", cfg.train.monitor, bad_epochs)
            break
    elapsed = time.perf_counter() - t_start
    best_val = next(r for r in csv_log.rows if r["epoch"] == best_epoch)
    summary = {"best_epoch": best_epoch, "monitor": cfg.train.monitor, "best_val": best_val,
               "epochs_run": len(csv_log.rows), "train_seconds": elapsed, "skipped_rows": len(problems),
               "splits": table.split_counts(), "config": to_dict(cfg)}
    atomic_write_json(run / "summary.json", summary)
    return TrainResult(run, best_epoch, best_val, csv_log.rows, elapsed)
