"""A tiny random Hugging Face ``CLIPModel`` folder, saved the way the hub lays one out."""

from __future__ import annotations

from pathlib import Path

import torch


def _tokenizer_files(folder: Path) -> int:
    """A CLIP tokenizer with a byte-level vocabulary and no merges; its vocabulary size
    (``<|startoftext|>`` is 0, ``<|endoftext|>`` 1)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = sorted(ByteLevel.alphabet())
    vocab.update({c: 2 + i for i, c in enumerate(chars)})
    vocab.update({c + "</w>": 2 + len(chars) + i for i, c in enumerate(chars)})
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    return len(vocab)


def make_tiny_clip(folder: Path) -> Path:
    """Two-layer vision and text transformers (32 wide, 24-d projections, 32 px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vocab = _tokenizer_files(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=24, logit_scale_init_value=3.0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
