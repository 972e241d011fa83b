"""Cross-modal retrieval metrics from embeddings: one matrix product, never a forward per pair.

Several captions per image are counted with a matrix of correct pairs, as CLIP_benchmark
does: a caption query hits when its image ranks in the top K; an image query hits when
any of its captions does. The rank of an image query is that of its best-ranked caption.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["retrieval_metrics", "ranks_t2i", "ranks_i2t"]


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def ranks_t2i(image_emb, text_emb, text_to_image, chunk: int = 4096) -> np.ndarray:
    """1-based rank of the correct image for every caption query.

    Ties count against the query (the correct image ranks after every image that scores
    the same), so a constant model cannot look better than chance.
    """
    img, txt = _as_tensor(image_emb).float(), _as_tensor(text_emb).float()
    t2i = _as_tensor(np.asarray(text_to_image)).long()
    out = []
    for s in range(0, txt.shape[0], chunk):
        sim = txt[s:s + chunk] @ img.T  # [chunk, n_images]
        correct = sim.gather(1, t2i[s:s + chunk, None])  # [chunk, 1]
        out.append((sim >= correct).sum(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def ranks_i2t(image_emb, text_emb, text_to_image, chunk: int = 1024) -> np.ndarray:
    """1-based rank of the best-ranked correct caption for every image query."""
    img, txt = _as_tensor(image_emb).float(), _as_tensor(text_emb).float()
    t2i = _as_tensor(np.asarray(text_to_image)).long()
    out = []
    for s in range(0, img.shape[0], chunk):
        sim = img[s:s + chunk] @ txt.T  # [chunk, n_captions]
        rows = torch.arange(s, min(s + chunk, img.shape[0]))
        is_pos = t2i[None, :] == rows[:, None]  # [chunk, n_captions]
        best_pos = sim.masked_fill(~is_pos, float("-inf")).max(1, keepdim=True).values
        # negatives scoring at least the best positive, plus the best positive itself
        out.append(((sim >= best_pos) & ~is_pos).sum(1) + 1)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def _summary(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    out = {f"{prefix}_R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    out[f"{prefix}_mrr"] = float(np.mean(1.0 / ranks))
    out[f"{prefix}_top1"] = float(100.0 * np.mean(ranks == 1))
    return out


def retrieval_metrics(image_emb, text_emb, text_to_image, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K, median and mean rank, MRR and top-1 in both directions, plus R-sum.

    Args:
        image_emb: ``[n_images, dim]`` L2-normalised.
        text_emb: ``[n_captions, dim]`` L2-normalised.
        text_to_image: ``[n_captions]`` index of each caption's image.
        ks: the K of Recall@K.
    """
    t2i = ranks_t2i(image_emb, text_emb, text_to_image)
    i2t = ranks_i2t(image_emb, text_emb, text_to_image)
    out = {**_summary(t2i, ks, "t2i"), **_summary(i2t, ks, "i2t")}
    out["rsum"] = float(sum(out[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in ks))
    out["n_images"] = int(len(i2t))
    out["n_captions"] = int(len(t2i))
    return out
