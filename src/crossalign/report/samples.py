"""Seeded samples of a split and their nearest neighbours: what the heatmap and galleries show.

Only the sampled queries are compared with the whole split (a ``[k, n]`` slice, through the
library's bounded-memory ``topk``), so a large split never needs its full similarity matrix.
"""

from __future__ import annotations

import base64
import textwrap
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from crossalign.data.transforms import jpeg_bytes, thumbnail
from crossalign.errors import ImageError
from crossalign.evaluate.retrieval import topk
from crossalign.embed.collection import EmbeddedTable

__all__ = ["Samples", "draw_samples", "top_k", "text_queries", "image_queries", "Thumbnails", "shorten"]


@dataclass
class Samples:
    """Indices drawn once per run with the report's seed."""

    heat_images: np.ndarray  # [k] image indices of the heatmap columns
    heat_captions: np.ndarray  # [k] caption rows, one of each column's captions, same order
    text_queries: np.ndarray  # [k] caption rows for the text -> image gallery
    image_queries: np.ndarray  # [k] image indices for the image -> text gallery


def draw_samples(emb: EmbeddedTable, k: int, seed: int) -> Samples:
    """Draw the heatmap pairs and gallery queries of one run."""
    rng = np.random.default_rng(seed)
    n_img, n_txt = len(emb.image_ids), len(emb.text_to_image)
    heat_images = np.sort(rng.choice(n_img, size=min(k, n_img), replace=False))
    heat_captions = np.array([rng.choice(np.flatnonzero(emb.text_to_image == i)) for i in heat_images],
                             dtype=np.int64)
    text_q = np.sort(rng.choice(n_txt, size=min(k, n_txt), replace=False))
    image_q = np.sort(rng.choice(n_img, size=min(k, n_img), replace=False))
    return Samples(heat_images, heat_captions, text_q, image_q)


def top_k(queries: np.ndarray, keys: np.ndarray, top: int, scores=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``[q, top]`` of each query's nearest keys in the run's ranking (``scores``, as
    evaluate ranks; None: cosine), best first, and their cosine similarities."""
    found = topk(queries, keys, top, scores=scores)  # only the sampled queries: a [q, n] slice
    return found.indices, found.cosine


def text_queries(emb: EmbeddedTable, rows: np.ndarray, ranks: np.ndarray, top: int,
                 scores=None) -> list[dict]:
    """Caption queries with their top images; ``rank`` is the correct image's rank."""
    idx, sim = top_k(emb.text_emb[rows], emb.image_emb, top, scores)
    out = []
    for q, r in enumerate(rows):
        target = int(emb.text_to_image[r])
        hits = [{"image": int(i), "sim": float(s), "correct": int(i) == target} for i, s in zip(idx[q], sim[q])]
        out.append({"caption_row": int(r), "caption": emb.table.caption[r], "target": target,
                    "rank": int(ranks[r]), "hits": hits})
    return out


def image_queries(emb: EmbeddedTable, images: np.ndarray, ranks: np.ndarray, top: int,
                  scores=None) -> list[dict]:
    """Image queries with their top captions; ``rank`` is that of the best correct caption."""
    idx, sim = top_k(emb.image_emb[images], emb.text_emb, top, scores)
    out = []
    for q, i in enumerate(images):
        correct = np.flatnonzero(emb.text_to_image == i)
        hits = [{"caption": emb.table.caption[c], "sim": float(s), "correct": bool(emb.text_to_image[c] == i)}
                for c, s in zip(idx[q], sim[q])]
        # when no correct caption made the list, show the one that came closest
        best = correct[np.argmax(emb.text_emb[correct] @ emb.image_emb[i])]
        out.append({"image": int(i), "rank": int(ranks[i]), "n_correct": len(correct), "hits": hits,
                    "best_correct": emb.table.caption[best]})
    return out


def shorten(text: str, width: int = 48) -> str:
    """One line of at most ``width`` characters, cut at a word."""
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" …") or text[:width]


@dataclass
class Thumbnails:
    """Small JPEG thumbnails, made once per image and kept for the page and the plots."""

    size: int = 128
    quality: int = 78
    _images: dict[str, Image.Image] = field(default_factory=dict)
    _uris: dict[str, str] = field(default_factory=dict)

    def image(self, path: str) -> Image.Image:
        """The thumbnail as a PIL image (a grey square when the file cannot be read)."""
        if path not in self._images:
            try:
                im = thumbnail(path, self.size)
            except ImageError:
                im = Image.new("RGB", (self.size, self.size), (200, 200, 200))
            self._images[path] = im
        return self._images[path]

    def uri(self, path: str) -> str:
        """A ``data:image/jpeg;base64,...`` URI, so the page needs no other file."""
        if path not in self._uris:
            data = jpeg_bytes(self.image(path), self.quality)
            self._uris[path] = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        return self._uris[path]
