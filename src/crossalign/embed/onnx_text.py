"""Query texts through ONNX Runtime: a run's text tower and its head, exported at load.

A search service embeds one short text per request. ONNX Runtime runs a Hugging Face encoder
for such batches faster than eager torch on a CPU, and one session can run requests from
several threads at once (each on its own core), where a torch model is best used by one
request at a time. The tower is exported in memory (nothing is written to disk) with the
weights of the loaded checkpoint, so the vectors are the model's own: equal to torch's to
float rounding.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from crossalign.models.dual import DualEncoder
from crossalign.models.text import HFTextTower

__all__ = ["OnnxText", "onnx_supported"]

log = logging.getLogger("crossalign.embed")
OPSET = 17


class _TextQuery(nn.Module):
    """Tokens -> unit vectors ``[batch, embed_dim]``: the tower, its pooling and its head."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.project_text(self.model.text_tower(input_ids, attention_mask))


def onnx_supported(model: DualEncoder) -> str:
    """Why the text side of ``model`` cannot run in ONNX Runtime ("" when it can)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    if not isinstance(model.text_tower, HFTextTower):
        return f"the text tower {type(model.text_tower).__name__} is not a transformers encoder"
    return ""


class OnnxText:
    """The text side of a model as an ONNX Runtime session.

    Args:
        model: the dual encoder (its text tower must be a transformers encoder; see
            :func:`onnx_supported`).
        threads: cores one call uses; calls from several threads run side by side.
    """

    def __init__(self, model: DualEncoder, threads: int = 1) -> None:
        import onnxruntime as ort

        why = onnx_supported(model)
        if why:
            raise ValueError(why)
        self.tower = model.text_tower
        was_training = model.training
        model.eval()
        example = self.tower.tokenize(["a query", "another, longer query text"])
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the exporter's notes on its own deprecation
                torch.onnx.export(_TextQuery(model), (example["input_ids"], example["attention_mask"]),
                                  buf, input_names=["input_ids", "attention_mask"],
                                  output_names=["vectors"], opset_version=OPSET, dynamo=False,
                                  dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                                "attention_mask": {0: "batch", 1: "tokens"},
                                                "vectors": {0: "batch"}})
        finally:
            model.train(was_training)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, texts: Sequence[str]) -> np.ndarray | None:
        """Unit vectors ``[len(texts), embed_dim]``, or None for texts the session cannot take
        (a text of several windows of a ``chunk_long`` tower: torch pools those)."""
        tok = self.tower.tokenize(list(texts))
        if len(tok["input_ids"]) != len(texts):
            return None
        feeds = {"input_ids": tok["input_ids"].numpy().astype(np.int64),
                 "attention_mask": tok["attention_mask"].numpy().astype(np.int64)}
        return self.session.run(None, feeds)[0]
