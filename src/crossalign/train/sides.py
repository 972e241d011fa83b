"""One side of the pair (images or texts) as training and evaluation see it.

A side turns item rows into embeddings, in one of three modes chosen from the tower's
freezing:

- ``features``: the tower is frozen; its outputs come from the feature cache (K
  augmented views per item too, when augmentation is on) and only the head runs.
- ``prefix``: only the last N blocks train (``last:N``); the output of the frozen
  prefix is computed once per run and held in memory, so each step runs only the
  blocks that learn.
- ``raw``: the tower trains; inputs are loaded, augmented and encoded every step. The
  engine tells the image side each epoch's batches up front (``plan_epoch``), so a
  ``torch.utils.data.DataLoader`` with ``runtime.num_workers`` workers decodes, augments and
  preprocesses them while the steps before them run.

Every image is decoded through :class:`crossalign.embed.towers.DecodeImages` (extraction, the
prefix pass, training steps and validation), and an augmented view is drawn from a seed
of the run seed, the view and the image, so a run is the same with 0 or N workers.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from crossalign.data.splits import stable_seed
from crossalign.data.table import PairTable
from crossalign.data.transforms import MAX_PIXELS, eval_transform, inspect_image
from crossalign.data.validate import drop_failed_images
from crossalign.embed.towers import Collate, Decoded, DecodeImages, decode_loader, image_features, text_features
from crossalign.embed.collection import FLIP_SUFFIX
from crossalign.embed.towers import mirror, wants_channels_last
from crossalign.errors import ConfigError, ImageError
from crossalign.models.dual import DualEncoder, is_frozen, n_last_blocks

__all__ = ["Features", "ImageSide", "TextSide", "drop_failed_images", "side_mode", "take"]


def side_mode(freeze: str, training: bool, splittable: bool = True) -> str:
    """``features``, ``prefix`` or ``raw`` (see the module docstring).

    A tower that cannot be cut into prefix and suffix trains in ``raw`` mode even under
    ``last:N``: caching its inputs would only hold raw pixels or tokens in memory.
    """
    if is_frozen(freeze):
        return "features"
    if training and n_last_blocks(freeze) is not None and splittable:
        return "prefix"
    return "raw"


def _pad_prefix(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-item prefix outputs; variable-length token tensors are right-padded."""
    if "attention_mask" not in items[0]:
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}
    n = max(int(it["attention_mask"].shape[0]) for it in items)
    out = {}
    for k in items[0]:
        padded = [torch.nn.functional.pad(it[k], [0, 0] * (it[k].dim() - 1) + [0, n - it[k].shape[0]])
                  for it in items]
        out[k] = torch.stack(padded)  # [batch, tokens, ...]
    return out


TEXT_CHUNK = 128  # captions per forward of a training step's text tower, grouped by length


def length_chunks(lengths: Sequence[int], chunk: int) -> list[np.ndarray]:
    """Positions ``0..len(lengths)-1`` sorted by length and cut into groups of ``chunk``.

    A step's captions run through the text tower group by group, each padded to its own longest
    caption instead of the batch's, so far fewer padding tokens are computed
    (``bench/bench_text_steps.py`` counts and times both). The contrastive loss still sees the
    whole batch; only the padding, which the attention mask and the pooling leave out, goes.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[s:s + chunk] for s in range(0, len(order), chunk)]


def _in_chunks(forward, items: list, lengths: Sequence[int]) -> torch.Tensor:
    """``forward(list of items) -> [n, width]`` over length groups, rows back in input order."""
    groups = length_chunks(lengths, TEXT_CHUNK)
    if len(groups) == 1:
        return forward(items)
    outs = torch.cat([forward([items[i] for i in g]) for g in groups])  # [n, width], grouped order
    back = np.empty(len(items), np.int64)
    back[np.concatenate(groups)] = np.arange(len(items))
    return outs[torch.from_numpy(back).to(outs.device)]


def take(inputs: torch.Tensor | list, positions: np.ndarray) -> torch.Tensor | list:
    """The items at ``positions`` of what a side's ``inputs`` gave (a tensor or a list)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[torch.from_numpy(np.asarray(positions, np.int64)).to(inputs.device)]
    return [inputs[i] for i in positions]


def _split_prefix(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per-item prefix outputs, padding trimmed so memory holds only real tokens."""
    n = next(iter(batch.values())).shape[0]
    if "attention_mask" not in batch:
        return [{k: v[i].detach().cpu() for k, v in batch.items()} for i in range(n)]
    lengths = batch["attention_mask"].sum(1).tolist()
    return [{k: v[i, :int(lengths[i])].detach().cpu() for k, v in batch.items()} for i in range(n)]


class _Augment:
    """A seeded augmented view of an image, picklable for decoding workers.

    With ``view`` fixed it is called as ``fn(image, key)``; without, as
    ``fn(image, (view, key))``. Either way the seed is ``stable_seed(seed, "image", view, key)``.
    """

    def __init__(self, cfg, seed: int, short_side: int, view=None) -> None:
        self.cfg, self.seed, self.short_side, self.view = cfg, seed, short_side, view

    def __call__(self, img, arg):
        from crossalign.data.augment import augment_image

        view, key = (self.view, arg) if self.view is not None else arg
        seed = stable_seed(self.seed, "image", view, key)
        return augment_image(img, self.cfg, seed, short_side=self.short_side)


def _stack(batch: Decoded) -> torch.Tensor:
    """Pixels ``[batch, 3, H, W]`` of a decoded batch; an image that became unreadable
    since the start of the run stops it, naming the file."""
    for _, err in batch.failed:
        raise ImageError(*err)
    return batch.pixels


class Features:
    """A frozen tower's outputs for a side's items, in one or more views, read a batch at a time.

    ``views[v]`` holds ``[n, width]`` rows: an array, or the feature cache's
    :class:`~crossalign.features.FeatureRows`, which reads the rows a batch asks for from
    memory-mapped files. Nothing is loaded whole, so the features may be larger than memory
    (the kernel keeps the pages it can and drops the rest).
    """

    def __init__(self, views: list, device: str) -> None:
        self.views, self.device = views, device

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(views, n, width)``."""
        return (len(self.views), *self.views[0].shape)

    def take(self, rows: Sequence[int] | np.ndarray, views: Sequence[int] | None = None) -> torch.Tensor:
        """Float32 ``[len(rows), width]`` on the device: row ``rows[k]`` of view ``views[k]``
        (view 0 for all when ``views`` is None)."""
        rows = np.asarray(rows, np.int64)
        if views is None:
            out = np.asarray(self.views[0][rows], np.float32)
        else:
            views = np.asarray(views, np.int64)
            out = np.empty((len(rows), self.shape[2]), np.float32)
            for v in np.unique(views).tolist():
                at = np.flatnonzero(views == v)
                out[at] = self.views[v][rows[at]]
        return torch.from_numpy(out).to(self.device)

    def view(self, v: int) -> torch.Tensor:
        """Every row of view ``v`` (read whole: for small collections and checks)."""
        return self.take(np.arange(self.shape[1]), [v] * self.shape[1])


class _Side:
    """Shared machinery: views, mode, embedding in batches."""

    mode: str
    device: str

    def _setup(self, model: DualEncoder, side: str, device: str, cfg, training: bool) -> None:
        """Mode, augmentation and seed of the ``side`` ("image" or "text") of ``model``."""
        self.model, self.device = model, device
        self.tower = getattr(model, f"{side}_tower")
        self.mode = side_mode(getattr(model.cfg, side).freeze, training, getattr(self.tower, "supports_split", True))
        wants_aug = cfg is not None and training and getattr(cfg.augment, side)
        self.aug = cfg.augment if wants_aug else None
        self.seed = cfg.train.seed if cfg is not None else 0
        # augmented views are precomputed when the inputs do not run through the tower each step
        self.n_views = self.aug.cached_views if (self.aug and self.mode != "raw") else 0

    def _view(self, epoch: int, sample: int) -> int | None:
        """Which cached augmented view a sample uses in a training epoch (None: no view is
        cached, so the clean item)."""
        if not self.n_views:
            return None
        return stable_seed(self.seed, "view", epoch, sample) % self.n_views

    def _slots(self, epoch: int | None, samples: Sequence[int]) -> list[int]:
        """Where ``feats`` or ``prefix`` hold each sample's item in ``epoch``: 0 for the clean
        item (every sample when ``epoch`` is None: evaluation), ``v + 1`` for cached view ``v``."""
        if epoch is None:
            return [0] * len(samples)
        views = [self._view(epoch, int(s)) for s in samples]
        return [0 if v is None else v + 1 for v in views]

    @torch.no_grad()
    def embed_all(self, rows: Sequence[int], batch_size: int) -> np.ndarray:
        """Clean (unaugmented) embeddings of ``rows``."""
        out = [self._embed(np.asarray(rows[s:s + batch_size]), None).float().cpu().numpy()
               for s in range(0, len(rows), batch_size)]
        return np.concatenate(out)


class ImageSide(_Side):
    """The unique images of a table: ``index`` maps image id -> row of this side.

    Images that cannot be read are left out and named in ``failed`` (image id ->
    ImageError); with ``cfg.data.strict`` the first one stops the run, naming its row.
    ``cfg.data.max_pixels`` (or ``max_pixels`` without a cfg) limits every decode.
    """

    def __init__(self, model: DualEncoder, table: PairTable, device: str, cache_root: Path | None,
                 batch_size: int = 128, progress: bool = True, *, cfg=None, dist=None, training: bool = False,
                 max_pixels: int = MAX_PIXELS) -> None:
        self._setup(model, "image", device, cfg, training)
        self.mirror = self._wants_mirror(cfg, training)
        self.transform = eval_transform(self.tower.data_config)
        self.max_pixels = cfg.data.max_pixels if cfg is not None else max_pixels
        self.workers = cfg.runtime.num_workers if cfg is not None else 0
        ids, paths = table.images()
        self.failed: dict[str, ImageError] = {}
        if self.mode == "features":
            self._init_features(ids, paths, cache_root, batch_size, progress, dist)
        else:
            self._check_readable(ids, paths)
        if cfg is not None and cfg.data.strict:
            drop_failed_images(table, self.failed, strict=True)  # raises for the first failed row
        kept = [(i, p) for i, p in zip(ids, paths) if i not in self.failed]
        self.ids, self.paths = [i for i, _ in kept], [p for _, p in kept]
        self.index = {i: k for k, i in enumerate(self.ids)}
        augment = _Augment(self.aug, self.seed, self._short_side()) if self.aug is not None else None
        self.data = DecodeImages(self.paths, self.transform, self.max_pixels, augment)
        self._plan: deque = deque()  # key lists of the batches the loader below decodes ahead
        self._loader = iter(())
        if self.mode == "prefix":
            self._init_prefix(batch_size, progress)

    def _wants_mirror(self, cfg, training: bool) -> bool:
        """``augment.mirror``: a frozen tower's samples draw the clean or the mirrored image."""
        if cfg is None or not training or not cfg.augment.mirror:
            return False
        if self.mode == "raw":
            raise ConfigError("augment.mirror draws the cached mirror (features, or a last:N tower's "
                              "prefix) of a tower that is not run whole; a training tower flips with "
                              "augment.image=true and augment.flip_prob")
        return True

    def _short_side(self) -> int:
        dc = self.tower.data_config
        return round(dc["input_size"][-1] / dc["crop_pct"])  # the resize the eval transform applies next

    def _init_features(self, ids, paths, cache_root, batch_size, progress, dist) -> None:
        out = image_features(self.tower, paths, cache_root, self.device, batch_size, self.max_pixels,
                             progress=progress, dist=dist, workers=self.workers)
        self.failed = {i: out.failed[p] for i, p in zip(ids, paths) if p in out.failed}
        ok = [p for p in paths if p not in out.failed]
        views = [out.feats]  # [n_images, width] each; view 0 is the clean image
        for v in range(self.n_views):
            augment = _Augment(self.aug, self.seed, self._short_side(), view=v)
            o = image_features(self.tower, ok, cache_root, self.device, batch_size, self.max_pixels,
                               progress=progress, dist=dist, workers=self.workers, augment=augment,
                               key_suffix=f":aug{v}:{stable_seed(self.aug, self.seed)}")
            views.append(o.feats)
        if self.mirror:  # the mirror beside the clean image (or the augmented views)
            o = image_features(self.tower, ok, cache_root, self.device, batch_size, self.max_pixels,
                               progress=progress, dist=dist, workers=self.workers, augment=mirror,
                               key_suffix=FLIP_SUFFIX)
            for err in o.failed.values():  # readable a moment ago: changed during the run
                raise err
            if not self.n_views:
                views.append(out.feats)  # samples draw the clean image or its mirror
            views.append(o.feats)
            self.n_views = len(views) - 1
        self.feats = Features(views, self.device)  # view v + 1 is cached view v

    def _check_readable(self, ids, paths) -> None:
        # the doctor's cheap decode check: a bad file costs its rows now, not a crash mid-epoch
        for i, p in zip(ids, paths):
            try:
                inspect_image(p, self.max_pixels)
            except ImageError as e:
                self.failed[i] = e

    def _keys(self, rows: Sequence[int], epoch: int | None,
              samples: Sequence[int] | None = None) -> list[tuple[int, object]]:
        """Keys ``(row, arg)`` of ``self.data`` for ``rows`` (see :class:`DecodeImages`):
        ``(row, None)``, the clean image, when ``epoch`` is None or nothing is augmented; else
        the view training ``epoch`` draws for each sample (``samples[k]`` for ``rows[k]``,
        default the row)."""
        if self.aug is None or epoch is None:
            return [(int(r), None) for r in rows]
        samples = rows if samples is None else samples
        return [(int(r), (("e", epoch, s), self.paths[r])) for r, s in zip(rows, samples)]

    def _view_keys(self, rows: Sequence[int], view: int) -> list[tuple[int, object]]:
        """Keys of ``self.data`` for cached augmented view ``view`` of ``rows``."""
        return [(int(r), (view, self.paths[r])) for r in rows]

    def plan_epoch(self, epoch: int, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Start decoding the ``(rows, samples)`` of each coming step of ``epoch``, in order,
        in ``runtime.num_workers`` processes (raw mode only; other modes decode nothing)."""
        if self.mode != "raw":
            return
        self._plan = deque(self._keys(rows, epoch, samples) for rows, samples in batches)
        self._loader = iter(self._decode(list(self._plan)))

    def _decode(self, plan: list[list[tuple[int, object]]], data: DecodeImages | None = None):
        """Batches of ``plan`` decoded from ``data`` (default: this side's images)."""
        data = self.data if data is None else data
        return decode_loader(data, plan, self.workers, wants_channels_last(self.tower))

    def _pixels(self, rows: Sequence[int], epoch: int | None, samples: Sequence[int] | None) -> torch.Tensor:
        keys = self._keys(rows, epoch, samples)
        if self._plan and self._plan[0] == keys:  # decoded ahead by the loader
            self._plan.popleft()
            batch = next(self._loader)
        else:
            batch = Collate(wants_channels_last(self.tower))([self.data[k] for k in keys])
        return _stack(batch).to(self.device)  # [batch, 3, H, W]

    @torch.no_grad()
    def _init_prefix(self, batch_size: int, progress: bool) -> None:
        n_last = n_last_blocks(self.model.cfg.image.freeze)
        self.tower.eval()
        self.prefix: list[list[dict]] = []  # [view][image] -> prefix dict; view 0 is clean
        n = len(self.paths)
        chunks = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        bar = tqdm(total=n * (1 + self.n_views + self.mirror), desc="image prefix", unit="item",
                   disable=not progress or n == 0, leave=False, dynamic_ncols=True)

        def run(plan, data=None):
            items: list[dict] = []
            for batch in self._decode(plan, data):
                pixels = _stack(batch).to(self.device)  # [batch, 3, H, W]
                items += _split_prefix(self.tower.forward_prefix(pixels, n_last=n_last))
                bar.update(len(pixels))
            return items

        self.prefix.append(run([self._keys(c, None) for c in chunks]))
        for view in range(self.n_views):
            self.prefix.append(run([self._view_keys(c, view) for c in chunks]))
        if self.mirror:  # the mirror beside the clean image (or the augmented views), as features do
            flipped = DecodeImages(self.paths, self.transform, self.max_pixels, mirror)
            if not self.n_views:
                self.prefix.append(self.prefix[0])  # the same tensors: samples draw clean or mirror
            self.prefix.append(run([[(r, "flip") for r in c] for c in chunks], flipped))
            self.n_views = len(self.prefix) - 1
        bar.close()

    @torch.no_grad()
    def embed_all(self, rows: Sequence[int], batch_size: int) -> np.ndarray:
        """Clean (unaugmented) embeddings of ``rows``; a training tower's images are decoded
        by the loader's workers."""
        if self.mode != "raw":
            return super().embed_all(rows, batch_size)
        plan = [self._keys(rows[s:s + batch_size], None) for s in range(0, len(rows), batch_size)]
        out = [self.model.encode_image(_stack(b).to(self.device)).float().cpu().numpy()
               for b in self._decode(plan)]
        return np.concatenate(out)

    def train_embed(self, rows: np.ndarray, epoch: int | None = None,
                    samples: np.ndarray | None = None) -> torch.Tensor:
        """Embeddings ``[len(rows), embed_dim]`` of ``rows`` as training ``epoch`` draws each
        sample (``samples[k]`` for ``rows[k]``, default the row); ``epoch=None``: clean."""
        return self._embed(rows, epoch, samples)

    def inputs(self, rows: np.ndarray, epoch: int | None = None,
               samples: np.ndarray | None = None) -> torch.Tensor | list[dict]:
        """What :meth:`ImageSide.encode` takes for ``rows`` (drawn as in :meth:`ImageSide.train_embed`): cached
        features ``[batch, width]``, the cached prefix of each image (a list) or pixels
        ``[batch, 3, H, W]``, by mode; :func:`take` picks some of its items."""
        if self.mode == "raw":
            return self._pixels(rows, epoch, samples)
        slots = self._slots(epoch, rows if samples is None else samples)
        if self.mode == "features":
            return self.feats.take(rows, slots)
        return [self.prefix[k][r] for r, k in zip(rows, slots)]

    def encode(self, inputs: torch.Tensor | list[dict]) -> torch.Tensor:
        """Embeddings ``[batch, embed_dim]`` of what :meth:`ImageSide.inputs` gave (or some of its items)."""
        if self.mode == "features":
            return self.model.project_image(inputs)
        if self.mode == "prefix":
            n_last = n_last_blocks(self.model.cfg.image.freeze)
            batch = {k: t.to(self.device) for k, t in _pad_prefix(inputs).items()}
            return self.model.project_image(self.tower.forward_suffix(batch, n_last=n_last))
        return self.model.encode_image(inputs)

    def _embed(self, rows: np.ndarray, epoch: int | None, samples: np.ndarray | None = None) -> torch.Tensor:
        return self.encode(self.inputs(rows, epoch, samples))


class TextSide(_Side):
    """The caption rows of a table: ``index`` maps row origin -> row of this side."""

    def __init__(self, model: DualEncoder, table: PairTable, device: str, cache_root: Path | None,
                 batch_size: int = 128, progress: bool = True, *, cfg=None, dist=None, training: bool = False) -> None:
        self._setup(model, "text", device, cfg, training)
        self.captions = list(table.caption)
        self.image_ids = list(table.image_id)
        self.index = {o: k for k, o in enumerate(table.origin)}
        if self.mode == "features":
            views = [self.captions] + [self._augmented(v) for v in range(self.n_views)]
            self.feats = Features([text_features(self.tower, texts, cache_root, device, batch_size, progress,
                                                 dist=dist) for texts in views], device)  # view v + 1 is cached view v
        elif self.mode == "prefix":
            self._init_prefix(batch_size)

    def _augmented(self, view) -> list[str]:
        from crossalign.data.augment import augment_text

        return [augment_text(c, self.aug, stable_seed(self.seed, "text", view, k)) for k, c in enumerate(self.captions)]

    @torch.no_grad()
    def _init_prefix(self, batch_size: int) -> None:
        n_last = n_last_blocks(self.model.cfg.text.freeze)
        self.tower.eval()
        self.prefix = []
        for texts in [self.captions] + [self._augmented(v) for v in range(self.n_views)]:
            items: list[dict] = []
            for s in range(0, len(texts), batch_size):
                tok = {k: v.to(self.device) for k, v in self.tower.tokenize(texts[s:s + batch_size]).items()}
                items += _split_prefix(self.tower.forward_prefix(**tok, n_last=n_last))
            self.prefix.append(items)

    def train_embed(self, rows: np.ndarray, epoch: int | None = None) -> torch.Tensor:
        """Embeddings ``[len(rows), embed_dim]`` of ``rows`` as training ``epoch`` draws each
        caption; ``epoch=None``: clean."""
        return self._embed(rows, epoch)

    def inputs(self, rows: np.ndarray, epoch: int | None = None) -> torch.Tensor | list:
        """What :meth:`TextSide.encode` takes for ``rows`` (drawn as in :meth:`TextSide.train_embed`): cached
        features ``[batch, width]``, the cached prefix of each caption (a list) or the captions
        themselves, augmented, by mode; :func:`take` picks some of its items."""
        if self.mode == "features":
            return self.feats.take(rows, self._slots(epoch, rows))
        if self.mode == "prefix":
            return [self.prefix[k][r] for r, k in zip(rows, self._slots(epoch, rows))]
        texts = [self.captions[r] for r in rows]
        if self.aug is not None and epoch is not None:
            from crossalign.data.augment import augment_text

            texts = [augment_text(t, self.aug, stable_seed(self.seed, "text", "e", epoch, int(r)))
                     for t, r in zip(texts, rows)]
        return texts

    def lengths(self, inputs: torch.Tensor | list) -> list[int]:
        """What each item of :meth:`TextSide.inputs` is padded to: a caption's characters, a cached
        prefix's tokens; 0 where every item has one length (features, fixed-length prefixes)."""
        if self.mode == "features" or (self.mode == "prefix" and "attention_mask" not in inputs[0]):
            return [0] * len(inputs)
        if self.mode == "prefix":
            return [int(it["attention_mask"].shape[0]) for it in inputs]
        return [len(t) for t in inputs]

    def encode(self, inputs: torch.Tensor | list) -> torch.Tensor:
        """Embeddings ``[batch, embed_dim]`` of what :meth:`TextSide.inputs` gave (or some of its items)."""
        if self.mode == "features":
            return self.model.project_text(inputs)
        if self.mode == "prefix":
            n_last = n_last_blocks(self.model.cfg.text.freeze)

            def suffix(group: list[dict]) -> torch.Tensor:
                batch = {k: t.to(self.device) for k, t in _pad_prefix(group).items()}
                return self.tower.forward_suffix(batch, n_last=n_last)  # [len(group), width]

            if "attention_mask" not in inputs[0]:  # fixed length: nothing to group
                return self.model.project_text(suffix(inputs))
            return self.model.project_text(_in_chunks(suffix, inputs, self.lengths(inputs)))

        def tower(group: list[str]) -> torch.Tensor:
            tok = self.tower.tokenize(group)
            return self.tower(**{k: v.to(self.device) for k, v in tok.items()})  # [len(group), width]

        return self.model.project_text(_in_chunks(tower, inputs, self.lengths(inputs)))

    def _embed(self, rows: np.ndarray, epoch: int | None) -> torch.Tensor:
        return self.encode(self.inputs(rows, epoch))
