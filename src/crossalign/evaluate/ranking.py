"""Ranking options: how a block of query-gallery similarities becomes the scores that are ranked.

``plain`` ranks by cosine similarity. ``qbnorm`` is query-bank normalisation with the dynamic
inverted softmax (Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation",
CVPR 2022): a gallery item that is close to many queries (a "hub") is ranked lower, by
dividing ``exp(beta * s(q, g))`` by the same sum over a bank of training queries,
``sum_b exp(beta * s(b, g))``. The division is applied only to a query whose best plain match
lies in the activation set, the gallery items that are among the top ``k`` of some bank
query; other queries keep their plain ranking, which is what makes the softmax "dynamic"
and keeps it from hurting queries far from the bank.

Scores are worked in the log domain, so nothing overflows at any ``beta``:

    normalised(q, g) = beta * s(q, g) - log sum_b exp(beta * s(b, g))   (query normalised)
                     = beta * s(q, g)                                     (otherwise)

Only the order within a query's row matters, so the two kinds of rows may differ in scale.

The bank must come from training queries (training captions for text->image, training
images for image->text), never from the queries being evaluated. Everything here is pure
and works in blocks of bank rows and query rows, so memory stays bounded at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import torch

from crossalign.errors import ConfigError
from crossalign.evaluate.retrieval import BLOCK_BYTES, block_rows

__all__ = ["RANKINGS", "QBNormParams", "BankNorm", "fit_bank", "qbnorm_blocks", "qbnorm_reference"]

RANKINGS = ("plain", "qbnorm")


@dataclass(frozen=True)
class QBNormParams:
    """The two knobs of the dynamic inverted softmax.

    Attributes:
        beta: inverse temperature applied to cosine similarities (the paper uses 20).
        k: a gallery item is in the activation set when it is among the top ``k`` of a bank query.
    """

    beta: float = 20.0
    k: int = 1

    def __post_init__(self) -> None:
        if not (self.beta > 0 and np.isfinite(self.beta)):
            raise ConfigError(f"qbnorm beta (`qb_beta`) must be a positive number, got {self.beta!r}")
        if int(self.k) != self.k or self.k < 1:
            raise ConfigError(f"qbnorm k (the activation-set size) must be a positive integer, got {self.k!r}")


def _tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    t = t.detach().cpu().float()
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [n, dim] array, got shape {tuple(t.shape)}")
    return t


@dataclass
class BankNorm:
    """What the bank tells about each gallery item; call it on score blocks of evaluated queries.

    Attributes:
        log_norm: ``[n_gallery]`` ``log sum_b exp(beta * s(b, g))`` over the bank.
        active: ``[n_gallery]`` True where the item is among the top ``k`` of some bank query.
        beta: the inverse temperature the norm was computed with.
    """

    log_norm: torch.Tensor
    active: torch.Tensor
    beta: float
    ranking: ClassVar[str] = "qbnorm"  # the name top-K lists carry for the scores it makes

    def __call__(self, sim: torch.Tensor) -> torch.Tensor:
        """Normalise a ``[rows, n_gallery]`` block of cosine similarities, in place; returns it."""
        if sim.shape[1] != self.log_norm.shape[0]:
            raise ValueError(f"score block has {sim.shape[1]} gallery columns, the bank norm "
                             f"{self.log_norm.shape[0]}")
        if sim.shape[1] == 0:
            return sim
        normalised = self.active[sim.argmax(1)].to(sim.dtype)  # [rows]: 1 where the query is normalised
        sim.mul_(self.beta)
        # subtract log_norm from the chosen rows only, without a second [rows, n_gallery] block
        return sim.addcmul_(normalised[:, None], self.log_norm[None, :], value=-1.0)

    def summary(self) -> dict:
        """How many gallery items the bank activates (for the metrics JSON)."""
        return {"active_gallery_items": int(self.active.sum()), "gallery_items": int(self.active.numel())}


def fit_bank(gallery: np.ndarray | torch.Tensor, bank: np.ndarray | torch.Tensor,
             params: QBNormParams = QBNormParams(), *, max_bytes: int = BLOCK_BYTES) -> BankNorm:
    """Scan the bank once, in blocks of bank rows: the log-normaliser and the activation set.

    Args:
        gallery: ``[n_gallery, dim]`` L2-normalised gallery embeddings.
        bank: ``[n_bank, dim]`` L2-normalised embeddings of training queries (same modality as
            the evaluated queries).
        params: ``beta`` and ``k``.
        max_bytes: memory bound of one ``[bank rows, n_gallery]`` block.
    """
    g, b = _tensor(gallery, "gallery"), _tensor(bank, "bank")
    if g.shape[1] != b.shape[1]:
        raise ValueError(f"gallery and bank differ in width: {g.shape[1]} vs {b.shape[1]}")
    if b.shape[0] == 0:
        raise ValueError("qbnorm needs a non-empty query bank (training queries)")
    n = g.shape[0]
    log_norm = torch.full((n,), -torch.inf)
    active = torch.zeros(n, dtype=torch.bool)
    k = min(int(params.k), n)
    rows = block_rows(n, max_bytes)
    for s in range(0, b.shape[0], rows):
        sim = b[s:s + rows] @ g.T  # [rows, n_gallery]
        if k:
            active[sim.topk(k, dim=1).indices.reshape(-1)] = True
        sim.mul_(params.beta)
        log_norm = torch.logaddexp(log_norm, torch.logsumexp(sim, dim=0))  # running over blocks
        del sim
    return BankNorm(log_norm, active, float(params.beta))


def qbnorm_blocks(queries: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor,
                  bank: np.ndarray | torch.Tensor, params: QBNormParams = QBNormParams(), *,
                  max_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Normalised scores of every query against the gallery, one block of query rows at a time.

    Yields ``(start, end, scores)`` with ``scores`` of shape ``[end - start, n_gallery]``: the
    rows ``start:end`` of the normalised score matrix. Ranking a row by these scores is the
    QB-Norm ranking of that query.
    """
    q, g = _tensor(queries, "queries"), _tensor(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries and gallery differ in width: {q.shape[1]} vs {g.shape[1]}")
    norm = fit_bank(g, bank, params, max_bytes=max_bytes)
    rows = block_rows(g.shape[0], max_bytes)
    for s in range(0, q.shape[0], rows):
        e = min(s + rows, q.shape[0])
        yield s, e, norm(q[s:e] @ g.T)


def qbnorm_reference(queries: np.ndarray, gallery: np.ndarray, bank: np.ndarray,
                     beta: float = 20.0, k: int = 1) -> np.ndarray:
    """The whole normalised matrix the way the paper's code writes it (float64, small inputs only).

    Rows that are not normalised keep ``exp(beta * s)``; rows that are get it divided by the bank
    sum. The log of this matrix equals what :func:`qbnorm_blocks` yields, up to rounding.
    """
    q, g, b = (np.asarray(x, dtype=np.float64) for x in (queries, gallery, bank))
    bank_sims = np.exp(beta * (b @ g.T))  # [n_bank, n_gallery]
    test_sims = np.exp(beta * (q @ g.T))  # [n_queries, n_gallery]
    retrieved = np.unique(np.argsort(-bank_sims, axis=1, kind="stable")[:, :k])
    rows = np.isin(np.argmax(test_sims, axis=1), retrieved)
    out = test_sims.copy()
    out[rows] = test_sims[rows] / bank_sims.sum(axis=0)
    return out
