"""Hugging Face pairs (``model.pretrained_model=hf:FOLDER``): a ``CLIPModel`` or a ``SiglipModel``.

Each tower's output is what the library's ``get_image_features`` / ``get_text_features``
give: for CLIP the pooled output through ``visual_projection`` / ``text_projection``; for
SigLIP the pooled output itself (the vision tower's attention-pooling head and the text
tower's ``head`` are inside its ``vision_model`` / ``text_model``). Images are preprocessed as
the checkpoint's image processor says (CLIP: the shorter side resized, a centre crop; SigLIP:
both sides resized to the model's size), captions with the checkpoint's own tokenizer (SigLIP:
padded to the model's ``max_position_embeddings``, as it was trained, because it pools the
last position).
"""

from __future__ import annotations

import torch
from torch import nn

from crossalign.errors import ConfigError
from crossalign.models.image import UnsplitImageTower
from crossalign.models.registry import register

__all__ = ["CLIPImageTower", "CLIPTextTower", "HF_KINDS", "load_hf", "hf_pretrained", "export_hf"]

HF_KINDS = ("clip", "siglip")  # the model_type values an hf: pretrained model reads


def load_hf(source: str, pretrained: bool):
    """``(model, tokenizer, image processor)`` of a CLIPModel or SiglipModel folder or hub name."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    from crossalign.models.text import _quiet_loading

    try:
        with _quiet_loading():
            config = AutoConfig.from_pretrained(source)
            kind = getattr(config, "model_type", "")
            if kind not in HF_KINDS:
                raise ConfigError(f"hf:{source}: a {kind!r} checkpoint; model.pretrained_model=hf: reads CLIPModel "
                                  f"and SiglipModel folders (model_type clip or siglip)")
            if kind == "siglip" and not getattr(config.vision_config, "vision_use_head", True):
                raise ConfigError(f"hf:{source}: a SigLIP vision tower without its pooling head "
                                  f"(vision_use_head false) has no image embedding")
            cls = CLIPModel if kind == "clip" else SiglipModel
            model = cls.from_pretrained(source) if pretrained else cls(config)
            tokenizer = AutoTokenizer.from_pretrained(source)
            processor = AutoImageProcessor.from_pretrained(source)
    except OSError as e:  # neither a local folder nor reachable on the hub
        raise ConfigError(f"hf:{source}: cannot load ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, tokenizer, processor


def _is_siglip(model) -> bool:
    return model.config.model_type == "siglip"


def _side(value, key: str) -> int | None:
    """One entry of an image processor's size (an int, a dict or transformers' SizeDict)."""
    if isinstance(value, (int, float)):
        return int(value)
    v = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
    return int(v) if v else None


_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's numbering, which transformers keeps


def _data_config(processor) -> dict:
    """timm-style preprocessing from an image processor: CLIP resizes the shorter side and crops
    the centre; SigLIP resizes both sides to its size (timm's ``squash``)."""
    size = processor.size
    resample = getattr(processor, "resample", 3)
    common = {"interpolation": _RESAMPLE.get(int(getattr(resample, "value", resample)), "bicubic"),
              "mean": tuple(float(m) for m in processor.image_mean),
              "std": tuple(float(s) for s in processor.image_std)}
    short = _side(size, "shortest_edge")
    if short:
        crop_size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", True) else None
        crop = (_side(crop_size, "height") if crop_size else None) or short
        return {"input_size": (3, crop, crop), "crop_pct": crop / short, **common}
    h, w = _side(size, "height"), _side(size, "width")
    if not (h and w):
        raise ConfigError(f"cannot read an image size from {size!r}")
    return {"input_size": (3, h, w), "crop_pct": 1.0, "crop_mode": "squash", **common}


class CLIPImageTower(UnsplitImageTower):
    """The image side of a CLIPModel (vision transformer and projection) or a SiglipModel
    (vision transformer with its pooling head): ``get_image_features``."""

    def __init__(self, model, processor, source: str) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        siglip = _is_siglip(model)
        self.projection = nn.Identity() if siglip else model.visual_projection
        width = model.config.vision_config.hidden_size if siglip else model.config.projection_dim
        self.name, self.width = f"clip_image:{source}", int(width)
        self.data_config = _data_config(processor)
        # what the checkpoint learned: the logit scale, and SigLIP's logit bias (None for CLIP)
        self.pretrained_logit_scale = float(model.logit_scale.detach().exp())
        self.pretrained_logit_bias = float(model.logit_bias.detach()) if siglip else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixels).pooler_output  # [batch, hidden]
        return self.projection(pooled)  # [batch, width]

    def blocks(self) -> list[nn.Module]:
        """The embeddings and the transformer layers; the final norm, SigLIP's pooling head and
        CLIP's projection follow them, so ``last:N`` trains those too."""
        vm = self.vision_model
        return [vm.embeddings, *vm.encoder.layers]


class CLIPTextTower(nn.Module):
    """The text side of a CLIPModel (text transformer and projection) or a SiglipModel (text
    transformer with its head): ``get_text_features``."""

    modality = "text"
    supports_split = False

    def __init__(self, model, tokenizer, source: str, max_tokens: int = 77) -> None:
        super().__init__()
        self.text_model = model.text_model
        siglip = _is_siglip(model)
        self.projection = nn.Identity() if siglip else model.text_projection
        width = model.config.text_config.projection_size if siglip else model.config.projection_dim
        self.tokenizer = tokenizer
        self.name, self.width = f"clip_text:{source}", int(width)
        limit = int(model.config.text_config.max_position_embeddings)
        # SigLIP pools the last position, so a caption is always padded to the full length
        self.padding = "max_length" if siglip else True
        self.max_tokens = limit if siglip else min(int(max_tokens), limit)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.projection(pooled)  # [batch, width]

    def forward_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       n_last: int = 0) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids} | ({} if attention_mask is None else {"attention_mask": attention_mask})

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        ids, mask = prefix["input_ids"], prefix.get("attention_mask")
        short = self.max_tokens - ids.shape[1]
        if self.padding == "max_length" and short > 0:  # a cache trimmed the padding: put it back
            ids = torch.nn.functional.pad(ids, (0, short), value=int(self.tokenizer.pad_token_id or 0))
            mask = None if mask is None else torch.nn.functional.pad(mask, (0, short), value=0)
        return self.forward(ids, mask)

    def blocks(self) -> list[nn.Module]:
        tm = self.text_model
        return [tm.embeddings, *tm.encoder.layers]  # then the final norm and the projection / head

    def preprocess_config(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "max_tokens": self.max_tokens,
                "vocab": len(self.tokenizer), "padding": str(self.padding),
                "pooling": "eos" if self.padding is True else "last"}


@register("clip_image", "image", "the image side of a CLIPModel or SiglipModel: clip_image:<folder> "
          "(see model.pretrained_model)", prefix=True)
def _build_clip_image(model_name: str, pretrained: bool = True, checkpoint: str = "",
                      **_: object) -> CLIPImageTower:
    model, _tok, processor = load_hf(checkpoint or model_name, bool(pretrained))
    return CLIPImageTower(model, processor, model_name)


@register("clip_text", "text", "the text side of a CLIPModel or SiglipModel: clip_text:<folder> "
          "(see model.pretrained_model)", prefix=True)
def _build_clip_text(model_name: str, pretrained: bool = True, checkpoint: str = "", max_tokens: int = 77,
                     **_: object) -> CLIPTextTower:
    model, tokenizer, _proc = load_hf(checkpoint or model_name, bool(pretrained))
    return CLIPTextTower(model, tokenizer, model_name, max_tokens)


def hf_pretrained(source: str, pretrained: bool, max_tokens: int) -> tuple[CLIPImageTower, CLIPTextTower]:
    """Both towers of an hf: model from one load of the checkpoint."""
    model, tokenizer, processor = load_hf(source, pretrained)
    return CLIPImageTower(model, processor, source), CLIPTextTower(model, tokenizer, source, max_tokens)


def export_hf(model, img: CLIPImageTower, txt: CLIPTextTower, source: str, out) -> None:
    """Write a pretrained model's run as a ``CLIPModel`` / ``SiglipModel`` folder that ``from_pretrained``
    loads with the same vectors: the checkpoint's config, tokenizer and image processor, and the
    run's towers, projections, logit scale and (SigLIP) bias. The folder is written beside
    ``out`` under a temporary name and renamed into place whole."""
    import os
    import shutil
    import uuid
    from pathlib import Path

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty; choose another `out`")
    lib, tokenizer, processor = load_hf(source, False)  # the checkpoint's config, no weights
    lib.vision_model.load_state_dict(img.vision_model.state_dict())
    lib.text_model.load_state_dict(txt.text_model.state_dict())
    if not _is_siglip(lib):
        lib.visual_projection.load_state_dict(img.projection.state_dict())
        lib.text_projection.load_state_dict(txt.projection.state_dict())
    with torch.no_grad():
        lib.logit_scale.copy_(model.logit_scale.detach().to(lib.logit_scale))
        if _is_siglip(lib):
            if model.logit_bias is None:
                raise ConfigError("this SigLIP model's run has no logit bias to export")
            lib.logit_bias.copy_(model.logit_bias.detach().to(lib.logit_bias))
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        lib.save_pretrained(tmp)
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
