"""The index's one door into the embedding code: a run's model, its vectors, its hash.

Every call the index and the service make into model loading and embedding goes through
:class:`Embedder`, so the rest of ``crossalign.index`` never imports training or evaluation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from crossalign.data.table import PairTable
from crossalign.errors import ConfigError

__all__ = ["Embedder", "weights_hash", "content_hash", "thumbnail"]


def content_hash(path: str | Path) -> str:
    """The content hash of a file, the same key the feature cache uses."""
    from crossalign.features import file_key

    return file_key(path)


def thumbnail(path: str | Path, size: int, quality: int = 85) -> bytes:
    """A JPEG of the image at ``path`` fitted into ``size`` x ``size`` (upright, on white)."""
    import io

    from PIL import Image

    from crossalign.data.transforms import load_image

    im = load_image(str(path))
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def weights_hash(model: torch.nn.Module) -> str:
    """A hash of every tensor of a model (towers, heads, logit scale), by name."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Embedder:
    """A trained run's model, ready to embed collections and queries.

    Args:
        run: the run folder.
        which: ``best`` or ``last`` checkpoint.
        device: where the model runs.
        cache: read and fill the feature cache for frozen towers (off: every item runs
            through its tower).
    """

    def __init__(self, run: str | Path, which: str = "best", device: str = "cpu",
                 cache: bool = True) -> None:
        from crossalign.api import load
        from crossalign.config import default_cache_dir

        self.run = Path(run)
        self.aligner = load(run, which, device)
        self.model, self.cfg, self.device = self.aligner.model, self.aligner.cfg, device
        enabled = cache and self.cfg.cache.enabled
        self.cache_root = default_cache_dir(self.cfg.cache) if enabled else None
        self.weights_hash = weights_hash(self.model)
        self.dim = int(self.cfg.model.embed_dim)

    def read_table(self, data: str | Path, data_format: str = "", split: str = "all",
                   quiet: bool = False) -> PairTable:
        """The ``split`` of a data set in any layout the readers know (``data_format``: empty =
        the run's ``data.format``), split the way the run split it."""
        import dataclasses

        from crossalign.data.prepare import prepare_table
        from crossalign.evaluate.run import select_split

        cfg = dataclasses.replace(self.cfg.data, format=data_format) if data_format else self.cfg.data
        table, _ = prepare_table(data, cfg, run_dir=self.run, quiet=quiet)
        if split == "all":
            return table
        try:
            return select_split(table, split)
        except ValueError as e:  # an empty split is the user's choice of split
            raise ConfigError(f"{data}: {e}") from None

    def images(self, paths: Sequence[str], progress: bool = True) -> tuple[np.ndarray, dict[str, str]]:
        """Vectors ``[n_ok, dim]`` of the readable image files, in input order, and the failures
        (path -> message)."""
        from crossalign.evaluate.run import embed_images

        paths = list(dict.fromkeys(str(p) for p in paths))
        if not paths:
            return np.zeros((0, self.dim), np.float32), {}
        table = PairTable(image_id=list(paths), image_path=list(paths), caption=[""] * len(paths),
                          split=[""] * len(paths), origin=list(paths))
        ids, vecs, failed = embed_images(self.model, table, self.cache_root, self.device,
                                         self.cfg.train.eval_batch_size, progress)
        vecs = _normed(vecs) if len(ids) else np.zeros((0, self.dim), np.float32)
        return vecs, dict(failed)

    def captions(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """``[len(texts), dim]`` vectors of captions (frozen text towers read the feature cache)."""
        from crossalign.evaluate.run import encode_texts
        from crossalign.models.dual import is_frozen

        texts = list(texts)
        bs = self.cfg.train.eval_batch_size
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.cache_root is None or not is_frozen(self.model.cfg.text.freeze):
            return _normed(encode_texts(self.model, texts, self.device, bs))
        from crossalign.train.sides import TextSide

        table = PairTable(image_id=[""] * len(texts), image_path=[""] * len(texts), caption=texts,
                          split=[""] * len(texts), origin=[str(k) for k in range(len(texts))])
        side = TextSide(self.model, table, self.device, self.cache_root, bs, progress)
        return _normed(side.embed_all(list(range(len(texts))), bs))

    def text(self, queries: Sequence[str]) -> np.ndarray:
        """``[len(queries), dim]`` vectors of free text."""
        return _normed(self.aligner.encode_text(list(queries)))

    def image_file(self, path: str | Path) -> np.ndarray:
        """``[1, dim]`` vector of an image file (decoded with the checks every stage uses)."""
        return _normed(self.aligner.encode_image([str(path)]))

    def image_bytes(self, data: bytes, name: str = "upload") -> np.ndarray:
        """``[1, dim]`` vector of an image held in memory (an upload)."""
        from crossalign.data.transforms import ImageError

        fd, tmp = tempfile.mkstemp(prefix="crossalign-query-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                return self.image_file(tmp)
            except ImageError as e:
                raise ImageError(str(e).replace(tmp, name), e.kind) from None
        finally:
            os.unlink(tmp)


def _normed(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size == 0:
        return x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
