"""Tower outputs for whole collections: batched, cached when the tower is frozen.

Images are decoded in ``workers`` processes by a ``torch.utils.data.DataLoader``
(``runtime.num_workers``; 0 decodes in this process); the batches, and so the features, are
the same either way. A file that cannot be read costs its own row: it comes back in ``failed`` as the
:class:`~crossalign.data.transforms.ImageError` naming it, and the caller drops the rows
that use it. Failures are never stored in the cache, so a later run names them again
with the same message.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from crossalign.data.transforms import MAX_PIXELS, eval_transform, load_image
from crossalign.errors import ImageError
from crossalign.data.members import parse_ref, read_member, source_hash
from crossalign.features import FeatureCache, text_key, tower_fingerprint

__all__ = ["image_features", "text_features", "project", "TowerOutputs", "DecodeImages", "Decoded",
           "Collate", "decode_loader", "wants_channels_last", "mirror", "SHARD"]

log = logging.getLogger("crossalign.embed")
SHARD = 1024  # items per cache shard: an interruption loses at most this much work


class TowerOutputs:
    """Features ``[n_ok, width]`` of the readable inputs and the failures (path -> ImageError).

    ``feats`` is an array, or, when the tower's outputs come from the feature cache, a
    :class:`~crossalign.features.FeatureRows` that reads the rows a slice or index array
    asks for (``np.asarray(feats)`` reads them all).
    """

    def __init__(self, feats, failed: dict[str, ImageError]) -> None:
        self.feats = feats
        self.failed = failed


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="item", disable=not progress or total == 0, leave=False,
                dynamic_ncols=True)


# batches(items) yields (items consumed, indices into items that worked, their outputs)
Batches = Callable[[Sequence], Iterator[tuple[int, list[int], torch.Tensor]]]


class _Shards:
    """Computed features, written to the cache every SHARD items consumed (an interruption
    loses at most that much work); without a cache, kept by key in ``done``."""

    def __init__(self, cache: FeatureCache | None) -> None:
        self.cache, self.done = cache, {}
        self.keys: list[str] = []
        self.feats: list[np.ndarray] = []
        self.consumed = 0

    def add(self, keys: list[str], feats: np.ndarray, consumed: int) -> None:
        self.keys += keys
        self.feats.append(feats)
        self.consumed += consumed
        if self.consumed >= SHARD:
            self.flush()

    def flush(self) -> None:
        if self.keys:
            feats = np.concatenate(self.feats)  # [n, width]
            if self.cache is not None:  # chunks of at most SHARD items, whatever the batch size
                for s in range(0, len(self.keys), SHARD):
                    self.cache.put(self.keys[s:s + SHARD], feats[s:s + SHARD])
            else:
                self.done.update(zip(self.keys, feats))
        self.keys, self.feats, self.consumed = [], [], 0


class _Found:
    """What :func:`_cached` has: the keys with features, and their rows in a given order."""

    def __init__(self, have: set[str], fetch: Callable[[list[str]], object]) -> None:
        self.have, self.fetch = have, fetch

    def __contains__(self, key: str) -> bool:
        return key in self.have


def _cached(keys: list[str], inputs: list, batches: Batches, cache: FeatureCache | None,
            desc: str, progress: bool, dist=None) -> _Found:
    """Features for ``inputs`` (identified by ``keys``), computing only what the cache
    lacks; keys whose input failed are not found.

    With several processes (``dist.world_size > 1``) each computes the missing ones of every
    world_size-th item and writes its own chunks; all then read the merged cache.
    """
    unique = dict(zip(keys, inputs))
    if cache is None:
        pending, sharded = list(unique.items()), False
    else:
        share = list(unique.items())
        sharded = dist is not None and dist.world_size > 1
        if sharded:  # shares fixed before looking at the cache, which other processes are filling
            share = share[dist.rank::dist.world_size]
        todo = set(cache.missing([k for k, _ in share]))
        pending = [(k, x) for k, x in share if k in todo]
    bar = _bar(len(pending), desc, progress)
    out = _Shards(cache)
    # one pass over every pending item, so decoding workers start once and never drain
    for n, rows, feats in batches([x for _, x in pending]):  # feats: [len(rows), width]
        out.add([pending[i][0] for i in rows], feats.float().cpu().numpy(), n)
        bar.update(n)
    out.flush()
    bar.close()
    if cache is None:
        done = out.done
        return _Found(set(done), lambda ks: np.stack([done[k] for k in ks]).astype(np.float32, copy=False))
    if sharded:
        torch.distributed.barrier()
        cache.refresh()
    lacking = set(cache.missing(list(unique)))
    return _Found({k for k in unique if k not in lacking}, cache.rows)


def _file_keys(paths: Sequence[str], suffix: str) -> tuple[dict[str, str], dict[str, ImageError]]:
    """Content key of each distinct path, and the paths that cannot even be opened."""
    keys, failed = {}, {}
    for p in dict.fromkeys(paths):
        try:
            keys[p] = source_hash(p) + suffix  # the file's bytes, or a shard member's
        except OSError as e:
            failed[p] = ImageError(f"{p}: cannot read image file ({e.strerror or e})",
                                   "missing" if isinstance(e, FileNotFoundError) else "unreadable")
    return keys, failed


def _over_limit(paths: Sequence[str], max_pixels: int) -> dict[str, ImageError]:
    """Images over ``max_pixels``, from their headers alone (the limit may have changed
    since their features were cached)."""
    out = {}
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                ref = parse_ref(p)  # a shard member is read from its shard
                with Image.open(io.BytesIO(read_member(ref)) if ref is not None else p) as im:
                    w, h = im.size
        except Exception:  # unreadable now: decoding will name it
            continue
        if w * h > max_pixels:
            out[p] = ImageError(f"{p}: {w}x{h} pixels is over the limit of {max_pixels} "
                                f"(data.max_pixels)", "too_large")
    return out


class DecodeImages(torch.utils.data.Dataset):
    """Images decoded, augmented and preprocessed for a tower, one item per key.

    A key is an index into ``paths``, or ``(index, arg)``: then ``augment(image, arg)``
    runs before preprocessing (``arg`` says which view, e.g. a content key or a seeded
    view). Item: ``(key, pixels [3, H, W], None)``, or ``(key, None, (message, kind))``
    when the image cannot be read, sent back as plain values since an exception need
    not pickle. The one dataset behind extraction and training's decoding.
    """

    def __init__(self, paths: Sequence[str], transform: Callable, max_pixels: int,
                 augment: Callable | None = None) -> None:
        self.paths, self.transform, self.max_pixels, self.augment = paths, transform, max_pixels, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, arg = key if isinstance(key, tuple) else (key, None)
        p = self.paths[i]
        try:
            img = load_image(p, self.max_pixels)
            if self.augment is not None and arg is not None:
                img = self.augment(img, arg)
            return key, self.transform(img), None  # [3, H, W]
        except ImageError as e:
            return key, None, (str(e), e.kind)


class Decoded(NamedTuple):
    """One decoded batch, stacked in the worker that decoded it."""

    keys: list  # keys of the images that decoded, in order
    pixels: torch.Tensor | None  # [len(keys), 3, H, W] in the tower's memory format
    failed: list  # (key, (message, kind)) of the images that did not
    size: int  # keys asked for


class Collate:
    """Stack a batch of :class:`DecodeImages` items into :class:`Decoded` (picklable).

    Stacking, and the channels-last copy a convolutional tower wants, happen in the
    decoding worker, so the main process only runs the tower, and one tensor per batch
    (not one per image) crosses between processes.
    """

    def __init__(self, channels_last: bool = False) -> None:
        self.channels_last = channels_last

    def __call__(self, items: list) -> Decoded:
        good = [(key, px) for key, px, err in items if err is None]
        pixels = torch.stack([px for _, px in good]) if good else None  # [n_ok, 3, H, W]
        if pixels is not None and self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        failed = [(key, err) for key, _, err in items if err is not None]
        return Decoded([key for key, _ in good], pixels, failed, len(items))


def decode_loader(data: DecodeImages, batches: Iterable[list], workers: int,
                  channels_last: bool = False):
    """:class:`Decoded` batches of ``data`` for the key lists in ``batches``, in order,
    decoded by ``workers`` processes (0: here) ahead of their use.

    A private generator seeds the workers, so making a loader never draws from torch's
    global random state: dropout in a step sees the same numbers with or without a loader,
    with any number of workers, and after a resume.
    """
    return torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=workers,
                                       collate_fn=Collate(channels_last), generator=torch.Generator())


def mirror(img: Image.Image, _key: object = None) -> Image.Image:
    """The horizontal mirror of an image (the extra view of ``model.image.tta_flip``)."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def wants_channels_last(tower: torch.nn.Module) -> bool:
    """Whether ``tower`` runs its convolutions channels-last (its ``channels_last``)."""
    return bool(getattr(tower, "channels_last", False))


def _index(key) -> int:
    return key[0] if isinstance(key, tuple) else key


@torch.no_grad()
def image_features(tower: torch.nn.Module, paths: Sequence[str], cache_root: str | Path | None,
                   device: str = "cpu", batch_size: int = 64, max_pixels: int = MAX_PIXELS,
                   progress: bool = True, dist=None, augment: Callable | None = None,
                   key_suffix: str = "", workers: int = 0) -> TowerOutputs:
    """Tower outputs ``[n_ok, width]`` for the readable images, in input order (repeats once).

    Args:
        max_pixels: images with more pixels are refused before decoding (``data.max_pixels``).
        augment: optional ``fn(image, content_key) -> image`` applied before preprocessing;
            give a ``key_suffix`` naming the view so its features are cached apart.
        dist: a DistInfo to share the extraction among processes.
        workers: processes decoding images (``runtime.num_workers``); 0 decodes here.
    """
    transform = eval_transform(tower.data_config)
    path_key, failed = _file_keys(paths, key_suffix)

    def batches(items: Sequence[str]):
        keys = [(i, path_key[p]) if augment is not None else i for i, p in enumerate(items)]
        plan = [keys[s:s + batch_size] for s in range(0, len(keys), batch_size)]
        data = DecodeImages(items, transform, max_pixels, augment)
        for batch in decode_loader(data, plan, workers, wants_channels_last(tower)):
            for key, err in batch.failed:
                failed[items[_index(key)]] = ImageError(*err)
            if batch.pixels is None:
                yield batch.size, [], torch.zeros((0, tower.width))
                continue
            rows = [_index(key) for key in batch.keys]
            yield batch.size, rows, tower(batch.pixels.to(device))  # [n_ok, width]

    tower.eval()
    fp = tower_fingerprint(tower, tower.data_config) if cache_root else ""
    cache = FeatureCache(cache_root, fp) if cache_root else None
    if cache is not None:  # a hit skips decoding, not the pixel limit of this run
        lacking = set(cache.missing(list(path_key.values())))
        failed.update(_over_limit([p for p in path_key if path_key[p] not in lacking], max_pixels))
    ok_paths = [p for p in path_key if p not in failed]
    by_key = _cached([path_key[p] for p in ok_paths], ok_paths, batches, cache,
                     "image features", progress, dist)
    for p in ok_paths:  # failed in another process: decode here to name the reason
        if path_key[p] not in by_key and p not in failed:
            try:
                load_image(p, max_pixels)
                failed[p] = ImageError(f"{p}: cannot read image", "unreadable")
            except ImageError as e:
                failed[p] = e
    order = [p for p in ok_paths if path_key[p] in by_key]
    if not order:
        return TowerOutputs(np.zeros((0, tower.width), np.float32), failed)
    return TowerOutputs(by_key.fetch([path_key[p] for p in order]), failed)  # [n_ok, width]


@torch.no_grad()
def text_features(tower: torch.nn.Module, texts: Sequence[str], cache_root: str | Path | None,
                  device: str = "cpu", batch_size: int = 128, progress: bool = True,
                  dist=None):
    """Tower outputs ``[len(texts), width]``: an array, or the cache's
    :class:`~crossalign.features.FeatureRows` for a cached tower."""

    def batches(items: Sequence[str]):
        for s in range(0, len(items), batch_size):
            chunk = list(items[s:s + batch_size])
            tok = {k: v.to(device) for k, v in tower.tokenize(chunk).items()}
            yield len(chunk), list(range(s, s + len(chunk))), tower(**tok)  # [batch, width]

    tower.eval()
    texts = list(texts)
    if not texts:
        return np.zeros((0, tower.width), np.float32)
    fp = tower_fingerprint(tower, tower.preprocess_config()) if cache_root else ""
    cache = FeatureCache(cache_root, fp) if cache_root else None
    # sort by length so each batch pads little
    ordered = sorted(dict.fromkeys(texts), key=len)
    by_key = _cached([text_key(t) for t in ordered], ordered, batches, cache,
                     "text features", progress, dist)
    return by_key.fetch([text_key(t) for t in texts])


@torch.no_grad()
def project(head: Callable[[torch.Tensor], torch.Tensor], feats, device: str = "cpu",
            batch_size: int = 4096) -> np.ndarray:
    """Apply a projection head (``model.project_image`` / ``project_text``) in batches of
    ``feats`` (an array or cached :class:`~crossalign.features.FeatureRows`)."""
    out = [head(torch.from_numpy(feats[s:s + batch_size]).to(device)).float().cpu().numpy()
           for s in range(0, len(feats), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
