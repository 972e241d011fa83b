"""Cross-modal retrieval from embeddings: ranks, top-K lists, metrics, the distance matrix.

One matrix product per block of queries, never a forward per pair. Several captions per
image are counted with a matrix of correct pairs, as CLIP_benchmark does: a caption query
hits when its image ranks in the top K; an image query hits when any of its captions does.
The rank of an image query is that of its best-ranked caption.

Memory stays bounded at any size: queries are scored in row blocks against the whole
gallery, and a block holds at most ``max_bytes`` (its float32 scores plus the masks built
from them), so 25,000 images x 125,000 captions never need the full 12 GB matrix.

Ties count against the query: the correct item ranks after every wrong item that scores
the same, so a constant (or collapsed) model cannot look better than chance.

Scores are cosine similarities unless a ranking option (``crossalign.evaluate.ranking``) hands
in a function that turns each block of similarities into the scores to rank, such as
query-bank normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from crossalign.errors import ConfigError

__all__ = ["retrieval_metrics", "metrics_from_ranks", "ranks_t2i", "ranks_i2t", "rank_summary", "TopK", "Retrieval",
           "retrieve", "topk", "block_rows", "write_distance_matrix", "MATRIX_MAX_CELLS",
           "BLOCK_BYTES", "ScoreFn", "ranking_name"]

BLOCK_BYTES = 256 * 2**20  # one block of scores and its masks; the peak is about this plus the inputs
# bytes per cell of a block: float32 scores, a bool mask, and for the matrix file a float32
# distance and its float16 copy
_BYTES_PER_CELL = 11
MATRIX_MAX_CELLS = 20_000 * 100_000  # above this, keep top-K lists and ranks instead


@dataclass
class TopK:
    """The ``k`` best gallery items per query, best first (order among equal scores unspecified).

    ``scores`` are what the ranking ordered by: cosine similarity under ``plain``, and under
    ``qbnorm`` a query-bank-normalised log score (not a cosine, see
    :mod:`crossalign.evaluate.ranking`). ``cosine`` is always the cosine similarity of the pair.
    """

    indices: np.ndarray  # [n_queries, k] gallery rows
    scores: np.ndarray  # [n_queries, k] the ranking's scores
    cosine: np.ndarray  # [n_queries, k] cosine similarity (the same array as scores under plain)
    ranking: str = "plain"  # which ranking produced scores: plain, qbnorm, or custom


@dataclass
class Retrieval:
    """Ranks (when the correct pairs are known) and top-K lists in both directions."""

    t2i_ranks: np.ndarray | None  # [n_captions] 1-based rank of the caption's image
    i2t_ranks: np.ndarray | None  # [n_images] 1-based rank of the image's best caption
    t2i: TopK | None  # caption queries -> image rows
    i2t: TopK | None  # image queries -> caption rows
    t2i_scores: "ScoreFn | None" = None  # the ranking that ordered images (None: cosine)
    i2t_scores: "ScoreFn | None" = None  # the ranking that ordered captions


def _as_float(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    t = t.detach().cpu().float()
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [n, dim] array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        # NaN scores compare false with everything, which would rank every query first
        raise ValueError(f"{name}: embeddings contain NaN or infinite values")
    return t


def _check(img: torch.Tensor, txt: torch.Tensor, text_to_image) -> torch.Tensor:
    """The caption -> image index as a tensor, after checking it fits the embeddings."""
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image and text embeddings differ in width: {img.shape[1]} vs {txt.shape[1]}")
    t2i = torch.as_tensor(np.asarray(text_to_image), dtype=torch.long).reshape(-1)
    if t2i.numel() != txt.shape[0]:
        raise ValueError(f"text_to_image has {t2i.numel()} entries for {txt.shape[0]} captions")
    if t2i.numel() and (int(t2i.min()) < 0 or int(t2i.max()) >= img.shape[0]):
        raise ValueError(f"text_to_image holds an index outside 0..{img.shape[0] - 1}")
    return t2i


def block_rows(n_gallery: int, max_bytes: int = BLOCK_BYTES) -> int:
    """Queries per block so that a ``[rows, n_gallery]`` block and its masks fit ``max_bytes``."""
    return max(1, int(max_bytes) // (max(1, n_gallery) * _BYTES_PER_CELL))


# turns a [rows, n_gallery] block of cosine similarities into the scores ranked (may work in
# place); its ``ranking`` attribute, where it has one, names it in TopK
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def ranking_name(scores: ScoreFn | None) -> str:
    """``plain`` for cosine (None), else the score function's ``ranking`` name (or ``custom``)."""
    return "plain" if scores is None else str(getattr(scores, "ranking", "custom"))


def _pair_cosine(queries: torch.Tensor, gallery: torch.Tensor, indices: np.ndarray,
                 max_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Cosine similarity ``[n, k]`` of each query with its listed gallery rows, in bounded blocks."""
    n, k = indices.shape
    out = np.zeros((n, k), np.float32)
    rows = max(1, max_bytes // max(1, k * queries.shape[1] * 4))  # a [rows, k, dim] gather fits
    idx = torch.from_numpy(indices)
    for s in range(0, n, rows):
        picked = gallery[idx[s:s + rows]]  # [rows, k, dim]
        out[s:s + rows] = torch.einsum("rd,rkd->rk", queries[s:s + rows], picked).numpy()
    return out


def _blocks(queries: torch.Tensor, gallery: torch.Tensor, rows: int,
            scores: ScoreFn | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    for s in range(0, queries.shape[0], rows):
        e = min(s + rows, queries.shape[0])
        sim = queries[s:e] @ gallery.T  # [rows, n_gallery]
        yield s, e, sim if scores is None else scores(sim)


def _count_true(mask: torch.Tensor, group: int = 255) -> torch.Tensor:
    """Row sums of a bool ``[rows, n]`` mask without an int64 copy of it.

    ``mask.sum(1)`` first casts the whole block to int64 (8 bytes a cell, and slow); summing
    groups of 255 as uint8 cannot overflow and keeps the temporaries 255 times smaller.
    """
    rows, n = mask.shape
    u8 = mask.view(torch.uint8)
    q = n // group
    out = u8[:, :q * group].reshape(rows, q, group).sum(2, dtype=torch.uint8).sum(1)  # [rows]
    if n > q * group:
        out += u8[:, q * group:].sum(1)
    return out


def _t2i_block(sim: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    correct = sim.gather(1, targets[:, None])  # [rows, 1]
    return _count_true(sim >= correct)  # the image itself plus every image scoring at least as well


class _Positives:
    """For a block of image queries, where their captions sit in the score block."""

    def __init__(self, t2i: torch.Tensor, n_images: int) -> None:
        counts = torch.bincount(t2i, minlength=n_images)
        if n_images and int(counts.min()) == 0:
            raise ValueError(f"{int((counts == 0).sum())} image(s) have no caption: an image query "
                             f"needs at least one correct caption")
        self.t2i = t2i
        self.order = torch.argsort(t2i, stable=True)  # captions grouped by image
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    def rank_block(self, s: int, e: int, sim: torch.Tensor) -> torch.Tensor:
        cols = self.order[self.starts[s]:self.starts[e]]  # captions of images s..e-1
        rows = self.t2i[cols] - s  # their row in the block
        pos = sim[rows, cols]  # [n_pos] taken from this block, so comparisons are exact
        best = torch.full((e - s,), -torch.inf).scatter_reduce(0, rows, pos, "amax")  # [rows]
        at_least = _count_true(sim >= best[:, None])  # all captions scoring >= the best correct one
        pos_at_least = torch.zeros(e - s, dtype=torch.long).scatter_add_(0, rows, (pos >= best[rows]).long())
        return at_least - pos_at_least + 1  # wrong captions at least as good, plus one


def _scan(queries: torch.Tensor, gallery: torch.Tensor, k: int, rows: int,
          rank_block: Callable[[int, int, torch.Tensor], torch.Tensor] | None,
          scores: ScoreFn | None = None) -> tuple[np.ndarray | None, TopK | None]:
    """One pass over the score blocks: ranks (if ``rank_block``) and the top ``k`` (if k > 0)."""
    n, k = queries.shape[0], min(k, gallery.shape[0])
    # outputs are allocated once, up front: small results kept from each block would sit
    # between the freed blocks on the heap and stop the allocator giving them back
    ranks = np.zeros(n, dtype=np.int64) if rank_block is not None else None
    top = None
    if k > 0:
        top_scores = np.zeros((n, k), np.float32)
        cosine = top_scores if scores is None else np.zeros((n, k), np.float32)
        top = TopK(np.zeros((n, k), np.int64), top_scores, cosine, ranking_name(scores))
    for s, e, sim in _blocks(queries, gallery, rows, scores):
        if ranks is not None:
            ranks[s:e] = rank_block(s, e, sim).numpy()
        if top is not None:
            v, i = sim.topk(k, dim=1)  # [rows, k]
            top.indices[s:e], top.scores[s:e] = i.numpy(), v.numpy()
            del v, i
        del sim  # free this block before the next one is computed
    if top is not None and scores is not None:  # the score block was transformed: cosines anew
        top.cosine[:] = _pair_cosine(queries, gallery, top.indices)
    return ranks, top


def _rows(n_gallery: int, chunk: int | None, max_bytes: int) -> int:
    rows = block_rows(n_gallery, max_bytes)
    return min(rows, chunk) if chunk else rows


def ranks_t2i(image_emb, text_emb, text_to_image, chunk: int | None = None, *,
              max_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """1-based rank of the correct image for every caption query ``[n_captions]``.

    ``chunk`` caps the captions per block; the block also stays under ``max_bytes``.
    """
    img, txt = _as_float(image_emb, "image_emb"), _as_float(text_emb, "text_emb")
    t2i = _check(img, txt, text_to_image)
    ranks, _ = _scan(txt, img, 0, _rows(img.shape[0], chunk, max_bytes),
                     lambda s, e, sim: _t2i_block(sim, t2i[s:e]))
    return ranks


def ranks_i2t(image_emb, text_emb, text_to_image, chunk: int | None = None, *,
              max_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """1-based rank of the best-ranked correct caption for every image query ``[n_images]``."""
    img, txt = _as_float(image_emb, "image_emb"), _as_float(text_emb, "text_emb")
    pos = _Positives(_check(img, txt, text_to_image), img.shape[0])
    ranks, _ = _scan(img, txt, 0, _rows(txt.shape[0], chunk, max_bytes), pos.rank_block)
    return ranks


def topk(queries, gallery, k: int = 10, *, max_bytes: int = BLOCK_BYTES,
         scores: ScoreFn | None = None) -> TopK:
    """The ``k`` best-scoring gallery rows for every query, with bounded memory.

    ``scores`` turns each block of cosine similarities into the scores ranked (default: cosine).
    """
    q, g = _as_float(queries, "queries"), _as_float(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries and gallery differ in width: {q.shape[1]} vs {g.shape[1]}")
    _, top = _scan(q, g, max(1, k), block_rows(g.shape[0], max_bytes), None, scores)
    return top


def retrieve(image_emb, text_emb, text_to_image=None, k: int = 10, *,
             max_bytes: int = BLOCK_BYTES, t2i_scores: ScoreFn | None = None,
             i2t_scores: ScoreFn | None = None) -> Retrieval:
    """Top-K lists in both directions and, given the correct pairs, ranks, in one pass each way.

    Args:
        image_emb: ``[n_images, dim]`` L2-normalised.
        text_emb: ``[n_captions, dim]`` L2-normalised.
        text_to_image: ``[n_captions]`` index of each caption's image, or None (no ranks).
        k: length of the lists (0: ranks only).
        max_bytes: memory bound of one block of scores.
        t2i_scores: turns a ``[captions, n_images]`` block of cosine similarities into the
            scores that rank images (a :class:`crossalign.evaluate.ranking.BankNorm`); None: cosine.
        i2t_scores: the same for ``[images, n_captions]`` blocks ranking captions.
    """
    img, txt = _as_float(image_emb, "image_emb"), _as_float(text_emb, "text_emb")
    if text_to_image is None:
        if img.shape[1] != txt.shape[1]:
            raise ValueError(f"image and text embeddings differ in width: {img.shape[1]} vs {txt.shape[1]}")
        t_rank = i_rank = None
    else:
        t2i = _check(img, txt, text_to_image)
        t_rank = lambda s, e, sim: _t2i_block(sim, t2i[s:e])  # noqa: E731
        i_rank = _Positives(t2i, img.shape[0]).rank_block
    r_t, top_t = _scan(txt, img, k, block_rows(img.shape[0], max_bytes), t_rank, t2i_scores)
    r_i, top_i = _scan(img, txt, k, block_rows(txt.shape[0], max_bytes), i_rank, i2t_scores)
    return Retrieval(r_t, r_i, top_t, top_i, t2i_scores, i2t_scores)


def rank_summary(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """Recall@K (%), median and mean rank, MRR and top-1 accuracy (%) of 1-based ranks."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {f"{prefix}_R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    out[f"{prefix}_mrr"] = float(np.mean(1.0 / ranks))
    # with ties counted against the query, top-1 accuracy on the distance matrix is R@1
    out[f"{prefix}_top1"] = float(100.0 * np.mean(ranks == 1))
    return out


def retrieval_metrics(image_emb, text_emb, text_to_image, ks: Sequence[int] = (1, 5, 10), *,
                      max_bytes: int = BLOCK_BYTES) -> dict[str, float]:
    """Recall@K, median and mean rank, MRR and top-1 in both directions, plus R-sum.

    Args:
        image_emb: ``[n_images, dim]`` L2-normalised.
        text_emb: ``[n_captions, dim]`` L2-normalised.
        text_to_image: ``[n_captions]`` index of each caption's image.
        ks: the K of Recall@K; R-sum adds R@K over these K in both directions.
        max_bytes: memory bound of one block of scores.
    """
    res = retrieve(image_emb, text_emb, text_to_image, k=0, max_bytes=max_bytes)
    return metrics_from_ranks(res.t2i_ranks, res.i2t_ranks, ks)


def metrics_from_ranks(t2i_ranks: np.ndarray, i2t_ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The metrics of :func:`retrieval_metrics` from ranks already computed (by :func:`retrieve`)."""
    out = {**rank_summary(t2i_ranks, ks, "t2i"), **rank_summary(i2t_ranks, ks, "i2t")}
    out["rsum"] = float(sum(out[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in ks))
    out["n_images"] = int(len(i2t_ranks))
    out["n_captions"] = int(len(t2i_ranks))
    return out


def write_distance_matrix(path: str | Path, image_emb, text_emb, float16: bool = False, *,
                          max_cells: int = MATRIX_MAX_CELLS, max_bytes: int = BLOCK_BYTES) -> Path:
    """Write the cosine distance matrix ``1 - cos`` as ``.npy``: rows images, columns captions.

    Written block by block into a memory-mapped file, so memory stays bounded; refused
    above ``max_cells`` entries, where the top-K lists and ranks are the thing to keep.
    """
    from crossalign._io import atomic_path

    img, txt = _as_float(image_emb, "image_emb"), _as_float(text_emb, "text_emb")
    cells = img.shape[0] * txt.shape[0]
    if cells > max_cells:
        raise ConfigError(f"{path}: a {img.shape[0]:,} x {txt.shape[0]:,} distance matrix has {cells:,} "
                         f"entries, above the limit of {max_cells:,}; keep top-K lists and ranks instead")
    dtype = np.float16 if float16 else np.float32
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(img.shape[0], txt.shape[0]))
        for s, e, sim in _blocks(img, txt, block_rows(txt.shape[0], max_bytes)):
            out[s:e] = (1.0 - sim).numpy().astype(dtype, copy=False)  # [rows, n_captions]
            del sim
        out.flush()
        del out
    return Path(path)
