"""Synthetic embeddings shaped like real ones: a mixture of per-cluster Gaussians fitted to a
trained run's vectors, as NVIDIA cuVS's generator and the ANN benchmarks' "realistic" sets do.

Uniform random unit vectors are equally far from one another, which no embedding space is:
real image and caption vectors crowd into topics, each cluster with its own spread and
shape. :func:`fit` clusters real vectors (spherical k-means) and fits each cluster a mean and
a full covariance (Ledoit-Wolf shrinkage, since a cluster holds fewer vectors than there are
dimensions); :func:`draw` samples the mixture in chunks and normalises each draw to unit
length, as the towers' outputs are. Fitted separately to image vectors and to caption
vectors, the two mixtures keep the modality gap: text-like queries sit apart from the
image-like vectors they look for, as real text queries do.

:func:`profile` describes a set by the cosine of each vector to its cluster's centre (how
tight the clusters are; the "norm profile" of a unit-norm set) and by each query's best
score over a base set, so a fit is checked against the real vectors it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class Mixture:
    weights: np.ndarray  # [k] share of the vectors in each cluster
    means: np.ndarray  # [k, dim]
    chols: np.ndarray  # [k, dim, dim] lower Cholesky factors of the covariances
    centres: np.ndarray  # [k, dim] unit k-means centres (for the profile)

    @property
    def dim(self) -> int:
        return self.means.shape[1]


def _ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """The Ledoit-Wolf shrunk covariance of centred rows ``x`` ([n, d]), towards a scaled identity."""
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta = np.sum((s - mu * np.eye(d)) ** 2) / d
    sq = np.sum(x * x, axis=1)
    # sum_i ||x_i x_i^T - S||_F^2 = sum_i (||x_i||^4 - 2 x_i^T S x_i) + n ||S||_F^2
    beta = (np.sum(sq ** 2) - 2 * np.einsum("ij,jk,ik->", x, s, x) + n * np.sum(s * s)) / (n * n * d)
    alpha = min(beta, delta) / delta if delta > 0 else 1.0
    return (1 - alpha) * s + alpha * mu * np.eye(d)


def fit(vectors: np.ndarray, clusters: int, seed: int = 0) -> Mixture:
    """A mixture of ``clusters`` Gaussians fitted to unit ``vectors`` ([n, dim])."""
    import faiss

    x = np.ascontiguousarray(vectors, np.float32)
    n, dim = x.shape
    km = faiss.Kmeans(dim, clusters, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    weights, means, chols, centres = [], [], [], []
    for c in range(clusters):
        pts = x[assign == c].astype(np.float64)
        if len(pts) < 2:
            continue
        mean = pts.mean(0)
        cov = _ledoit_wolf(pts - mean)
        weights.append(len(pts))
        means.append(mean)
        chols.append(np.linalg.cholesky(cov + 1e-10 * np.eye(dim)))
        centres.append(km.centroids[c])
    w = np.asarray(weights, np.float64)
    return Mixture(w / w.sum(), np.asarray(means), np.asarray(chols), np.asarray(centres, np.float32))


def draw(mix: Mixture, n: int, seed: int, chunk: int = 200_000) -> Iterator[np.ndarray]:
    """``n`` unit vectors from the mixture, ``chunk`` at a time (float32 [m, dim])."""
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        comp = rng.choice(len(mix.weights), size=m, p=mix.weights)
        out = np.empty((m, mix.dim), np.float32)
        for c in np.unique(comp):
            where = np.flatnonzero(comp == c)
            z = rng.standard_normal((len(where), mix.dim))
            out[where] = z @ mix.chols[c].T + mix.means[c]
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        yield out


def draw_all(mix: Mixture, n: int, seed: int) -> np.ndarray:
    return np.concatenate(list(draw(mix, n, seed)))


def profile(mix: Mixture, vectors: np.ndarray) -> tuple[float, float, float]:
    """p10 / p50 / p90 of each vector's cosine to its nearest cluster centre."""
    best = (np.asarray(vectors, np.float32) @ mix.centres.T).max(1)
    return tuple(float(v) for v in np.percentile(best, [10, 50, 90]))


def best_scores(queries: np.ndarray, base: np.ndarray) -> tuple[float, float, float]:
    """p10 / p50 / p90 of each query's best inner product over ``base``."""
    best = np.concatenate([(queries[s:s + 1024] @ base.T).max(1) for s in range(0, len(queries), 1024)])
    return tuple(float(v) for v in np.percentile(best, [10, 50, 90]))
