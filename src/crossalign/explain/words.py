"""Attributions over words: which words of a text made it close to an image.

Integrated gradients (captum's ``LayerIntegratedGradients``) of the cosine similarity
between the text's embedding and a fixed image vector, on the tower's token embedding
layer, from a baseline where every ordinary token is padding (special tokens and the
attention mask kept). Token scores are folded back into the words they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossalign.errors import ConfigError

__all__ = ["WordScores", "word_scores", "split_words"]


@dataclass
class WordScores:
    """Per-word attributions of one text; ``sum(scores) - delta`` is the similarity's rise from
    the baseline (integrated gradients' completeness)."""

    words: list[str]
    scores: list[float]
    delta: float
    baseline_similarity: float
    truncated: bool

    def shares(self) -> list[float]:
        """Each word's share of the total absolute attribution (sums to 1)."""
        total = sum(abs(s) for s in self.scores)
        return [abs(s) / total if total > 0 else 0.0 for s in self.scores]


def _embedding_layer(tower: nn.Module) -> nn.Module:
    if hasattr(tower, "vocab"):  # word-level towers trained from scratch
        return tower.embed
    get = getattr(getattr(tower, "model", None), "get_input_embeddings", None)
    if get is None:
        raise ConfigError(f"text tower {getattr(tower, 'name', type(tower).__name__)!r}: no token "
                          "embedding layer to attribute words to (word scores need a transformers "
                          "encoder tower or a word-level one trained from scratch)")
    return get()


def split_words(tower: nn.Module, text: str) -> tuple[torch.Tensor, list[int | None], list[str], bool]:
    """Token ids ``[1, tokens]``, the word each token belongs to (None for special tokens),
    the words, and whether the text was cut at ``max_tokens``."""
    if hasattr(tower, "vocab"):
        words = tower.vocab.split(text)
        ids = tower.tokenize([text])["input_ids"]
        n = ids.shape[1]
        if not words:  # an empty text is one unknown token
            return ids, [None] * n, [], False
        return ids, list(range(n)), words[:n], len(words) > n
    tok = tower.tokenizer
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"text tower {tower.name!r}: explaining words needs a fast tokenizer")
    enc = tok(text, truncation=True, max_length=tower.max_tokens, return_offsets_mapping=True)
    word_ids = enc.word_ids()
    spans: dict[int, list[int]] = {}
    for wid, (start, end) in zip(word_ids, enc["offset_mapping"]):
        if wid is not None:
            span = spans.setdefault(wid, [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    order = sorted(spans)
    remap = {wid: k for k, wid in enumerate(order)}
    words = [text[spans[w][0]:spans[w][1]] for w in order]
    truncated = False
    if len(word_ids) >= tower.max_tokens:
        from crossalign.models.text import quiet_length_warning

        with quiet_length_warning():
            truncated = len(tok(text, truncation=False)["input_ids"]) > len(word_ids)
    ids = torch.tensor([enc["input_ids"]])  # [1, tokens]
    return ids, [remap.get(w) if w is not None else None for w in word_ids], words, truncated


def _baseline(tower: nn.Module, ids: torch.Tensor, owners: list[int | None]) -> torch.Tensor:
    pad = 0 if hasattr(tower, "vocab") else tower.tokenizer.pad_token_id
    if pad is None:
        pad = tower.tokenizer.unk_token_id or 0
    base = ids.clone()
    for k, owner in enumerate(owners):
        if owner is not None:
            base[0, k] = pad
    return base


def word_scores(model: nn.Module, text: str, image_vector: torch.Tensor, steps: int = 32) -> WordScores:
    """Integrated gradients of ``cos(text, image_vector)`` folded into the text's words.

    Args:
        model: a DualEncoder.
        text: the text to explain.
        image_vector: ``[embed_dim]`` unit image vector.
        steps: integration steps (Gauss-Legendre).
    """
    from captum.attr import LayerIntegratedGradients

    tower = model.text_tower
    layer = _embedding_layer(tower)  # first: a tower without one fails before any tokenizing
    ids, owners, words, truncated = split_words(tower, text)
    mask = torch.ones_like(ids)
    image_vector = image_vector.reshape(1, -1).float()

    def similarity(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = model.encode_text(input_ids=input_ids, attention_mask=attention_mask)  # [batch, dim]
        return (emb * image_vector.to(emb)).sum(-1)  # [batch]

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            lig = LayerIntegratedGradients(similarity, layer)
            base = _baseline(tower, ids, owners)
            attr, delta = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), n_steps=steps,
                                        return_convergence_delta=True)
        with torch.no_grad():
            base_sim = float(similarity(base, mask)[0])
    finally:
        model.train(was_training)
    per_token = attr.sum(-1)[0].detach().float()  # [tokens]
    scores = [0.0] * len(words)
    for k, owner in enumerate(owners):
        if owner is not None and owner < len(words):
            scores[owner] += float(per_token[k])
    return WordScores(words, scores, float(delta.reshape(-1)[0]), base_sim, truncated)
