"""Search parameters that meet a recall target, measured on the index's own vectors.

An approximate index answers a query in two steps: FAISS proposes ``k * rerank`` candidates
(HNSW visiting ``efSearch`` nodes, IVF-PQ scanning ``nprobe`` lists of compressed codes), and
the candidates are scored exactly against the stored vectors. How many nodes, lists and
candidates a given recall needs depends on the data, and most of all on the queries: text
queries sit apart from the images they look for (the modality gap), and cost a graph far
more than image queries do. So :func:`set_recall` measures it: for a held sample of queries (the
other target's vectors, which an index over images never holds, and some of the target's
own) it finds the exact top ``k`` by brute force, then takes the fastest parameters whose
recall@k reaches the target for each kind of query apart (text queries over images must not
borrow recall from the easier image queries), and with a margin for the sample: the one-sided
95 % lower bound of each group's mean recall must reach the target, so that queries the
measurement never saw get it too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Tuned", "set_recall", "tuned_params", "apply_params", "approximate_top", "exact_top", "recall_at",
           "DEFAULT_RECALL", "RECALL_K"]

DEFAULT_RECALL = 0.95
RERANK = 4  # candidates per result of an index built without tuned parameters
RECALL_K = 10
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
RERANK_GRID = {"hnsw": (2, 4, 8), "ivf": (4, 8, 16, 32, 64, 128, 256)}
CHUNK = 65_536  # stored vectors scored at a time by brute force
Z_LOWER = 1.645  # one-sided 95 % normal bound on a group's mean recall


@dataclass
class Tuned:
    """What :func:`set_recall` chose and what it measured."""

    params: dict  # {"efSearch": ..} or {"nprobe": ..}, and "rerank"
    recall: float  # recall@k of the sample with these parameters (its worst group's mean)
    target: float
    ms: float  # mean milliseconds per query of the sample (batched, this machine)
    queries: int
    met: bool  # False: no parameters tried reached the target; the best ones tried are kept
    groups: dict = field(default_factory=dict)  # query group -> its mean recall@k

    def to_dict(self) -> dict:
        return asdict(self)


def _kind(index) -> str:
    return "hnsw" if hasattr(index, "hnsw") else "ivf"


def tuned_params(info: dict, target: str) -> tuple[dict, int]:
    """The search breadth a build recorded for ``target`` (``{}`` when none) and its
    re-scoring depth (:data:`RERANK` when none)."""
    params = dict(info.get("search", {}).get(target, {}).get("params", {}))
    return params, int(params.pop("rerank", RERANK))


def apply_params(index, params: dict) -> None:
    """Set an index's search breadth (``efSearch`` or ``nprobe``) from ``params``."""
    import faiss

    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])
    if "nprobe" in params:
        try:
            faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        except (RuntimeError, TypeError, AttributeError):
            pass


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows ``[m, k]`` of the ``k`` best stored vectors per query by inner product, best
    first; ``vectors`` may be a memory-mapped array of any float type, read a chunk at a time."""
    m, n = len(queries), len(vectors)
    k = min(k, n)
    best_s = np.full((m, 0), -np.inf, np.float32)
    best_r = np.zeros((m, 0), np.int64)
    q = np.ascontiguousarray(queries, np.float32)
    for s in range(0, n, CHUNK):
        block = np.asarray(vectors[s:s + CHUNK], np.float32)  # [chunk, dim]
        scores = q @ block.T  # [m, chunk]
        rows = np.broadcast_to(np.arange(s, s + len(block)), scores.shape)
        all_s = np.concatenate([best_s, scores], 1)
        all_r = np.concatenate([best_r, rows], 1)
        part = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, part, 1)
        best_r = np.take_along_axis(all_r, part, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_r, order, 1)


def approximate_top(index, vectors: np.ndarray, queries: np.ndarray, k: int,
                    rerank: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows and exact scores ``[m, k]`` (row -1, score -inf where fewer were found): FAISS's
    ``k * rerank`` candidates per query, scored exactly against ``vectors``."""
    fetch = min(index.ntotal, k * rerank)
    q = np.ascontiguousarray(queries, np.float32)
    if params is None:
        _, cand = index.search(q, fetch)  # [m, fetch]
    else:
        # faiss.contrib.torch_utils (imported by pytorch-metric-learning, for one) replaces
        # Index.search with a wrapper that takes no search parameters and keeps the original
        # as search_numpy
        search = getattr(index, "search_numpy", index.search)
        _, cand = search(q, fetch, params=params)
    rows = np.full((len(q), k), -1, np.int64)
    scores = np.full((len(q), k), -np.inf, np.float32)
    for i, c in enumerate(cand):
        c = np.sort(c[c >= 0])
        if len(c) == 0:
            continue
        s = np.asarray(vectors[c], np.float32) @ q[i]
        order = np.argsort(-s, kind="stable")[:k]
        rows[i, :len(order)], scores[i, :len(order)] = c[order], s[order]
    return rows, scores


def recalls(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each query's share of its true top k that ``found`` holds."""
    k = truth.shape[1]
    return np.array([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)])


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top k that ``found`` holds."""
    return float(np.mean(recalls(found, truth)))


def _judge(per_query: np.ndarray, groups: np.ndarray, target: float) -> tuple[bool, float, dict]:
    """Whether every group's lower bound reaches ``target``, the worst group's mean, and each
    group's mean."""
    means, met = {}, True
    for g in dict.fromkeys(groups.tolist()):
        r = per_query[groups == g]
        means[str(g)] = round(float(r.mean()), 4)
        se = float(r.std(ddof=1)) / np.sqrt(len(r)) if len(r) > 1 else 0.0
        met = met and bool(r.mean() - Z_LOWER * se >= target - 1e-12)
    return met, min(means.values()), means


def _grid(kind: str, index) -> list[dict]:
    if kind == "hnsw":
        return [{"efSearch": ef} for ef in EF_GRID]
    import faiss

    nlist = faiss.extract_index_ivf(index).nlist
    return [{"nprobe": p} for p in NPROBE_GRID if p <= nlist] + \
        ([{"nprobe": nlist}] if nlist not in NPROBE_GRID else [])


def set_recall(index, vectors: np.ndarray, queries: np.ndarray, target: float = DEFAULT_RECALL,
               k: int = RECALL_K, groups=None) -> Tuned:
    """The fastest ``efSearch`` / ``nprobe`` and re-scoring depth whose recall@k on
    ``queries`` reaches ``target`` in every group of ``groups`` (a label per query; one group
    when None), by the lower bound of its mean; the most accurate ones tried when none does.

    For each re-scoring depth the breadth grows until the target is met (recall grows with
    both), and among the settings that meet it the fastest measured one wins.
    """
    kind = _kind(index)
    groups = np.zeros(len(queries), int) if groups is None else np.asarray(groups)
    truth = exact_top(vectors, queries, k)
    tried: list[Tuned] = []
    for rerank in RERANK_GRID[kind]:
        for params in _grid(kind, index):
            apply_params(index, params)
            t0 = time.perf_counter()
            found, _ = approximate_top(index, vectors, queries, k, rerank)
            ms = (time.perf_counter() - t0) * 1000 / len(queries)
            met, recall, by_group = _judge(recalls(found, truth), groups, target)
            tried.append(Tuned({**params, "rerank": rerank}, recall, target, ms, len(queries), met,
                               by_group))
            if met:
                break
    met = [t for t in tried if t.met]
    best = min(met, key=lambda t: t.ms) if met else max(tried, key=lambda t: (t.recall, -t.ms))
    apply_params(index, best.params)
    return best
