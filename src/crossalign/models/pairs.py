"""Pretrained CLIP pairs: both towers, their projections and the logit scale from one checkpoint.

``model.pair=hf:FOLDER`` (a Hugging Face ``CLIPModel`` folder or hub name) builds the image
tower ``clip_image:FOLDER`` (the vision transformer and its ``visual_projection``) and the
text tower ``clip_text:FOLDER`` (the text transformer and its ``text_projection``), with no
further head (``model.head=none``, ``model.embed_dim`` the checkpoint's ``projection_dim``)
and the checkpoint's learned logit scale as the starting one. Each tower's output is what
``CLIPModel.get_image_features`` / ``get_text_features`` return, so after the dual encoder
normalises it a pair scores exactly as the library does. Images are preprocessed as the
checkpoint's image processor says (its size, crop, mean and std, bicubic), captions with the
checkpoint's own tokenizer.

Both towers of a pair come from one load of the checkpoint (:func:`build_pair`), and freezing
works per tower as for any other (``frozen``, ``last:N`` over the transformer layers,
``trainable``).
"""

from __future__ import annotations

import torch
from torch import nn

from crossalign.errors import ConfigError
from crossalign.models.registry import register

__all__ = ["CLIPImageTower", "CLIPTextTower", "PAIR_PREFIXES", "pair_towers", "build_pair", "resolve_pair",
           "export_pair", "tower_pair"]

PAIR_PREFIXES = ("hf",)


def pair_towers(pair: str) -> tuple[str, str]:
    """The image and text tower names of ``model.pair``."""
    kind, _, source = pair.partition(":")
    if kind not in PAIR_PREFIXES or not source:
        raise ConfigError(f"model.pair must be hf:FOLDER_OR_NAME (a CLIPModel folder), not {pair!r}")
    return f"clip_image:{source}", f"clip_text:{source}"


def _load(source: str, pretrained: bool):
    """``(CLIPModel, tokenizer, image processor)`` of a folder or hub name."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    from crossalign.models.text import _quiet_loading

    try:
        with _quiet_loading():
            config = AutoConfig.from_pretrained(source)
            if getattr(config, "model_type", "") != "clip":
                raise ConfigError(f"hf:{source}: a {config.model_type!r} checkpoint; model.pair reads "
                                  f"CLIPModel folders (model_type clip)")
            model = CLIPModel.from_pretrained(source) if pretrained else CLIPModel(config)
            tokenizer = AutoTokenizer.from_pretrained(source)
            processor = AutoImageProcessor.from_pretrained(source)
    except OSError as e:  # neither a local folder nor reachable on the hub
        raise ConfigError(f"hf:{source}: cannot load ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, tokenizer, processor


def _size(value, key: str) -> int:
    """A side from an image processor's size (an int, a dict or transformers' SizeDict)."""
    if isinstance(value, (int, float)):
        return int(value)
    for k in (key, "height", "shortest_edge"):
        v = value.get(k) if isinstance(value, dict) else getattr(value, k, None)
        if v:
            return int(v)
    raise ConfigError(f"cannot read an image size from {value!r}")


def _data_config(processor) -> dict:
    """timm-style preprocessing from a CLIP image processor: resize the short side, centre crop."""
    crop = _size(getattr(processor, "crop_size", None) or processor.size, "height")
    short = _size(processor.size, "shortest_edge")
    return {"input_size": (3, crop, crop), "interpolation": "bicubic", "crop_pct": crop / short,
            "mean": tuple(float(m) for m in processor.image_mean),
            "std": tuple(float(s) for s in processor.image_std)}


class CLIPImageTower(nn.Module):
    """A CLIP vision transformer and its projection: ``get_image_features``."""

    modality = "image"
    supports_split = False  # last:N runs the whole tower each step; only the last layers learn
    channels_last = False

    def __init__(self, model, processor, source: str) -> None:
        super().__init__()
        self.vision_model, self.projection = model.vision_model, model.visual_projection
        self.name, self.width = f"clip_image:{source}", int(model.config.projection_dim)
        self.data_config = _data_config(processor)
        self.pair_logit_scale = float(model.logit_scale.detach().exp())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixels).pooler_output  # [batch, hidden]
        return self.projection(pooled)  # [batch, projection_dim]

    def forward_prefix(self, pixels: torch.Tensor, n_last: int) -> dict[str, torch.Tensor]:
        return {"pixels": pixels}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        return self.forward(prefix["pixels"])

    def blocks(self) -> list[nn.Module]:
        """The embeddings and the transformer layers; the final norm and the projection follow
        them, so ``last:N`` trains those too."""
        vm = self.vision_model
        return [vm.embeddings, *vm.encoder.layers]


class CLIPTextTower(nn.Module):
    """A CLIP text transformer and its projection: ``get_text_features``."""

    modality = "text"
    supports_split = False

    def __init__(self, model, tokenizer, source: str, max_tokens: int = 77) -> None:
        super().__init__()
        self.text_model, self.projection = model.text_model, model.text_projection
        self.tokenizer = tokenizer
        self.name, self.width = f"clip_text:{source}", int(model.config.projection_dim)
        limit = int(model.config.text_config.max_position_embeddings)
        self.max_tokens = min(int(max_tokens), limit)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.projection(pooled)  # [batch, projection_dim]

    def forward_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       n_last: int) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        return self.forward(prefix["input_ids"], prefix["attention_mask"])

    def blocks(self) -> list[nn.Module]:
        tm = self.text_model
        return [tm.embeddings, *tm.encoder.layers]  # then the final norm and the projection

    def preprocess_config(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "max_tokens": self.max_tokens,
                "vocab": len(self.tokenizer)}


@register("clip_image", "image", "the image side of a CLIPModel: clip_image:<folder> (see model.pair)",
          prefix=True)
def _build_clip_image(model_name: str, pretrained: bool = True, checkpoint: str = "",
                      **_: object) -> CLIPImageTower:
    model, _tok, processor = _load(checkpoint or model_name, bool(pretrained))
    return CLIPImageTower(model, processor, model_name)


@register("clip_text", "text", "the text side of a CLIPModel: clip_text:<folder> (see model.pair)",
          prefix=True)
def _build_clip_text(model_name: str, pretrained: bool = True, checkpoint: str = "", max_tokens: int = 77,
                     **_: object) -> CLIPTextTower:
    model, tokenizer, _proc = _load(checkpoint or model_name, bool(pretrained))
    return CLIPTextTower(model, tokenizer, model_name, max_tokens)


def resolve_pair(cfg) -> None:
    """Set a ModelConfig with ``pair`` to what the pair builds (in place, so the run's config
    says it): both tower names, no head, the checkpoint's projection width."""
    if not cfg.pair:
        return
    cfg.image.tower, cfg.text.tower = pair_towers(cfg.pair)
    cfg.head = "none"
    # dropout on the towers' outputs regularises a head learned from scratch; a pair has none,
    # and dropping half of a CLIP embedding would only break what it knew
    cfg.image.dropout = cfg.text.dropout = 0.0


def build_pair(cfg, load: dict[str, bool]) -> tuple[CLIPImageTower, CLIPTextTower]:
    """Both towers of ``cfg.pair`` from one load of the checkpoint; ``cfg.embed_dim`` becomes
    its projection width, and, when its weights are loaded, ``cfg.logit_scale_init`` its
    learned logit scale."""
    source = cfg.pair.partition(":")[2]
    pretrained = load["image"] or load["text"]
    model, tokenizer, processor = _load(source, pretrained)
    image = CLIPImageTower(model, processor, source)
    text = CLIPTextTower(model, tokenizer, source, cfg.text.max_tokens)
    cfg.embed_dim = image.width
    if pretrained:
        cfg.logit_scale_init = min(image.pair_logit_scale, cfg.logit_scale_max)
    return image, text


def tower_pair(model) -> tuple[CLIPImageTower, CLIPTextTower]:
    img, txt = model.image_tower, model.text_tower
    if not (isinstance(img, CLIPImageTower) and isinstance(txt, CLIPTextTower)):
        raise ConfigError(f"only a CLIP pair's run exports to a CLIPModel folder; this one has "
                          f"{img.name} and {txt.name}")
    return img, txt


def export_pair(model, out) -> None:
    """Write a pair's weights as a Hugging Face ``CLIPModel`` folder that
    ``CLIPModel.from_pretrained(out)`` loads with the same vectors: the checkpoint's config,
    tokenizer and image processor, and the run's towers, projections and logit scale.

    The folder is written beside ``out`` under a temporary name and renamed into place whole.
    """
    import os
    import shutil
    import uuid
    from pathlib import Path

    img, txt = tower_pair(model)
    source = model.cfg.pair.partition(":")[2] or img.name.partition(":")[2]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty; choose another --out")
    clip, tokenizer, processor = _load(source, False)  # the checkpoint's config, no weights
    clip.vision_model.load_state_dict(img.vision_model.state_dict())
    clip.visual_projection.load_state_dict(img.projection.state_dict())
    clip.text_model.load_state_dict(txt.text_model.state_dict())
    clip.text_projection.load_state_dict(txt.projection.state_dict())
    with torch.no_grad():
        clip.logit_scale.copy_(model.logit_scale.detach().to(clip.logit_scale))
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        clip.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        from crossalign._io import DISK_ERRNOS, disk_error

        if e.errno in DISK_ERRNOS:
            raise disk_error(out, e) from e
        raise
