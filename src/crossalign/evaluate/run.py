"""``crossalign.evaluate``: metrics of a trained run on one split of a data set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from crossalign.config import default_cache_dir
from crossalign.data.prepare import prepare_table
from crossalign.data.table import PairTable
from crossalign.data.validate import Problem
from crossalign.evaluate.retrieval import retrieval_metrics
from crossalign.models.dual import DualEncoder, is_frozen

__all__ = ["evaluate", "embed_table", "EmbeddedTable"]


@dataclass
class EmbeddedTable:
    """Embeddings of a table: unique images, caption rows, and which image each caption shows."""

    table: PairTable  # rows whose image could be read
    image_ids: list[str]
    image_emb: np.ndarray  # [n_images, dim]
    text_emb: np.ndarray  # [n_captions, dim]
    text_to_image: np.ndarray  # [n_captions]
    problems: list[Problem]


def embed_table(model: DualEncoder, table: PairTable, cache_root: Path | None, device: str = "cpu",
                batch_size: int = 128, progress: bool = True) -> EmbeddedTable:
    """Embed every image and caption of ``table`` (frozen towers read the feature cache)."""
    from crossalign.train.sides import ImageSide, TextSide, drop_failed_images

    cfg = model.cfg
    images = ImageSide(model, table, device, cache_root if is_frozen(cfg.image.freeze) else None,
                       batch_size, progress)
    table, problems = drop_failed_images(table, images.failed)
    texts = TextSide(model, table, device, cache_root if is_frozen(cfg.text.freeze) else None,
                     batch_size, progress)
    ids, t2i = table.caption_image_index()
    model.eval()
    img = images.embed_all([images.index[i] for i in ids], batch_size)
    txt = texts.embed_all(list(range(len(table))), batch_size)
    return EmbeddedTable(table, ids, img, txt, t2i, problems)


def evaluate(run: str | Path, data: str | Path, split: str = "test", ks: Sequence[int] = (1, 5, 10),
             which: str = "best", device: str = "cpu", progress: bool = True) -> dict:
    """Retrieval metrics of the run's ``which`` checkpoint on ``split`` of ``data``.

    The split is the one stored in the run folder, so the held-out items are exactly
    those training held out.
    """
    from crossalign.train.checkpoint import load_model

    model, cfg = load_model(run, which, device)
    table, problems = prepare_table(data, cfg.data, run_dir=run)
    sub = table.select(split)
    if len(sub) == 0:
        raise ValueError(f"{data}: the {split!r} split has no rows (splits: {table.split_counts()})")
    cache_root = default_cache_dir(cfg.cache) if cfg.cache.enabled else None
    emb = embed_table(model, sub, cache_root, device, cfg.train.eval_batch_size, progress)
    metrics = retrieval_metrics(emb.image_emb, emb.text_emb, emb.text_to_image, ks)
    metrics["split"] = split
    metrics["skipped_rows"] = len(problems) + len(emb.problems)
    return metrics
