"""Reciprocal rank fusion: one ranking from several.

Cormack, Clarke and Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and individual
Rank Learning Methods" (SIGIR 2009): an item's fused score is the sum over the rankings that
hold it of ``weight / (K + rank)`` (rank from 1). Only ranks count, so a cosine similarity and a
BM25 score, which live on unrelated scales, need no normalising against each other; ``K = 60``
(the paper's) keeps the top few ranks of one list from outweighing agreement between lists.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crossalign.errors import ConfigError

__all__ = ["fuse", "RRF_K", "check_weights"]

RRF_K = 60


def check_weights(weights: Sequence[float], n: int) -> list[float]:
    """``n`` non-negative fusion weights, not all zero."""
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise ConfigError(f"the fusion weights must be numbers, got {weights!r}") from None
    if len(w) != n or any(not 0 <= x < float("inf") for x in w) or not any(w):
        raise ConfigError(f"give {n} fusion weights (vector, keyword), each >= 0 and not all 0; "
                          f"got {weights!r}")
    return w


def fuse(rankings: Sequence[np.ndarray], weights: Sequence[float],
         k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """The items of ``rankings`` (each an array of ids, best first) ordered by their fused
    score, best first (ties: the lower id first), and those scores."""
    w = check_weights(weights, len(rankings))
    score: dict[int, float] = {}
    for ranking, weight in zip(rankings, w):
        for rank, item in enumerate(np.asarray(ranking).tolist(), 1):
            score[item] = score.get(item, 0.0) + weight / (k + rank)
    items = sorted(score, key=lambda i: (-score[i], i))
    return (np.array(items, dtype=np.int64),
            np.array([score[i] for i in items], dtype=np.float32))
