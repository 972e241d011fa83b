"""Faithfulness checks of explanations: do the hot regions and top words matter to the model?

- Deletion: blur the hottest share of the image (whole cells of a grid over the tower's
  input) and see how far the similarity falls, against the same share of cells drawn at
  random. Cells, not pixels, so the random deletion removes regions as the hot one does
  (scattered blurred pixels would leave the picture readable and flatter the ratio).
- Word drop: remove the word with the highest score, against a word drawn at random.
- Pointing game: whether the hottest pixel falls inside a named object's box.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["blur", "cell_mask", "deletion_drops", "text_without", "word_drops", "pointing_hit"]


def blur(pixels: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    """A strong Gaussian blur of ``[batch, 3, H, W]`` pixels (what deletion puts in)."""
    from torchvision.transforms.functional import gaussian_blur

    k = int(2 * round(3 * sigma) + 1)
    return gaussian_blur(pixels, [k, k], [sigma, sigma])


def _edges(h: int, w: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(0, h, cells + 1).astype(int), np.linspace(0, w, cells + 1).astype(int)


def _mask_of_cells(cell_scores: np.ndarray, shape: tuple[int, int], frac: float) -> np.ndarray:
    """``[H, W]`` boolean: the ``frac`` of grid cells with the highest ``cell_scores`` ``[cells,
    cells]`` (ties by position)."""
    cells = cell_scores.shape[0]
    ys, xs = _edges(*shape, cells)
    k = max(int(round(frac * cells * cells)), 1)
    mask = np.zeros(shape, bool)
    for c in np.argsort(-cell_scores.ravel(), kind="stable")[:k]:
        i, j = divmod(int(c), cells)
        mask[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = True
    return mask


def cell_mask(score: np.ndarray, frac: float, cells: int) -> np.ndarray:
    """``[H, W]`` boolean: the ``frac`` of ``cells`` x ``cells`` grid cells with the highest mean
    ``score``."""
    ys, xs = _edges(*score.shape, cells)
    means = np.array([[score[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for j in range(cells)]
                      for i in range(cells)])
    return _mask_of_cells(means, score.shape, frac)


@torch.no_grad()
def _similarity(model, pixels: torch.Tensor, text_vectors: torch.Tensor) -> np.ndarray:
    return (model.encode_image(pixels) * text_vectors).sum(-1).float().numpy()  # [batch]


@torch.no_grad()
def deletion_drops(model, pixels: torch.Tensor, heat: np.ndarray, text_vectors: torch.Tensor,
                   rng: np.random.Generator, frac: float = 0.2, cells: int = 14) -> dict[str, np.ndarray]:
    """Similarity falls ``[batch]`` when the hottest ``frac`` of cells is blurred, and when as
    many random cells are. ``heat`` is ``[batch, H, W]`` over the tower's input frame."""
    model.eval()
    soft = blur(pixels)
    hot = torch.from_numpy(np.stack([cell_mask(h, frac, cells) for h in heat]))[:, None]
    rand = torch.from_numpy(np.stack([_mask_of_cells(rng.random((cells, cells)), h.shape, frac)
                                      for h in heat]))[:, None]
    base = _similarity(model, pixels, text_vectors)
    out = {"base": base}
    for name, mask in (("hot", hot), ("random", rand)):
        mask = mask.to(pixels.dtype)
        out[name] = base - _similarity(model, pixels * (1 - mask) + soft * mask, text_vectors)
    return out


def text_without(text: str, words: list[str], k: int) -> str:
    """``text`` with its ``k``-th word (as :func:`~crossalign.explain.words.split_words` found
    them, in order) cut out."""
    low, pos, spans = text.lower(), 0, []
    for word in words:
        start = low.find(word.lower(), pos)
        if start < 0:  # not found as written: fall back to joining the other words
            return " ".join(w for i, w in enumerate(words) if i != k)
        spans.append((start, start + len(word)))
        pos = start + len(word)
    start, end = spans[k]
    return " ".join((text[:start].rstrip() + " " + text[end:].lstrip()).split())


@torch.no_grad()
def word_drops(model, text: str, words: list[str], scores: list[float], image_vector: torch.Tensor,
               rng: random.Random) -> tuple[float, float] | None:
    """Similarity falls when the top-scoring word is removed and when a random one is (None
    for a text of fewer than two words)."""
    from crossalign.embed.collection import embed_texts

    if len(words) < 2:
        return None
    top = int(np.argmax(scores))
    other = rng.randrange(len(words))
    texts = [text, text_without(text, words, top), text_without(text, words, other)]
    sims = embed_texts(model, texts) @ image_vector.numpy().reshape(-1)  # [3]
    return float(sims[0] - sims[1]), float(sims[0] - sims[2])


def pointing_hit(heat_image: np.ndarray, boxes: list[tuple], tolerance: float = 0.0) -> tuple[bool, float]:
    """Whether the hottest pixel lies within ``tolerance`` pixels of any box ``(left, top,
    right, bottom)``, and the share of the image the boxes cover (the chance of a hit)."""
    h, w = heat_image.shape
    y, x = np.unravel_index(int(np.argmax(heat_image)), heat_image.shape)
    inside = np.zeros((h, w), bool)
    for left, top, right, bottom in boxes:
        inside[max(int(np.floor(top - tolerance)), 0):int(np.ceil(bottom + tolerance)),
               max(int(np.floor(left - tolerance)), 0):int(np.ceil(right + tolerance))] = True
    return bool(inside[y, x]), float(inside.mean())
