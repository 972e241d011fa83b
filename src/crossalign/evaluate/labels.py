"""Label agreement of a ranking: do the top results share the query's class, even where the
exact item is missed?

Exact-match recall counts only the one paired item; on posters with synopses a result of
the query's genre is what a user calls a good one. With a label column (``genre``; several
classes in one value joined by ``|``) every query and every item has a set of classes, and an
item is *relevant* to a query when the two share any class. Over the full ranking of each
query (from the embeddings, the same scores as Recall@K), in both directions:

- ``precision@K``: the share of the top K that is relevant;
- ``R-precision``: precision at R, where R is the number of relevant items of the query;
- ``MAP@R`` (Musgrave et al., "A metric learning reality check", 2020): the mean over the
  first R ranks of the precision at each relevant rank, ``(1/R) sum_i P(i) rel(i)``;
- ``Jaccard@K``: the mean Jaccard index between the query's and each top-K item's classes
  (1 where the sets are equal; with one class per value it equals precision@K).

Beside each, its chance level: what a ranking in random order scores in expectation. For
precision@K and R-precision that is R / N; for MAP@R it is
``(1/R) sum_{i<=R} (p / i) (1 + (i - 1)(R - 1)/(N - 1))`` with p = R / N (the expected
precision at rank i of a random permutation, given rank i is relevant); for Jaccard@K the
mean Jaccard index of the query to every item. Each is averaged over the queries.

Per class: the same figures over the queries holding that class (a query with several
classes counts in each). Queries without a label are left out; items without one are never
relevant; both counts are reported.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crossalign.errors import ConfigError

__all__ = ["parse_classes", "label_agreement", "agreement_both", "SEPARATOR"]

SEPARATOR = "|"
CHUNK = 1024  # queries ranked at a time


def parse_classes(value) -> frozenset[str]:
    """The classes of one label value (``"drama|crime"`` -> {drama, crime}; empty for None)."""
    if value is None:
        return frozenset()
    if isinstance(value, (list, tuple, set, frozenset)):  # a JSON list of classes
        return frozenset(c for v in value for c in parse_classes(v))
    if isinstance(value, float) and np.isnan(value):
        return frozenset()
    return frozenset(c.strip() for c in str(value).split(SEPARATOR) if c.strip())


def _encode(query_sets: Sequence[frozenset], item_sets: Sequence[frozenset]) -> tuple[np.ndarray, np.ndarray, list]:
    """Multi-hot matrices [n, C] of the query and item classes, and the class names."""
    names = sorted(set().union(*query_sets, *item_sets)) if (query_sets or item_sets) else []
    col = {c: j for j, c in enumerate(names)}
    q = np.zeros((len(query_sets), len(names)), np.float32)
    it = np.zeros((len(item_sets), len(names)), np.float32)
    for m, sets in ((q, query_sets), (it, item_sets)):
        for r, s in enumerate(sets):
            for c in s:
                m[r, col[c]] = 1
    return q, it, names


def _map_at_r_chance(r: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(len(r))
    for k, rr in enumerate(r.astype(int)):
        if rr == 0:
            continue
        i = np.arange(1, rr + 1)
        p = rr / n
        tail = (i - 1) * (rr - 1) / (n - 1) if n > 1 else 0
        out[k] = np.sum(p / i * (1 + tail)) / rr
    return out


def label_agreement(query_emb: np.ndarray, item_emb: np.ndarray, query_sets: Sequence[frozenset],
                    item_sets: Sequence[frozenset], ks: Sequence[int] = (1, 5, 10), scores_fn=None) -> dict:
    """Label agreement of ranking ``item_emb`` for each of ``query_emb`` (rows unit vectors).

    ``query_sets`` / ``item_sets``: the classes of each query and item (:func:`parse_classes`).
    ``scores_fn``: the ranking's :data:`~crossalign.evaluate.retrieval.ScoreFn` (a block of cosine
    similarities -> the scores ranked; None for plain cosine), as Recall@K ranks.
    Returns overall figures, their chance levels, and per-class figures.
    """
    if len(query_emb) != len(query_sets) or len(item_emb) != len(item_sets):
        raise ValueError("one class set per query and per item")
    ks = sorted({int(k) for k in ks})
    labelled = np.array([bool(s) for s in query_sets], bool)
    qrows = np.flatnonzero(labelled)
    n = len(item_emb)
    qm, im, names = _encode([query_sets[i] for i in qrows], item_sets)
    out = {"queries": int(len(qrows)), "queries_unlabelled": int((~labelled).sum()),
           "items": n, "items_unlabelled": int(sum(not s for s in item_sets)), "classes": len(names)}
    if len(qrows) == 0 or n == 0:
        raise ConfigError("no query has a label to agree with: the label column is empty here")
    item_sizes = im.sum(1)
    per = {f"precision@{k}": np.zeros(len(qrows)) for k in ks}
    per.update({f"jaccard@{k}": np.zeros(len(qrows)) for k in ks})
    per["r_precision"], per["map@r"] = np.zeros(len(qrows)), np.zeros(len(qrows))
    chance = {k: np.zeros(len(qrows)) for k in ("precision", "jaccard", "map@r")}
    r_all = np.zeros(len(qrows))
    for s in range(0, len(qrows), CHUNK):
        rows = qrows[s:s + CHUNK]
        qpart = qm[s:s + CHUNK]
        inter = qpart @ im.T  # [m, n] shared classes
        rel = inter > 0
        union = qpart.sum(1, keepdims=True) + item_sizes[None, :] - inter
        jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        scores = np.asarray(query_emb[rows], np.float32) @ np.asarray(item_emb, np.float32).T
        if scores_fn is not None:
            import torch

            scores = scores_fn(torch.from_numpy(scores)).numpy()
        order = np.argsort(-scores, axis=1, kind="stable")
        rel_sorted = np.take_along_axis(rel, order, 1)
        jac_sorted = np.take_along_axis(jac, order, 1)
        r = rel.sum(1)
        r_all[s:s + len(rows)] = r
        hits = np.cumsum(rel_sorted, 1)  # [m, n] relevant items within the first i
        ranks = np.arange(1, n + 1)
        part = slice(s, s + len(rows))
        for k in ks:
            kk = min(k, n)
            per[f"precision@{k}"][part] = hits[:, kk - 1] / k
            per[f"jaccard@{k}"][part] = jac_sorted[:, :kk].sum(1) / k
        some = r > 0  # a query no item agrees with scores 0
        safe = np.maximum(r, 1)
        per["r_precision"][part] = np.where(some, hits[np.arange(len(rows)), safe - 1] / safe, 0.0)
        within = ranks[None, :] <= r[:, None]  # the first R ranks
        per["map@r"][part] = np.where(some, (hits / ranks * (rel_sorted & within)).sum(1) / safe, 0.0)
        chance["precision"][s:s + len(rows)] = r / n
        chance["jaccard"][s:s + len(rows)] = jac.mean(1)
    chance["map@r"] = _map_at_r_chance(r_all, n)
    out.update({k: float(v.mean()) for k, v in per.items()})
    out["chance"] = {**{f"precision@{k}": float(chance["precision"].mean()) for k in ks},
                     **{f"jaccard@{k}": float(chance["jaccard"].mean()) for k in ks},
                     "r_precision": float(chance["precision"].mean()), "map@r": float(chance["map@r"].mean())}
    out["mean_relevant"] = float(r_all.mean())
    classes = {}
    for c, name in enumerate(names):
        holds = qm[:, c] > 0
        if not holds.any():
            continue
        classes[name] = {"queries": int(holds.sum()),
                         **{k: float(v[holds].mean()) for k, v in per.items()},
                         "chance_precision": float(chance["precision"][holds].mean())}
    out["per_class"] = classes
    return out


def agreement_both(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
                   image_labels: Sequence, ks: Sequence[int] = (1, 5, 10), t2i_scores=None,
                   i2t_scores=None) -> dict:
    """:func:`label_agreement` in both directions of a paired set: captions carry their
    image's label; text->image ranks the images for each caption, image->text the captions
    for each image."""
    img_sets = [parse_classes(v) for v in image_labels]
    cap_sets = [img_sets[i] for i in np.asarray(text_to_image)]
    return {"t2i": label_agreement(text_emb, image_emb, cap_sets, img_sets, ks, t2i_scores),
            "i2t": label_agreement(image_emb, text_emb, img_sets, cap_sets, ks, i2t_scores),
            "rule": "an item is relevant when it shares any class with the query (classes joined by "
                    f"'{SEPARATOR}'); chance is the expectation under a ranking in random order"}
