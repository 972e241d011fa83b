"""Tower outputs and embeddings for whole collections, batched, cached when frozen.

A file that cannot be read costs its own row: it is returned in ``failed`` with a
message naming it, and the caller drops the rows that use it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from crossalign.data.transforms import ImageError, eval_transform, load_image
from crossalign.features import FeatureCache, file_key, text_key, tower_fingerprint

__all__ = ["image_features", "text_features", "project", "TowerOutputs"]

log = logging.getLogger("crossalign.embed")
SHARD = 1024  # items per cache shard: an interruption loses at most this much work


class TowerOutputs:
    """Features for a list of inputs plus the inputs that failed (path -> message)."""

    def __init__(self, feats: np.ndarray, failed: dict[str, str]) -> None:
        self.feats = feats
        self.failed = failed


def _run_batches(items: Sequence, encode: Callable[[Sequence], torch.Tensor], batch_size: int,
                 desc: str, progress: bool) -> np.ndarray:
    out = []
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress or len(items) == 0,
               leave=False, dynamic_ncols=True)
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        out.append(encode(chunk).float().cpu().numpy())
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _cached(keys: list[str], inputs: list, encode, cache: FeatureCache | None, batch_size: int,
            desc: str, progress: bool, dist=None) -> np.ndarray:
    """Features for ``inputs`` (identified by ``keys``), computing only what the cache lacks.

    With several processes (``dist.world_size > 1``) each computes the missing ones of every
    world_size-th item and writes its own shards; all then read the merged cache.
    """
    if cache is None:
        return _run_batches(inputs, encode, batch_size, desc, progress)
    unique = list(dict(zip(keys, inputs)).items())
    sharded = dist is not None and dist.world_size > 1
    if sharded:  # shares fixed before looking at the cache, which other processes are filling
        unique = unique[dist.rank::dist.world_size]
    todo = set(cache.missing([k for k, _ in unique]))
    pending = [(k, x) for k, x in unique if k in todo]
    if pending:
        bar = tqdm(total=len(pending), desc=desc, unit="item", disable=not progress, leave=False,
                   dynamic_ncols=True)
        for s in range(0, len(pending), SHARD):
            part = pending[s:s + SHARD]
            feats = _run_batches([x for _, x in part], encode, batch_size, desc, progress=False)
            cache.put([k for k, _ in part], feats)
            bar.update(len(part))
        bar.close()
    if sharded:
        torch.distributed.barrier()
        cache.refresh()
    return cache.get(keys)


@torch.no_grad()
def image_features(tower: torch.nn.Module, paths: Sequence[str], cache_root: str | Path | None,
                   device: str = "cpu", batch_size: int = 64, max_pixels: int = 89_478_485,
                   progress: bool = True, dist=None, augment: Callable | None = None,
                   key_suffix: str = "") -> TowerOutputs:
    """Tower outputs ``[n_ok, width]`` for the readable images, in input order.

    Args:
        augment: optional ``fn(image, content_key) -> image`` applied before preprocessing;
            give a ``key_suffix`` naming the view so its features are cached apart.
        dist: a DistInfo to share the extraction among processes.
    """
    transform = eval_transform(tower.data_config)
    failed: dict[str, str] = {}
    keys, ok_paths = [], []
    for p in dict.fromkeys(paths):
        try:
            keys.append(file_key(p) + key_suffix)
            ok_paths.append(p)
        except OSError as e:
            failed[p] = f"{p}: cannot read image file ({e.strerror or e})"

    def encode(chunk: Sequence[str]) -> torch.Tensor:
        pixels, rows = [], []
        for i, p in enumerate(chunk):
            try:
                img = load_image(p, max_pixels)
                if augment is not None:
                    img = augment(img, path_key[p])
                pixels.append(transform(img))
                rows.append(i)
            except ImageError as e:
                failed[p] = str(e)
        width = tower.width
        out = torch.full((len(chunk), width), float("nan"))
        if pixels:
            out[rows] = tower(torch.stack(pixels).to(device)).float().cpu()  # [batch, width]
        return out

    path_key = dict(zip(ok_paths, keys))
    tower.eval()
    cache = FeatureCache(cache_root, tower_fingerprint(tower, tower.data_config)) if cache_root else None
    feats = _cached(keys, ok_paths, encode, cache, batch_size, "image features", progress, dist)
    good = ~np.isnan(feats).any(1)
    # unreadable images are stored as NaN rows, so they are not decoded again next time
    for p, bad in zip(ok_paths, ~good):
        if bad and p not in failed:
            failed[p] = f"{p}: cannot read image (remembered from an earlier run)"
    by_path = dict(zip(ok_paths, feats))
    order = [p for p in dict.fromkeys(paths) if p not in failed]
    width = feats.shape[1] if feats.size else tower.width
    arr = np.stack([by_path[p] for p in order]) if order else np.zeros((0, width), np.float32)
    return TowerOutputs(arr, failed)


@torch.no_grad()
def text_features(tower: torch.nn.Module, texts: Sequence[str], cache_root: str | Path | None,
                  device: str = "cpu", batch_size: int = 128, progress: bool = True, dist=None) -> np.ndarray:
    """Tower outputs ``[len(texts), width]``."""

    def encode(chunk: Sequence[str]) -> torch.Tensor:
        tok = {k: v.to(device) for k, v in tower.tokenize(list(chunk)).items()}
        return tower(**tok)  # [batch, width]

    tower.eval()
    texts = list(texts)
    cache = FeatureCache(cache_root, tower_fingerprint(tower, tower.preprocess_config())) if cache_root else None
    # sort by length so each batch pads little; restore order afterwards
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    sorted_texts = [texts[i] for i in order]
    feats = _cached([text_key(t) for t in sorted_texts], sorted_texts, encode, cache, batch_size,
                    "text features", progress, dist)
    out = np.empty_like(feats)
    out[order] = feats
    return out


@torch.no_grad()
def project(head: Callable[[torch.Tensor], torch.Tensor], feats: np.ndarray, device: str = "cpu",
            batch_size: int = 4096) -> np.ndarray:
    """Apply a projection head (``model.project_image`` / ``project_text``) in batches."""
    out = [head(torch.from_numpy(feats[s:s + batch_size]).to(device)).float().cpu().numpy()
           for s in range(0, len(feats), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
