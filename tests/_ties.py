"""Retrieval compared between two computations that agree only up to float rounding.

Two computations of the same model — two processes and one, a shared cache and a private
one, a resumed run and an uninterrupted one — give the same scores up to the last bits,
not bit for bit, unless every float sum runs in the same order in both. A rank is a
comparison of two scores, so where a query's correct item and a competitor score within
that rounding of each other (a near-tie, common with tiny random towers) the rank can
come out either way. The comparisons here are the ones that are exact:

- scores (cosine similarities) within ``tol`` of each other;
- the rank of every *clear* query, one whose correct item is more than ``2 * tol`` away
  from every competitor in the reference: moving each score by at most ``tol`` cannot
  reorder it against any competitor, so its rank is the same in both;
- a recall metric within what the near-tied queries can move (:func:`recall_slack`).

:func:`recorded_validation` captures the embeddings every validation of a training sees.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from crossalign.evaluate.retrieval import ranks_i2t, ranks_t2i

Embeddings = tuple[np.ndarray, np.ndarray]  # (image_emb [n_images, dim], text_emb [n_captions, dim])


def scores(emb: Embeddings) -> np.ndarray:
    """Cosine similarities ``[n_captions, n_images]`` (the embeddings are L2-normalised)."""
    img, txt = (np.asarray(e, dtype=np.float64) for e in emb)
    return txt @ img.T


def margins(emb: Embeddings, text_to_image: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """How far each query's rank is from changing: ``(per caption, per image)``.

    A caption query: the smallest gap between its image's score and another image's. An
    image query (ranked by its best caption): the smallest gap between its best caption's
    score and a caption of another image's.
    """
    s = scores(emb)  # [captions, images]
    t2i = np.asarray(text_to_image)
    rows = np.arange(len(t2i))
    wrong = np.ones_like(s, dtype=bool)
    wrong[rows, t2i] = False
    gap = np.abs(s - s[rows, t2i][:, None])
    t2i_margin = np.where(wrong, gap, np.inf).min(1, initial=np.inf)
    best = np.full(s.shape[1], -np.inf)
    np.maximum.at(best, t2i, s[rows, t2i])  # each image's best caption
    gap = np.abs(s - best[None, :])  # [captions, images]
    i2t_margin = np.where(wrong, gap, np.inf).min(0, initial=np.inf)
    return t2i_margin, i2t_margin


def clear_queries(emb: Embeddings, text_to_image, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``(captions, images)`` of the queries whose rank no change of ``tol`` per score moves."""
    t2i_margin, i2t_margin = margins(emb, text_to_image)
    return t2i_margin > 2 * tol, i2t_margin > 2 * tol


def assert_same_retrieval(got: Embeddings, want: Embeddings, text_to_image, tol: float,
                          min_clear: float = 0.5) -> None:
    """Scores within ``tol``; the ranks of ``want``'s clear queries equal in ``got``.

    ``min_clear``: the share of queries, in each direction, that must be clear, so that the
    comparison of ranks is about most of the queries and not a handful.
    """
    diff = float(np.abs(scores(got) - scores(want)).max())
    assert diff <= tol, f"scores differ by up to {diff:.3g}, above the tolerance {tol:.3g}"
    for name, rank, clear in (("caption", ranks_t2i, 0), ("image", ranks_i2t, 1)):
        mask = clear_queries(want, text_to_image, tol)[clear]
        assert mask.mean() >= min_clear, \
            f"only {mask.sum()} of {mask.size} {name} queries are clear of ties at {tol:.3g}"
        a, b = rank(*got, text_to_image), rank(*want, text_to_image)
        assert (a[mask] == b[mask]).all(), \
            f"{name} queries {np.flatnonzero(mask & (a != b)).tolist()} ranked {a[mask & (a != b)]} " \
            f"against {b[mask & (a != b)]}, with margins over twice {tol:.3g}"


def recall_slack(emb: Embeddings, text_to_image, tol: float, ks: Sequence[int] = (1, 5, 10),
                 prefix: str = "") -> dict[str, float]:
    """How far each recall metric (%) of a computation within ``tol`` of ``emb`` can be from
    ``emb``'s: the share of its near-tied queries (every one could flip), and their sum for
    R-sum. Keys as in the run's logs, e.g. ``val_t2i_R@1``, with ``prefix="val_"``."""
    t2i_clear, i2t_clear = clear_queries(emb, text_to_image, tol)
    share = {"t2i": 100.0 * (~t2i_clear).mean(), "i2t": 100.0 * (~i2t_clear).mean()}
    out = {f"{prefix}{d}_R@{k}": share[d] for d in share for k in ks}
    out.update({f"{prefix}{d}_top1": share[d] for d in share})
    out[f"{prefix}rsum"] = sum(share[d] for d in share) * len(ks)
    return out


def assert_recalls_within(got: dict, want: dict, slack: dict[str, float], what: str = "") -> None:
    """Every metric of ``slack`` in ``got`` and ``want`` (values or CSV strings) within it."""
    for key, room in slack.items():
        g, w = float(got[key]), float(want[key])
        assert abs(g - w) <= room + 1e-9, f"{what} {key}: {g} against {w}, beyond {room:.3g}" \
            " (what the near-tied queries can move)"


@contextmanager
def recorded_validation() -> Iterator[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``(image_emb, text_emb, text_to_image)`` of every validation a training in this process
    runs, in order (the engine's call of ``retrieval_metrics``, the one validation makes)."""
    from crossalign.train import engine

    real, seen = engine.retrieval_metrics, []

    def record(image_emb, text_emb, text_to_image, *args, **kwargs):
        seen.append(tuple(np.array(a) for a in (image_emb, text_emb, text_to_image)))
        return real(image_emb, text_emb, text_to_image, *args, **kwargs)

    engine.retrieval_metrics = record
    try:
        yield seen
    finally:
        engine.retrieval_metrics = real
