"""Items to vectors with a model: images by path, pictures in memory, texts, whole tables.

Frozen towers read and fill the feature cache; other towers run on every item. Either
way the vectors are the head's L2-normalised outputs, with the preprocessing the run
was trained with, so a vector depends only on the item and the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from crossalign.data.table import PairTable
from crossalign.data.transforms import MAX_PIXELS, ImageSource, eval_transform, load_image
from crossalign.errors import ImageError
from crossalign.data.validate import Problem, drop_failed_images
from crossalign.embed.towers import image_features, mirror, project, text_features
from crossalign.models.dual import DualEncoder, is_frozen

__all__ = ["ImageVectors", "EmbeddedTable", "embed_image_files", "embed_images", "embed_texts",
           "embed_table", "tta_flip"]

FLIP_SUFFIX = ":flip"  # cache key suffix of the mirrored view


@dataclass
class ImageVectors:
    """Vectors of the images that could be read, in input order, and those that could not."""

    paths: list[str]  # readable inputs, each once, in input order
    vectors: np.ndarray  # [len(paths), embed_dim]
    failed: dict[str, ImageError] = field(default_factory=dict)  # path -> why it was skipped


@dataclass
class EmbeddedTable:
    """Embeddings of a table: unique images, caption rows, and which image each caption shows."""

    table: PairTable  # rows whose image could be read
    image_ids: list[str]
    image_emb: np.ndarray  # [n_images, dim]
    text_emb: np.ndarray  # [n_captions, dim]
    text_to_image: np.ndarray  # [n_captions]
    problems: list[Problem]  # one per row skipped because its image could not be read


def _cache_for(model: DualEncoder, side: str, cache_root: str | Path | None) -> str | Path | None:
    """The feature cache is for frozen towers only: a training tower's outputs change."""
    return cache_root if is_frozen(getattr(model.cfg, side).freeze) else None


def tta_flip(model: DualEncoder) -> bool:
    """Whether ``model`` embeds an image as the mean of it and its mirror (``model.image.tta_flip``)."""
    return bool(model.cfg.image.tta_flip)


def _mean_of_views(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The normalised mean of two views' unit vectors ``[n, dim]``."""
    s = a + b
    return (s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@torch.no_grad()
def embed_image_files(model: DualEncoder, paths: Sequence[str | Path], *,
                 cache_root: str | Path | None = None, device: str = "cpu", batch_size: int = 64,
                 max_pixels: int = MAX_PIXELS, progress: bool = False, dist=None,
                 workers: int = 0) -> ImageVectors:
    """Vectors ``[n_ok, embed_dim]`` of the image files at ``paths``; unreadable ones are reported.

    With ``model.image.tta_flip`` a vector is the normalised mean of the image's and its
    horizontal mirror's (a frozen tower caches the mirror's features under their own key).

    Args:
        cache_root: feature cache folder (used only when the image tower is frozen).
        max_pixels: larger images are refused before decoding (``data.max_pixels``).
        dist: a DistInfo to share the tower's work among processes.
        workers: processes decoding images (``runtime.num_workers``); 0 decodes here. The
            vectors are the same either way.
    """
    model.eval()
    cache = _cache_for(model, "image", cache_root)
    out = image_features(model.image_tower, [str(p) for p in paths], cache, device, batch_size,
                         max_pixels, progress, dist, workers=workers)
    ok = [p for p in dict.fromkeys(str(p) for p in paths) if p not in out.failed]
    vectors = project(model.project_image, out.feats, device)
    if ok and tta_flip(model):  # the mirror is a view like an augmented one: cached apart
        flipped = image_features(model.image_tower, ok, cache, device, batch_size, max_pixels, progress,
                                 dist, augment=mirror, key_suffix=FLIP_SUFFIX, workers=workers)
        keep = [k for k, p in enumerate(ok) if p not in flipped.failed]  # changed since: rare
        out.failed.update(flipped.failed)
        ok = [ok[k] for k in keep]
        vectors = _mean_of_views(vectors[keep], project(model.project_image, flipped.feats, device))
    if not ok:
        vectors = np.zeros((0, model.cfg.embed_dim), np.float32)
    return ImageVectors(ok, vectors, out.failed)


@torch.no_grad()
def embed_images(model: DualEncoder, images: Sequence[ImageSource], *, device: str = "cpu",
                   batch_size: int = 64, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Vectors ``[len(images), embed_dim]`` of paths, file bytes (uploads) or PIL images.

    Each goes through :func:`~crossalign.data.transforms.load_image` (pixel limit, EXIF
    rotation, transparency on white, 16 bits scaled), like every file a run reads, so a
    picture embeds the same way whatever form it comes in. Raises ``ImageError`` for the
    first one that cannot be used. The feature cache is not used.
    """
    model.eval()
    transform = eval_transform(model.image_tower.data_config)
    views = [lambda img: img] + ([mirror] if tta_flip(model) else [])
    out = []
    for s in range(0, len(images), batch_size):
        loaded = [load_image(x, max_pixels) for x in images[s:s + batch_size]]
        per_view = []
        for view in views:
            pixels = torch.stack([transform(view(img)) for img in loaded])  # [batch, 3, H, W]
            feats = model.image_tower(pixels.to(device))  # [batch, width]
            per_view.append(model.project_image(feats).float().cpu().numpy())  # [batch, embed_dim]
        out.append(per_view[0] if len(per_view) == 1 else _mean_of_views(*per_view))
    return np.concatenate(out) if out else np.zeros((0, model.cfg.embed_dim), np.float32)


@torch.no_grad()
def embed_texts(model: DualEncoder, texts: Sequence[str], *, cache_root: str | Path | None = None,
                device: str = "cpu", batch_size: int = 128, progress: bool = False,
                dist=None) -> np.ndarray:
    """Vectors ``[len(texts), embed_dim]`` of captions, prompts or queries."""
    model.eval()
    if len(texts) == 0:
        return np.zeros((0, model.cfg.embed_dim), np.float32)
    feats = text_features(model.text_tower, list(texts), _cache_for(model, "text", cache_root), device,
                          batch_size, progress, dist)  # [n, width]
    return project(model.project_text, feats, device)


def embed_table(model: DualEncoder, table: PairTable, *, cache_root: str | Path | None = None,
                device: str = "cpu", batch_size: int = 128, max_pixels: int = MAX_PIXELS,
                strict: bool = False, progress: bool = False, workers: int = 0) -> EmbeddedTable:
    """Embed every image and caption of ``table``; rows whose image cannot be read are dropped.

    Args:
        strict: raise ``DataError`` naming the first such row instead (``data.strict``).
        workers: processes decoding images (``runtime.num_workers``).
    """
    ids, paths = table.images()
    images = embed_image_files(model, paths, cache_root=cache_root, device=device, batch_size=batch_size,
                          max_pixels=max_pixels, progress=progress, workers=workers)
    table, problems = drop_failed_images(table, images.failed, strict, by="image_path")
    img_ids, t2i = table.caption_image_index()
    row_of = {p: k for k, p in enumerate(images.paths)}
    id_path = dict(zip(ids, paths))
    image_emb = images.vectors[[row_of[id_path[i]] for i in img_ids]] if img_ids else images.vectors
    text_emb = embed_texts(model, table.caption, cache_root=cache_root, device=device,
                           batch_size=batch_size, progress=progress)
    return EmbeddedTable(table, img_ids, image_emb, text_emb, t2i, problems)
