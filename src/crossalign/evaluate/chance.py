"""What a random ranking scores: the chance level beside every retrieval number.

A caption query has one correct image among ``n_images``, so its rank is uniform. An image
query with ``m`` captions among ``n_captions`` ranks at the best of ``m`` random positions:
``P(rank > r) = C(n - r, m) / C(n, m)``. Chance metrics are the expectations under these
distributions (the median is that of the distribution), computed exactly, not sampled.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["chance_metrics", "rank_distribution"]


def rank_distribution(n: int, m: int = 1) -> np.ndarray:
    """``P(rank = r)`` for r = 1..n of the best of ``m`` correct items among ``n`` shuffled ones."""
    if not 1 <= m <= n:
        raise ValueError(f"need 1 <= m <= n, got m={m}, n={n}")
    r = np.arange(n - m + 1, dtype=np.float64)  # 0 .. n-m
    # survival P(rank > r) = prod_{j<r} (n - m - j) / (n - j), built by a running product
    ratio = (n - m - r) / (n - r)
    survival = np.concatenate([[1.0], np.cumprod(ratio)])  # P(rank > 0) .. P(rank > n-m+1)
    pmf = np.zeros(n, dtype=np.float64)
    pmf[: n - m + 1] = survival[:-1] - survival[1:]
    return pmf


def _summary(pmf: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    ranks = np.arange(1, len(pmf) + 1, dtype=np.float64)
    cdf = np.cumsum(pmf)
    out = {f"{prefix}_R@{k}": float(100.0 * cdf[min(k, len(cdf)) - 1]) for k in ks}
    first = int(np.searchsorted(cdf, 0.5 - 1e-12))  # index of the first r with cdf >= 0.5
    # exactly half the mass at or below r: the median sits between r and r + 1, as np.median says
    exact_half = abs(cdf[first] - 0.5) < 1e-12 and first + 1 < len(cdf)
    out[f"{prefix}_median_rank"] = float(ranks[first] + 0.5 if exact_half else ranks[first])
    out[f"{prefix}_mean_rank"] = float(pmf @ ranks)
    out[f"{prefix}_mrr"] = float(pmf @ (1.0 / ranks))
    out[f"{prefix}_top1"] = float(100.0 * pmf[0])
    return out


def chance_metrics(text_to_image: np.ndarray, n_images: int | None = None,
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The metrics of :func:`~crossalign.evaluate.retrieval.retrieval_metrics` for a model that ranks at random.

    Args:
        text_to_image: ``[n_captions]`` index of each caption's image.
        n_images: number of images (default: one more than the largest index).
        ks: the K of Recall@K.
    """
    t2i = np.asarray(text_to_image, dtype=np.int64)
    n_img = int(n_images if n_images is not None else t2i.max() + 1)
    n_cap = len(t2i)
    if n_img == 0 or n_cap == 0:
        raise ValueError("no queries to score")
    counts = np.bincount(t2i, minlength=n_img)
    if counts.min() == 0:
        raise ValueError(f"{int((counts == 0).sum())} image(s) have no caption")
    out = _summary(rank_distribution(n_img, 1), ks, "t2i")
    # image queries: a mixture over the number of captions an image has
    sizes, n_with = np.unique(counts, return_counts=True)
    mix = sum(w * rank_distribution(n_cap, int(m)) for m, w in zip(sizes, n_with)) / n_img
    out.update(_summary(mix, ks, "i2t"))
    out["rsum"] = float(sum(out[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in ks))
    return out
