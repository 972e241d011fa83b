"""The index's one door into the embedding code: a run's model, its vectors, its hash.

Every call the index and the service make into model loading and embedding goes through
:class:`Embedder`, so the rest of ``crossalign.index`` never imports training or evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from crossalign.data.table import PairTable
from crossalign.errors import ConfigError
from crossalign.features import weights_hash

__all__ = ["Embedder", "TEXT_RUNTIMES"]

log = logging.getLogger("crossalign.index")
TEXT_RUNTIMES = ("auto", "torch", "onnx")


class Embedder:
    """A trained run's model, ready to embed collections and queries.

    Args:
        run: the run folder.
        which: ``best`` or ``last`` checkpoint.
        device: where the model runs.
        cache: read and fill the feature cache for frozen towers (off: every item runs
            through its tower).
        text_runtime: what embeds free-text queries: ``torch``, ``onnx`` (ONNX Runtime; an
            error when the text tower cannot run there) or ``auto`` (ONNX Runtime on a CPU
            where it can, else torch). ``text_runtime_used`` says which one does.
    """

    def __init__(self, run: str | Path, which: str = "best", device: str = "cpu",
                 cache: bool = True, text_runtime: str = "torch") -> None:
        from crossalign.runs import open_run

        if text_runtime not in TEXT_RUNTIMES:
            raise ConfigError(f"the text runtime must be one of {', '.join(TEXT_RUNTIMES)}, got "
                              f"{text_runtime!r}")
        self.run = Path(run)
        rd = open_run(run, None, which, device)
        self.model, self.cfg, self.device = rd.model, rd.cfg, device
        self.cache_root = rd.cache_root if cache else None
        self.weights_hash = weights_hash(self.model)  # which model made the vectors
        self.dim = int(self.cfg.model.embed_dim)
        self._onnx = self._onnx_text(text_runtime)
        self.text_runtime_used = "onnx" if self._onnx is not None else "torch"
        # an ONNX Runtime session takes calls from several threads at once; a torch model one
        self.parallel_text = self._onnx is not None

    def _onnx_text(self, runtime: str):
        from crossalign.embed.onnx_text import OnnxText, onnx_supported

        if runtime == "torch":
            return None
        why = onnx_supported(self.model) or ("" if self.device == "cpu" else
                                             f"queries run on {self.device}")
        if why:
            if runtime == "onnx":
                raise ConfigError(f"{self.run}: text queries cannot run in ONNX Runtime: {why}")
            log.info("text queries run in torch: %s", why)
            return None
        return OnnxText(self.model)

    def read_table(self, data: str | Path, data_format: str = "", split: str = "all",
                   quiet: bool = False) -> PairTable:
        """The ``split`` of a data set in any layout the readers know (``data_format``: empty =
        the run's ``data.format``), split the way the run split it."""
        import dataclasses

        from crossalign.data.prepare import prepare_table
        from crossalign.runs import select_split

        cfg = dataclasses.replace(self.cfg.data, format=data_format) if data_format else self.cfg.data
        table, _ = prepare_table(data, cfg, run_dir=self.run, quiet=quiet)
        return table if split == "all" else select_split(table, split)

    def images(self, paths: Sequence[str], progress: bool = True) -> tuple[np.ndarray, dict[str, str]]:
        """Vectors ``[n_ok, dim]`` of the readable image files, in input order, and the failures
        (path -> message)."""
        from crossalign.embed.collection import embed_image_files

        out = embed_image_files(self.model, list(dict.fromkeys(str(p) for p in paths)),
                           cache_root=self.cache_root, device=self.device,
                           batch_size=self.cfg.runtime.eval_batch_size, max_pixels=self.cfg.data.max_pixels,
                           progress=progress, workers=self.cfg.runtime.num_workers)
        return _normed(out.vectors), {p: str(e) for p, e in out.failed.items()}

    def captions(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """``[len(texts), dim]`` vectors of captions (frozen text towers read the feature cache)."""
        from crossalign.embed.collection import embed_texts

        return _normed(embed_texts(self.model, list(texts), cache_root=self.cache_root,
                                   device=self.device, batch_size=self.cfg.runtime.eval_batch_size,
                                   progress=progress))

    def text(self, queries: Sequence[str]) -> np.ndarray:
        """``[len(queries), dim]`` vectors of free text (queries never enter the feature cache)."""
        from crossalign.embed.collection import embed_texts

        if self._onnx is not None:
            vecs = self._onnx(list(queries))
            if vecs is not None:
                return _normed(vecs)
        return _normed(embed_texts(self.model, list(queries), device=self.device))

    def picture(self, image, name: str = "") -> np.ndarray:
        """``[1, dim]`` vector of an image file or of file bytes (an upload), decoded with the
        checks every stage uses; ``name`` names an upload in error messages."""
        from crossalign.errors import ImageError
        from crossalign.embed.collection import embed_images

        try:
            return _normed(embed_images(self.model, [image], device=self.device,
                                          max_pixels=self.cfg.data.max_pixels))
        except ImageError as e:
            if name and isinstance(image, (bytes, bytearray, memoryview)):
                raise ImageError(f"{name}: {str(e).split(': ', 1)[-1]}", e.kind) from None
            raise


def _normed(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size == 0:
        return x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
