"""open_clip pairs (``model.pretrained_model=open_clip:NAME``, ``model.pretrained_weights=FILE_OR_TAG``).

``NAME`` is an open_clip model name (``ViT-B-32``, ``ViT-B-16-SigLIP``, ...) or the path of an
open_clip model-config JSON file, registered with ``open_clip.add_model_config`` under its
stem. The model is built with ``force_custom_text=True``, so its text side is one module
(``model.text``); open_clip's loader moves the text keys of a standard checkpoint there
(``convert_to_custom_text_state_dict``), and an export moves them back for models that
open_clip builds as a plain ``CLIP``. The image tower's output is ``encode_image``'s, the
text tower's ``encode_text``'s, both unnormalised. Images are preprocessed as the model's
``preprocess_cfg`` says (its size, ``shortest`` or ``squash`` resize, interpolation, mean and
std), captions with ``open_clip.get_tokenizer`` at the model's context length.

CLIP models (``CLIP`` / ``CustomTextCLIP``, SigLIP-type ones with a logit bias included) are
read; CoCa, whose text side also decodes, is refused. open_clip is an optional dependency
(``pip install crossalign[open_clip]``), imported only here and only when an open_clip model is used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from crossalign.errors import ConfigError
from crossalign.models.image import UnsplitImageTower
from crossalign.models.registry import register

__all__ = ["OpenClipImageTower", "OpenClipTextTower", "open_clip_module", "load_open_clip",
           "open_clip_pretrained", "export_open_clip"]

SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip names that carry their own weights


def open_clip_module():
    """The ``open_clip`` package, or a ConfigError saying how to install it."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError("model.pretrained_model=open_clip:... needs open_clip, which is not installed: "
                          "pip install crossalign[open_clip]") from None
    return open_clip


class _DropRootRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


def _quiet_open_clip():
    """open_clip reports on the root logger ("initialized randomly" when a run's checkpoint
    brings the weights); those records are dropped while it builds, and only those."""
    from crossalign.models.text import filtered_records

    return filtered_records(logging.getLogger(), _DropRootRecords())


def _model_name(oc, name: str) -> str:
    """open_clip's name for ``NAME``: a model-config JSON file is registered under its stem."""
    if not name.endswith(".json"):
        return name
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"open_clip:{name}: no such model-config file")
    oc.add_model_config(path)
    return path.stem


def _build_kwargs(oc, name: str, model_name: str, weights: str, pretrained: bool) -> dict:
    """``create_model`` options: the weights when ``pretrained``; otherwise none are read (a run's
    checkpoint brings them) and a tag's preprocessing is applied without its download."""
    schema = model_name.startswith(SCHEMAS)
    if schema and weights:
        raise ConfigError(f"open_clip:{name}: the weights come with the name; leave model.pretrained_weights empty")
    cfg = None if schema else oc.get_model_config(model_name)
    if not schema and cfg is None:
        raise ConfigError(f"open_clip:{name}: not an open_clip model; open_clip.list_models() names them, "
                          f"or give a model-config JSON file")
    if cfg and "multimodal_cfg" in cfg:
        raise ConfigError(f"open_clip:{name}: a CoCa model; model.pretrained_model reads CLIP models")
    is_file = bool(weights) and Path(weights).is_file()
    tag = oc.get_pretrained_cfg(model_name, weights) if weights and not is_file else {}
    if weights and not (is_file or tag):
        raise ConfigError(f"model.pretrained_weights={weights}: neither a file nor a pretrained tag of "
                          f"{model_name} (tags: {oc.list_pretrained_tags_by_model(model_name)})")
    if pretrained and not (weights or schema):
        raise ConfigError(f"open_clip:{name}: give its weights in model.pretrained_weights (a checkpoint file or "
                          f"a tag: {oc.list_pretrained_tags_by_model(model_name)})")
    kw = {"force_custom_text": True, "pretrained_image": False, "pretrained_text": False}
    if pretrained:
        return {**kw, "pretrained": weights or None}
    from open_clip.transform import merge_preprocess_dict

    return {**kw, "load_weights": False, "force_preprocess_cfg": merge_preprocess_dict({}, tag) if tag else None}


def load_open_clip(name: str, weights: str, pretrained: bool):
    """``(CustomTextCLIP, tokenizer)`` of an open_clip model name or model-config JSON file."""
    oc = open_clip_module()
    model_name = _model_name(oc, name)
    kw = _build_kwargs(oc, name, model_name, weights, pretrained)
    try:
        with _quiet_open_clip():
            model = oc.create_model(model_name, **kw)
            tokenizer = oc.get_tokenizer(model_name, context_length=model.context_length)
    except (RuntimeError, OSError, ValueError) as e:  # a failed download, a checkpoint of another model
        raise ConfigError(f"open_clip:{name}: cannot load ({str(e).splitlines()[0][:300]})") from None
    model.eval()
    return model, tokenizer


def _data_config(pp: dict) -> dict:
    """timm-style preprocessing from an open_clip ``preprocess_cfg``."""
    size = pp["size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ConfigError(f"open_clip resize_mode {mode!r} (padding to a square) is not supported; "
                          f"shortest and squash are")
    return {"input_size": (3, int(h), int(w)), "interpolation": pp.get("interpolation", "bicubic"),
            "crop_pct": 1.0, "mean": tuple(float(m) for m in pp["mean"]),
            "std": tuple(float(s) for s in pp["std"]), **({"crop_mode": "squash"} if mode == "squash" else {})}


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The stem and the transformer blocks of an open_clip tower, input to output; a tower of
    another architecture is one block."""
    resblocks = getattr(getattr(module, "transformer", None), "resblocks", None)
    if resblocks is not None:  # open_clip's VisionTransformer / TextTransformer
        stem = module.conv1 if hasattr(module, "conv1") else getattr(module, "token_embedding", None)
        return [stem, *resblocks] if stem is not None else list(resblocks)
    trunk = getattr(module, "trunk", None)  # a timm image model
    if trunk is not None and hasattr(trunk, "blocks"):
        stem = getattr(trunk, "patch_embed", None)
        return [stem, *trunk.blocks] if stem is not None else list(trunk.blocks)
    return [module]


class OpenClipImageTower(UnsplitImageTower):
    """An open_clip model's ``visual``: ``encode_image``."""

    def __init__(self, model, source: str) -> None:
        super().__init__()
        from open_clip import get_model_preprocess_cfg

        self.visual = model.visual
        self.name, self.width = f"open_clip_image:{source}", int(model.text.output_dim)
        self.data_config = _data_config(get_model_preprocess_cfg(model))
        # what the checkpoint learned: the logit scale, and a SigLIP-type model's bias (else None)
        self.pretrained_logit_scale = float(model.logit_scale.detach().exp())
        bias = getattr(model, "logit_bias", None)
        self.pretrained_logit_bias = float(bias.detach()) if bias is not None else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)  # [batch, embed_dim]

    def blocks(self) -> list[nn.Module]:
        """The patch embedding and the transformer blocks; the pooling, final norm and
        projection follow them, so ``last:N`` trains those too."""
        return _blocks(self.visual)

    def tail_parameters(self) -> list[nn.Parameter]:
        """The projection matrix: it follows the blocks but is registered before them."""
        proj = getattr(self.visual, "proj", None)
        return [proj] if isinstance(proj, nn.Parameter) else []


class OpenClipTextTower(nn.Module):
    """An open_clip model's text side (``model.text`` of a custom-text model): ``encode_text``.

    Its tokens are ``{"text": [batch, context_length]}``, open_clip's own token ids (no
    attention mask: the model masks causally, or by its pad id)."""

    modality = "text"
    supports_split = False

    def __init__(self, model, tokenizer, source: str) -> None:
        super().__init__()
        self.text, self.tokenizer = model.text, tokenizer
        self.name, self.width = f"open_clip_text:{source}", int(model.text.output_dim)
        self.max_tokens = int(model.context_length)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(list(texts), context_length=self.max_tokens)}  # [batch, tokens]

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.text(text)  # [batch, embed_dim]

    def forward_prefix(self, text: torch.Tensor, n_last: int) -> dict[str, torch.Tensor]:
        return {"text": text}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        return self.forward(prefix["text"])

    def blocks(self) -> list[nn.Module]:
        return _blocks(self.text)  # then the final norm and the projection

    def tail_parameters(self) -> list[nn.Parameter]:
        proj = getattr(self.text, "text_projection", None)
        return [proj] if isinstance(proj, nn.Parameter) else []

    def preprocess_config(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "max_tokens": self.max_tokens,
                "vocab": int(getattr(self.text, "vocab_size", 0) or 0),
                "pooling": str(getattr(self.text, "pool_type", "model"))}


@register("open_clip_image", "image", "the image side of an open_clip model: open_clip_image:<name> "
          "(see model.pretrained_model)", prefix=True)
def _build_image(model_name: str, pretrained: bool = True, checkpoint: str = "",
                 **_: object) -> OpenClipImageTower:
    model, _tok = load_open_clip(model_name, checkpoint, bool(pretrained))
    return OpenClipImageTower(model, model_name)


@register("open_clip_text", "text", "the text side of an open_clip model: open_clip_text:<name> "
          "(see model.pretrained_model)", prefix=True)
def _build_text(model_name: str, pretrained: bool = True, checkpoint: str = "",
                **_: object) -> OpenClipTextTower:
    model, tokenizer = load_open_clip(model_name, checkpoint, bool(pretrained))
    return OpenClipTextTower(model, tokenizer, model_name)


def open_clip_pretrained(name: str, weights: str, pretrained: bool) -> tuple[OpenClipImageTower, OpenClipTextTower]:
    """Both towers of an open_clip model from one load of the model."""
    model, tokenizer = load_open_clip(name, weights, pretrained)
    return OpenClipImageTower(model, name), OpenClipTextTower(model, tokenizer, name)


# the text keys open_clip's convert_to_custom_text_state_dict moves under "text."
_TEXT_KEYS = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")


def _standard_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``convert_to_custom_text_state_dict``: a plain CLIP's key layout."""
    return {(k[len("text."):] if k.startswith("text.") and k[len("text."):].startswith(_TEXT_KEYS) else k): v
            for k, v in state.items()}


def export_open_clip(model, img: OpenClipImageTower, txt: OpenClipTextTower, name: str, weights: str,
                     out) -> str:
    """Write a pretrained model's run as a checkpoint file that ``open_clip.create_model(NAME, pretrained=out)``
    loads with the same vectors (safetensors for a ``.safetensors`` name, else ``torch.save``);
    returns NAME. Text keys are in the layout open_clip builds the model in without
    ``force_custom_text`` (a plain CLIP's for most models)."""
    from crossalign._io import atomic_path

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out}: exists; choose another `out`")
    oc = open_clip_module()
    lib, _tok = load_open_clip(name, weights, False)
    lib.visual.load_state_dict(img.visual.state_dict())
    lib.text.load_state_dict(txt.text.state_dict())
    with torch.no_grad():
        lib.logit_scale.copy_(model.logit_scale.detach().reshape(lib.logit_scale.shape))
        if lib.logit_bias is not None:
            bias = model.logit_bias if model.logit_bias is not None else torch.zeros(())
            lib.logit_bias.copy_(bias.detach().reshape(lib.logit_bias.shape))
    state = {k: v.detach().cpu().contiguous() for k, v in lib.state_dict().items()}
    model_name = _model_name(oc, name)
    cfg = oc.get_model_config(model_name) or {}
    if not (cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {})):
        state = _standard_layout(state)
    with atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return model_name
