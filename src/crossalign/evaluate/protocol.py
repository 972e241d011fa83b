"""The seed reports' protocol: top-1 accuracy over the whole matrix, and for held-out items.

The seed reports (movie posters and their synopses) scored one distance matrix over every
item, training ones included, and reported top-1 accuracy in both directions; then the same
for the held-out items only, each held-out query still ranked among *all* items. Both figures
come from one set of ranks over the whole matrix: the held-out figure is the mean over the
held-out queries' rows. The ranking is plain cosine similarity, as the seeds ranked (a query
bank of training queries cannot exist when every training item is in the gallery).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crossalign.evaluate.chance import rank_distribution
from crossalign.evaluate.retrieval import rank_summary, retrieve

__all__ = ["PROTOCOLS", "seed_protocol", "SEED_PROTOCOL_NOTE"]

PROTOCOLS = ("standard", "seed")

# how the seed protocol's two parts are drawn, written into the metrics beside them
SEED_PROTOCOL_NOTE = {
    "name": "seed", "ranking": "plain",
    "all": "every image and caption of the data, training ones included, ranked among each other",
    "held_out": "images outside the run's train split and their captions, each ranked among all items",
}


def _chance_top1(t2i: np.ndarray, n_images: int, images: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy (%) of a random ranking for the caption queries of ``images`` and those images."""
    counts = np.bincount(t2i, minlength=n_images)[images]  # captions of each query image
    n_cap = len(t2i)
    i2t = float(np.mean([rank_distribution(n_cap, int(m))[0] for m in counts])) if len(counts) else 0.0
    return {"t2i_top1": 100.0 / n_images, "i2t_top1": 100.0 * i2t}


def _part(t_ranks: np.ndarray, i_ranks: np.ndarray, t2i: np.ndarray, images: np.ndarray,
          ks: Sequence[int]) -> dict:
    """Metrics of the caption queries of ``images`` and of those image queries, among all items."""
    captions = np.flatnonzero(np.isin(t2i, images))
    out = {**rank_summary(t_ranks[captions], ks, "t2i"), **rank_summary(i_ranks[images], ks, "i2t")}
    out["n_images"], out["n_captions"] = int(len(images)), int(len(captions))
    out["chance"] = _chance_top1(t2i, len(i_ranks), images)
    return out


def seed_protocol(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
                  held_out: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Top-1 accuracy (and Recall@K, ranks, MRR) over the whole matrix and for held-out items.

    Args:
        image_emb: ``[n_images, dim]`` every image, training ones included.
        text_emb: ``[n_captions, dim]`` every caption.
        text_to_image: ``[n_captions]`` index of each caption's image.
        held_out: ``[n_images]`` bool, True for images the model did not train on.
        ks: the K of Recall@K.

    Returns:
        ``{"all": {...}, "held_out": {...}}``, each with ``t2i_top1`` and ``i2t_top1`` (%) among
        the others, and the chance top-1 of a random ranking under ``chance``.
    """
    t2i = np.asarray(text_to_image, dtype=np.int64)
    held = np.asarray(held_out, dtype=bool)
    if held.shape != (len(image_emb),):
        raise ValueError(f"held_out has shape {held.shape}, expected ({len(image_emb)},)")
    res = retrieve(image_emb, text_emb, t2i, k=0)
    out = {"all": _part(res.t2i_ranks, res.i2t_ranks, t2i, np.arange(len(image_emb)), ks)}
    if held.any():
        out["held_out"] = _part(res.t2i_ranks, res.i2t_ranks, t2i, np.flatnonzero(held), ks)
    return out
