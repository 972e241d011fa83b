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


def _siglip_tokenizer_files(folder: Path) -> int:
    """A fast tokenizer as SigLIP's works offline (its own needs sentencepiece): byte-level
    tokens, no merges, ``</s>`` appended, padded with ``<pad>`` (0); its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=16).save_pretrained(folder)
    return len(vocab)


SIGLIP_SCALE, SIGLIP_BIAS = 12.0, -6.5  # unlike the loss's defaults (10, -10), so a test sees whose


def make_tiny_siglip(folder: Path) -> Path:
    """A ``SiglipModel`` folder: two-layer vision and text transformers, 32 wide (the embedding
    width), 32 px images, 16 text positions; logit scale 12 and bias -6.5."""
    import math

    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    vocab = _siglip_tokenizer_files(folder)
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=2))
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(SIGLIP_SCALE))
        model.logit_bias.fill_(SIGLIP_BIAS)
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


OPEN_CLIP_SCALE = 20.0


def make_tiny_open_clip(folder: Path) -> tuple[Path, Path]:
    """An open_clip model-config JSON (``tiny-oc.json``: ViT of two layers, 32 wide, patch 8,
    32 px images; a text transformer of two layers, 32 wide, 16 tokens; 24-d embeddings) and
    its random weights (``tiny-oc.pt``, logit scale 20) in the key layout of a plain CLIP."""
    import json
    import math

    import open_clip

    config = folder / "tiny-oc.json"
    config.write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-oc")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(OPEN_CLIP_SCALE))
    weights = folder / "tiny-oc.pt"
    torch.save(model.state_dict(), weights)
    return config, weights
