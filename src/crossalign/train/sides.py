"""One side of the pair (images or texts) as the training loop sees it.

A side turns item indices into embeddings. When its tower is frozen it holds the
tower's outputs (from the feature cache) and only the head runs; otherwise it loads
and encodes raw inputs each step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from crossalign.data.table import PairTable
from crossalign.data.transforms import ImageError, eval_transform, load_image
from crossalign.data.validate import Problem
from crossalign.evaluate.embed import image_features, text_features
from crossalign.models.dual import DualEncoder

__all__ = ["ImageSide", "TextSide", "drop_failed_images"]


class ImageSide:
    """The unique images of a table: ``index`` maps image id -> row of this side."""

    def __init__(self, model: DualEncoder, table: PairTable, device: str, cache_root: Path | None,
                 batch_size: int, progress: bool) -> None:
        self.model, self.device = model, device
        ids, paths = table.images()
        self.failed: dict[str, str] = {}  # image id -> message
        self.transform = eval_transform(model.image_tower.data_config)
        if cache_root is not None:
            out = image_features(model.image_tower, paths, cache_root, device, batch_size, progress=progress)
            bad_paths = set(out.failed)
            self.failed = {i: out.failed[p] for i, p in zip(ids, paths) if p in bad_paths}
            self.feats: torch.Tensor | None = torch.from_numpy(out.feats).to(device)
        else:
            self.feats = None
            for i, p in zip(ids, paths):
                try:
                    load_image(p)
                except ImageError as e:
                    self.failed[i] = str(e)
        kept = [(i, p) for i, p in zip(ids, paths) if i not in self.failed]
        self.ids = [i for i, _ in kept]
        self.paths = [p for _, p in kept]
        self.index = {i: k for k, i in enumerate(self.ids)}

    def _pixels(self, rows: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.transform(load_image(self.paths[r])) for r in rows]).to(self.device)

    def train_embed(self, rows: np.ndarray) -> torch.Tensor:
        if self.feats is not None:
            return self.model.project_image(self.feats[torch.as_tensor(rows, device=self.device)])
        return self.model.encode_image(self._pixels(rows))

    @torch.no_grad()
    def embed_all(self, rows: Sequence[int], batch_size: int) -> np.ndarray:
        out = [self.train_embed(np.asarray(rows[s:s + batch_size])).float().cpu().numpy()
               for s in range(0, len(rows), batch_size)]
        return np.concatenate(out)


class TextSide:
    """The caption rows of a table: ``index`` maps row origin -> row of this side."""

    def __init__(self, model: DualEncoder, table: PairTable, device: str, cache_root: Path | None,
                 batch_size: int, progress: bool) -> None:
        self.model, self.device = model, device
        self.captions = list(table.caption)
        self.image_ids = list(table.image_id)
        self.index = {o: k for k, o in enumerate(table.origin)}
        self.feats: torch.Tensor | None = None
        if cache_root is not None:
            feats = text_features(model.text_tower, self.captions, cache_root, device, batch_size, progress)
            self.feats = torch.from_numpy(feats).to(device)

    def train_embed(self, rows: np.ndarray) -> torch.Tensor:
        if self.feats is not None:
            return self.model.project_text(self.feats[torch.as_tensor(rows, device=self.device)])
        tok = self.model.text_tower.tokenize([self.captions[r] for r in rows])
        return self.model.encode_text(**{k: v.to(self.device) for k, v in tok.items()})

    @torch.no_grad()
    def embed_all(self, rows: Sequence[int], batch_size: int) -> np.ndarray:
        out = [self.train_embed(np.asarray(rows[s:s + batch_size])).float().cpu().numpy()
               for s in range(0, len(rows), batch_size)]
        return np.concatenate(out)


def drop_failed_images(table: PairTable, failed: dict[str, str]) -> tuple[PairTable, list[Problem]]:
    """Remove the rows whose image could not be read, one problem per row."""
    problems = [Problem("unreadable_image", table.origin[k], f"{failed[i]}; row skipped")
                for k, i in enumerate(table.image_id) if i in failed]
    keep = [k for k, i in enumerate(table.image_id) if i not in failed]
    return (table.take(keep) if problems else table), problems
