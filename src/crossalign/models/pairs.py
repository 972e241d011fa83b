"""Pretrained pairs: both towers, their projections, the logit scale (and a SigLIP bias) from
one checkpoint.

``model.pair`` names the checkpoint (the kinds are :data:`PAIR_KINDS`):

- ``hf:FOLDER_OR_NAME``, a Hugging Face ``CLIPModel`` or ``SiglipModel``
  (:mod:`crossalign.models._hf_pair`, towers ``clip_image:SRC`` / ``clip_text:SRC``);
- ``open_clip:NAME`` with ``model.pair_weights=FILE_OR_TAG``, an open_clip model
  (:mod:`crossalign.models._open_clip_pair`, towers ``open_clip_image:NAME`` /
  ``open_clip_text:NAME``).

A pair has no further head (``model.head=none``, ``model.embed_dim`` the checkpoint's
embedding width), so after the dual encoder normalises a tower's output it scores exactly as
the library does. It starts from the checkpoint's learned logit scale whatever the loss; a
checkpoint with a logit bias (SigLIP) also brings its bias, trains with the sigmoid loss it
was trained with (see :func:`crossalign.models.dual.wrap_towers`) and has no ceiling on its
scale (SigLIP learns it unclamped; the released models end above CLIP's 100).

Both towers of a pair come from one load of the checkpoint (:func:`build_pair`), and freezing
works per tower as for any other (``frozen``, ``last:N`` over the transformer blocks,
``trainable``).
"""

from __future__ import annotations

import math

from crossalign.errors import ConfigError
from crossalign.models._hf_pair import CLIPImageTower, CLIPTextTower, export_hf, hf_pair
from crossalign.models._open_clip_pair import (OpenClipImageTower, OpenClipTextTower, export_open_clip,
                                               open_clip_pair)

__all__ = ["CLIPImageTower", "CLIPTextTower", "OpenClipImageTower", "OpenClipTextTower", "PAIR_PREFIXES",
           "PAIR_KINDS", "pair_towers", "build_pair", "resolve_pair", "export_pair", "tower_pair"]

PAIR_KINDS: dict[str, str] = {
    "hf": "hf:FOLDER_OR_NAME — a Hugging Face CLIPModel or SiglipModel folder (or hub name)",
    "open_clip": "open_clip:NAME — an open_clip model name or model-config JSON file, with "
                 "model.pair_weights=FILE_OR_TAG (pip install crossalign[open_clip])",
}
PAIR_PREFIXES = tuple(PAIR_KINDS)

_TOWERS = {"hf": ("clip_image", "clip_text"), "open_clip": ("open_clip_image", "open_clip_text")}
_PAIR_TYPES = ((CLIPImageTower, CLIPTextTower), (OpenClipImageTower, OpenClipTextTower))


def _split(pair: str) -> tuple[str, str]:
    kind, _, source = pair.partition(":")
    if kind not in PAIR_KINDS or not source:
        raise ConfigError(f"model.pair must be one of: {'; '.join(PAIR_KINDS.values())}; not {pair!r}")
    return kind, source


def pair_towers(pair: str) -> tuple[str, str]:
    """The image and text tower names of ``model.pair``."""
    kind, source = _split(pair)
    image, text = _TOWERS[kind]
    return f"{image}:{source}", f"{text}:{source}"


def resolve_pair(cfg) -> None:
    """Set a ModelConfig with ``pair`` to what the pair builds (in place, so the run's config
    says it): both tower names, no head."""
    if not cfg.pair:
        if cfg.pair_weights:
            raise ConfigError("model.pair_weights is set but model.pair is not; give model.pair=open_clip:NAME")
        return
    cfg.image.tower, cfg.text.tower = pair_towers(cfg.pair)
    if cfg.pair_weights and not cfg.pair.startswith("open_clip:"):
        raise ConfigError(f"model.pair_weights is for open_clip pairs; {cfg.pair} has its weights in its folder")
    cfg.head = "none"
    # dropout on the towers' outputs regularises a head learned from scratch; a pair has none,
    # and dropping half of a CLIP embedding would only break what it knew
    cfg.image.dropout = cfg.text.dropout = 0.0


def build_pair(cfg, load: dict[str, bool]):
    """Both towers of ``cfg.pair`` from one load of the checkpoint.

    ``cfg.embed_dim`` becomes its embedding width and, when its weights are loaded,
    ``cfg.logit_scale_init`` its learned logit scale; a checkpoint with a logit bias lifts
    the ceiling ``cfg.logit_scale_max``. The image tower carries the checkpoint's
    ``pair_logit_scale`` and ``pair_logit_bias`` (None without one) for the dual encoder.
    """
    kind, source = _split(cfg.pair)
    pretrained = load["image"] or load["text"]
    if kind == "hf":
        image, text = hf_pair(source, pretrained, cfg.text.max_tokens)
    else:
        image, text = open_clip_pair(source, cfg.pair_weights, pretrained)
    if image.width != text.width:
        raise ConfigError(f"{cfg.pair}: its image embeddings are {image.width}-d and its text "
                          f"embeddings {text.width}-d; a pair needs one width")
    cfg.embed_dim = image.width
    if image.pair_logit_bias is not None:
        cfg.logit_scale_max = math.inf
    if pretrained:
        cfg.logit_scale_init = min(image.pair_logit_scale, cfg.logit_scale_max)
    return image, text


def tower_pair(model):
    """The two towers of a pair's run (a ConfigError for any other run)."""
    img, txt = model.image_tower, model.text_tower
    if not any(isinstance(img, i) and isinstance(txt, t) for i, t in _PAIR_TYPES):
        raise ConfigError(f"export and WiSE-FT need the run of a pretrained pair (model.pair); "
                          f"this one has {img.name} and {txt.name}")
    return img, txt


def export_pair(model, out) -> str:
    """Write a pair's run in its library's own format; returns how to load it back.

    ``hf:`` pairs become a ``CLIPModel`` / ``SiglipModel`` folder (``from_pretrained(out)``),
    open_clip pairs a checkpoint file (``open_clip.create_model(NAME, pretrained=out)``); both
    give the run's vectors, logit scale and (SigLIP) bias.
    """
    img, txt = tower_pair(model)
    kind, source = _split(model.cfg.pair)
    if kind == "hf":
        export_hf(model, img, txt, source, out)
        lib = "SiglipModel" if img.pair_logit_bias is not None else "CLIPModel"
        return f"transformers.{lib}.from_pretrained({str(out)!r}) loads it"
    name = export_open_clip(model, img, txt, source, model.cfg.pair_weights, out)
    return f"open_clip.create_model({name!r}, pretrained={str(out)!r}) loads it"
