"""Towers trained from scratch: a small CNN for images, an LSTM and a small Transformer for text.

The text towers read words, not word pieces: their vocabulary is built from the training
captions (``fit_vocabulary``) and saved with the run as JSON (``save_extras``), so a loaded
run tokenizes exactly as training did.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from crossalign.errors import ConfigError, InputNotFound, RunError
from crossalign.models.registry import register
from crossalign.models.text import masked_mean

__all__ = ["SmallCNN", "WordVocab", "LSTMTextTower", "TransformerTextTower", "VOCAB_FILE"]

VOCAB_FILE = "text_vocab.json"  # in the run folder
_WORD = re.compile(r"\w+|[^\w\s]")


# ---- image -----------------------------------------------------------------------------

def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Four conv stages (each halves the resolution), global average pooling: ``[batch, width]``."""

    modality = "image"
    supports_split = True

    def __init__(self, width: int = 256, image_size: int = 64) -> None:
        super().__init__()
        if width % 8:
            raise ConfigError(f"small_cnn: width must be a multiple of 8, got {width}")
        chans = [width // 8, width // 4, width // 2, width]
        self.stem = nn.Sequential(*_conv_bn(3, chans[0]))
        self.stages = nn.ModuleList(
            nn.Sequential(*_conv_bn(cin, cout, 2), *_conv_bn(cout, cout))
            for cin, cout in zip([chans[0]] + chans[:-1], chans))
        self.name, self.width = "small_cnn", width
        self.data_config = {"input_size": (3, image_size, image_size), "interpolation": "bilinear",
                            "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def blocks(self) -> list[nn.Module]:
        return list(self.stages)

    def forward_prefix(self, pixels: torch.Tensor, n_last: int) -> dict[str, torch.Tensor]:
        x = self.stem(pixels)  # [batch, width/8, H, W]
        for stage in self.stages[:len(self.stages) - _check(n_last, len(self.stages))]:
            x = stage(x)
        return {"x": x}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        x = prefix["x"]
        for stage in self.stages[len(self.stages) - _check(n_last, len(self.stages)):]:
            x = stage(x)
        return x.mean((2, 3))  # [batch, width]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_suffix(self.forward_prefix(pixels, len(self.stages)), len(self.stages))


def _check(n_last: int, n: int) -> int:
    if not 0 <= n_last <= n:
        raise ConfigError(f"n_last={n_last}, but the tower has {n} blocks")
    return n_last


# ---- text --------------------------------------------------------------------------------

class WordVocab:
    """Lower-cased words and punctuation; id 0 pads, id 1 stands for unknown words."""

    SPECIALS = ["<pad>", "<unk>"]

    def __init__(self, words: list[str] | None = None) -> None:
        self.words = list(words) if words else []
        self.index = {w: i for i, w in enumerate(self.words)}

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @classmethod
    def build(cls, texts: list[str], size: int) -> "WordVocab":
        """The ``size - 2`` most frequent words (ties broken alphabetically, so runs repeat)."""
        counts = Counter(w for t in texts for w in cls.split(t))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(size - len(cls.SPECIALS), 0)]
        return cls(cls.SPECIALS + [w for w, _ in ranked])

    def encode(self, text: str, max_tokens: int) -> list[int]:
        ids = [self.index.get(w, 1) for w in self.split(text)][:max_tokens]
        return ids or [1]  # an empty caption still has one (unknown) token

    def digest(self) -> str:
        return hashlib.blake2b("\n".join(self.words).encode(), digest_size=8).hexdigest()


class _WordTower(nn.Module):
    """Shared by the word-level towers: vocabulary, tokenizer, extras on disk, prefix/suffix."""

    modality = "text"
    supports_split = True

    def __init__(self, name: str, vocab_size: int, width: int, max_tokens: int) -> None:
        super().__init__()
        self.name, self.width, self.max_tokens, self.vocab_size = name, width, max_tokens, vocab_size
        self.vocab = WordVocab()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.layers = nn.ModuleList()

    def fit_vocabulary(self, texts: list[str]) -> None:
        """Build the word list from the training captions (before training starts)."""
        self.vocab = WordVocab.build(list(texts), self.vocab_size)

    def save_extras(self, run_dir: str | Path) -> None:
        from crossalign._io import atomic_write_json

        atomic_write_json(Path(run_dir) / VOCAB_FILE, {"tower": self.name, "words": self.vocab.words})

    def load_extras(self, run_dir: str | Path) -> None:
        path = Path(run_dir) / VOCAB_FILE
        if not path.is_file():
            raise InputNotFound(f"{path}: the {self.name} tower's vocabulary is missing from the run")
        words = json.loads(path.read_text(encoding="utf-8"))["words"]
        if len(words) > self.vocab_size:
            raise RunError(f"{path}: {len(words)} words, but the tower has room for {self.vocab_size}")
        self.vocab = WordVocab(words)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if not self.vocab.words:
            raise RuntimeError(f"{self.name}: no vocabulary yet; call fit_vocabulary(captions) or load a run")
        seqs = [self.vocab.encode(t, self.max_tokens) for t in texts]
        longest = max((len(s) for s in seqs), default=1)
        ids = torch.zeros(len(seqs), longest, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}  # [batch, tokens] each

    def preprocess_config(self) -> dict:
        return {"tokenizer": "words", "max_tokens": self.max_tokens, "pooling": "mean",
                "vocab": len(self.vocab.words), "vocab_digest": self.vocab.digest()}

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)  # [batch, tokens, width]

    def _layer(self, layer: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _finish(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       n_last: int) -> dict[str, torch.Tensor]:
        h = self._embed(input_ids)
        for layer in self.layers[:len(self.layers) - _check(n_last, len(self.layers))]:
            h = self._layer(layer, h, attention_mask)
        return {"hidden": h, "attention_mask": attention_mask}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        h, mask = prefix["hidden"], prefix["attention_mask"]
        for layer in self.layers[len(self.layers) - _check(n_last, len(self.layers)):]:
            h = self._layer(layer, h, mask)
        return masked_mean(self._finish(h), mask)  # [batch, width]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = len(self.layers)
        return self.forward_suffix(self.forward_prefix(input_ids, attention_mask, n), n)


class LSTMTextTower(_WordTower):
    """Word embeddings, bidirectional LSTM layers (``width / 2`` per direction), masked mean."""

    def __init__(self, vocab_size: int = 10000, width: int = 256, layers: int = 2, max_tokens: int = 256) -> None:
        super().__init__("lstm", vocab_size, width, max_tokens)
        if width % 2:
            raise ConfigError(f"lstm: width must be even (two directions), got {width}")
        self.layers = nn.ModuleList(nn.LSTM(width, width // 2, batch_first=True, bidirectional=True)
                                    for _ in range(layers))

    def _layer(self, layer: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # packing keeps padding out of the backward direction
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, _ = layer(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])[0]  # [batch, tokens, width]


class TransformerTextTower(_WordTower):
    """Word and learned position embeddings, pre-norm Transformer layers, final norm, masked mean."""

    def __init__(self, vocab_size: int = 10000, width: int = 256, layers: int = 2, max_tokens: int = 256,
                 heads: int = 0) -> None:
        super().__init__("transformer", vocab_size, width, max_tokens)
        heads = heads or max(1, width // 64)
        self.pos = nn.Parameter(torch.randn(max_tokens, width) * 0.02)  # [tokens, width]
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.1, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids) + self.pos[: input_ids.shape[1]]  # [batch, tokens, width]

    def _layer(self, layer: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return layer(h, src_key_padding_mask=mask == 0)

    def _finish(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h)


# ---- registration --------------------------------------------------------------------------

@register("small_cnn", "image", "4-stage CNN trained from scratch (width = image.width)",
          offline=lambda: True, scratch=True)
def _build_small_cnn(width: int = 256, image_size: int = 0, **_: object) -> SmallCNN:
    return SmallCNN(width, image_size or 64)


@register("lstm", "text", "2-layer bidirectional LSTM on words, trained from scratch",
          offline=lambda: True, scratch=True)
def _build_lstm(vocab_size: int = 10000, width: int = 256, layers: int = 2, max_tokens: int = 256,
                **_: object) -> LSTMTextTower:
    return LSTMTextTower(vocab_size, width, layers, max_tokens)


@register("transformer", "text", "small Transformer encoder on words, trained from scratch",
          offline=lambda: True, scratch=True)
def _build_transformer(vocab_size: int = 10000, width: int = 256, layers: int = 2, max_tokens: int = 256,
                       **_: object) -> TransformerTextTower:
    return TransformerTextTower(vocab_size, width, layers, max_tokens)
