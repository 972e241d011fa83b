"""Pretrained models: both towers, their projections, the logit scale (and a SigLIP bias) from
one checkpoint.

``model.pretrained_model`` names the checkpoint (the kinds are :data:`PRETRAINED_KINDS`):

- ``hf:FOLDER_OR_NAME``, a Hugging Face ``CLIPModel`` or ``SiglipModel``
  (:mod:`crossalign.models._hf_pretrained`, towers ``clip_image:SRC`` / ``clip_text:SRC``);
- ``open_clip:NAME`` with ``model.pretrained_weights=FILE_OR_TAG``, an open_clip model
  (:mod:`crossalign.models._open_clip_pretrained`, towers ``open_clip_image:NAME`` /
  ``open_clip_text:NAME``).

A pretrained model has no further head (``model.head=none``, ``model.embed_dim`` the checkpoint's
embedding width), so after the dual encoder normalises a tower's output it scores exactly as
the library does. It starts from the checkpoint's learned logit scale whatever the loss; a
checkpoint with a logit bias (SigLIP) also brings its bias, trains with the sigmoid loss it
was trained with (see :func:`crossalign.models.dual.wrap_towers`) and has no ceiling on its
scale (SigLIP learns it unclamped; the released models end above CLIP's 100).

Both towers of a pretrained model come from one load of the checkpoint (:func:`build_pretrained`),
and freezing
works per tower as for any other (``frozen``, ``last:N`` over the transformer blocks,
``trainable``).
"""

from __future__ import annotations

import math

from crossalign.errors import ConfigError
from crossalign.models._hf_pretrained import CLIPImageTower, CLIPTextTower, export_hf, hf_pretrained
from crossalign.models._open_clip_pretrained import (OpenClipImageTower, OpenClipTextTower, export_open_clip,
                                               open_clip_pretrained)

__all__ = ["CLIPImageTower", "CLIPTextTower", "OpenClipImageTower", "OpenClipTextTower", "PRETRAINED_PREFIXES",
           "PRETRAINED_KINDS", "pretrained_towers", "build_pretrained", "resolve_pretrained", "export_pretrained", "pretrained_of"]

PRETRAINED_KINDS: dict[str, str] = {
    "hf": "hf:FOLDER_OR_NAME — a Hugging Face CLIPModel or SiglipModel folder (or hub name)",
    "open_clip": "open_clip:NAME — an open_clip model name or model-config JSON file, with "
                 "model.pretrained_weights=FILE_OR_TAG (pip install crossalign[open_clip])",
}
PRETRAINED_PREFIXES = tuple(PRETRAINED_KINDS)

_TOWERS = {"hf": ("clip_image", "clip_text"), "open_clip": ("open_clip_image", "open_clip_text")}
_PRETRAINED_TYPES = ((CLIPImageTower, CLIPTextTower), (OpenClipImageTower, OpenClipTextTower))


def _split(spec: str) -> tuple[str, str]:
    kind, _, source = spec.partition(":")
    if kind not in PRETRAINED_KINDS or not source:
        raise ConfigError(f"model.pretrained_model must be one of: {'; '.join(PRETRAINED_KINDS.values())}; not {spec!r}")
    return kind, source


def pretrained_towers(spec: str) -> tuple[str, str]:
    """The image and text tower names of ``model.pretrained_model``."""
    kind, source = _split(spec)
    image, text = _TOWERS[kind]
    return f"{image}:{source}", f"{text}:{source}"


def resolve_pretrained(cfg) -> None:
    """Set a ModelConfig with ``pretrained_model`` to what it builds (in place, so the run's config
    says it): both tower names, no head."""
    if not cfg.pretrained_model:
        if cfg.pretrained_weights:
            raise ConfigError("model.pretrained_weights is set but model.pretrained_model is not; give model.pretrained_model=open_clip:NAME")
        return
    cfg.image.tower, cfg.text.tower = pretrained_towers(cfg.pretrained_model)
    if cfg.pretrained_weights and not cfg.pretrained_model.startswith("open_clip:"):
        raise ConfigError(f"model.pretrained_weights is for open_clip pairs; {cfg.pretrained_model} has its weights in its folder")
    cfg.head = "none"
    # dropout on the towers' outputs regularises a head learned from scratch; a pretrained model has none,
    # and dropping half of a CLIP embedding would only break what it knew
    cfg.image.dropout = cfg.text.dropout = 0.0


def build_pretrained(cfg, load: dict[str, bool]):
    """Both towers of ``cfg.pretrained_model`` from one load of the checkpoint.

    ``cfg.embed_dim`` becomes its embedding width and, when its weights are loaded,
    ``cfg.logit_scale_init`` its learned logit scale; a checkpoint with a logit bias lifts
    the ceiling ``cfg.logit_scale_max``. The image tower carries the checkpoint's
    ``pretrained_logit_scale`` and ``pretrained_logit_bias`` (None without one) for the dual encoder.
    """
    kind, source = _split(cfg.pretrained_model)
    pretrained = load["image"] or load["text"]
    if kind == "hf":
        image, text = hf_pretrained(source, pretrained, cfg.text.max_tokens)
    else:
        image, text = open_clip_pretrained(source, cfg.pretrained_weights, pretrained)
    if image.width != text.width:
        raise ConfigError(f"{cfg.pretrained_model}: its image embeddings are {image.width}-d and its text "
                          f"embeddings {text.width}-d; a pretrained model needs one width")
    cfg.embed_dim = image.width
    if image.pretrained_logit_bias is not None:
        cfg.logit_scale_max = math.inf
    if pretrained:
        cfg.logit_scale_init = min(image.pretrained_logit_scale, cfg.logit_scale_max)
    return image, text


def pretrained_of(model):
    """The two towers of a pretrained model's run (a ConfigError for any other run)."""
    img, txt = model.image_tower, model.text_tower
    if not any(isinstance(img, i) and isinstance(txt, t) for i, t in _PRETRAINED_TYPES):
        raise ConfigError(f"export and WiSE-FT need the run of a pretrained model (model.pretrained_model); "
                          f"this one has {img.name} and {txt.name}")
    return img, txt


def export_pretrained(model, out) -> str:
    """Write a pretrained model's run in its library's own format; returns how to load it back.

    ``hf:`` pairs become a ``CLIPModel`` / ``SiglipModel`` folder (``from_pretrained(out)``),
    open_clip pairs a checkpoint file (``open_clip.create_model(NAME, pretrained=out)``); both
    give the run's vectors, logit scale and (SigLIP) bias.
    """
    img, txt = pretrained_of(model)
    kind, source = _split(model.cfg.pretrained_model)
    if kind == "hf":
        export_hf(model, img, txt, source, out)
        lib = "SiglipModel" if img.pretrained_logit_bias is not None else "CLIPModel"
        return f"transformers.{lib}.from_pretrained({str(out)!r}) loads it"
    name = export_open_clip(model, img, txt, source, model.cfg.pretrained_weights, out)
    return f"open_clip.create_model({name!r}, pretrained={str(out)!r}) loads it"
