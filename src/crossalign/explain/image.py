"""Heat maps over an image: which regions made it close to a text.

Grad-CAM-family maps (the ``grad-cam`` package) of the cosine similarity between the
image's embedding and a fixed text vector, taken at the last convolutional stage of a CNN
tower, or at the last block of a ViT tower through a reshape of its patch tokens
(Chefer et al. 2021 weight attention by its gradient the same way). A concatenated tower
gives one map per part, each on the same input frame, averaged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from crossalign.errors import ConfigError

from crossalign.explain import METHODS

__all__ = ["METHODS", "target_layers", "SimilarityTarget", "image_heat", "heat_in_frame", "crop_box"]



def _cam_class(method: str):
    import pytorch_grad_cam as pgc

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
               "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM}
    if method not in classes:
        raise ConfigError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")
    return classes[method]


def _layers_of(tower: nn.Module) -> list[tuple[nn.Module, object]]:
    """(layer, reshape transform or None) for one tower that is not a concatenation."""
    family = getattr(tower, "family", "")
    m = getattr(tower, "model", None)
    if family == "efficientnet":
        return [(m.bn2, None)]  # conv_head + its norm and activation: the last feature map
    if family == "mobilenetv3":
        return [(m.blocks[-1], None)]
    if family == "resnet":
        return [(m.layer4, None)]
    if family == "convnext":
        return [(m.stages[-1], None)]
    if family == "vit":
        return [(m.blocks[-1].norm1, _VitTokens(int(getattr(m, "num_prefix_tokens", 1))))]
    if hasattr(tower, "stages"):  # the from-scratch CNN
        return [(tower.stages[-1], None)]
    raise ConfigError(f"image tower {getattr(tower, 'name', type(tower).__name__)!r}: no known last "
                      "convolutional stage to explain")


class _VitTokens:
    """Patch tokens ``[batch, prefix + h*w, dim]`` -> a feature map ``[batch, dim, h, w]``."""

    def __init__(self, n_prefix: int) -> None:
        self.n_prefix = n_prefix

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.n_prefix:]
        side = int(math.isqrt(patches.shape[1]))
        if side * side != patches.shape[1]:
            raise ConfigError(f"a ViT tower with {patches.shape[1]} patch tokens is not square")
        return patches.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


def target_layers(tower: nn.Module) -> list[tuple[nn.Module, object]]:
    """The layers a heat map is read from, with the reshape each needs (None for conv maps)."""
    parts = getattr(tower, "parts", None)
    if parts is not None:  # ConcatTower: every part's last stage
        return [pair for part in parts for pair in _layers_of(part)]
    return _layers_of(tower)


class SimilarityTarget:
    """The cosine similarity of one image's embedding ``[embed_dim]`` with a unit text vector."""

    def __init__(self, text_vector: torch.Tensor) -> None:
        self.text_vector = text_vector

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding * self.text_vector.to(embedding)).sum()


class _ImageSide(nn.Module):
    """pixels ``[batch, 3, H, W]`` -> unit image embeddings ``[batch, embed_dim]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


def _one_pass(model, layers, reshape, cam_cls, pixels, text_vectors) -> np.ndarray:
    side = _ImageSide(model)
    with cam_cls(model=side, target_layers=layers, reshape_transform=reshape) as cam:
        x = pixels.clone().requires_grad_(True)  # frozen towers: gradients start at the input
        targets = [SimilarityTarget(t) for t in text_vectors]
        return cam(input_tensor=x, targets=targets)  # [batch, H, W], each scaled to [0, 1]


def image_heat(model: nn.Module, pixels: torch.Tensor, text_vectors: torch.Tensor,
               method: str = "gradcam", tta_flip: bool = False) -> np.ndarray:
    """Heat maps ``[batch, H, W]`` in [0, 1] over the tower's input frame.

    Args:
        model: a DualEncoder.
        pixels: ``[batch, 3, H, W]`` as the tower's eval preprocessing made them.
        text_vectors: ``[batch, embed_dim]`` unit text vectors, one per image.
        tta_flip: also explain the mirror view and average the maps (the run embeds
            images that way with ``model.image.tta_flip``).
    """
    cam_cls = _cam_class(method)
    pairs = target_layers(model.image_tower)
    layers = [layer for layer, _ in pairs]
    reshapes = {type(r) for _, r in pairs}
    if len(reshapes) > 1:
        raise ConfigError("a concatenated tower of ViT and CNN parts cannot be explained in one map")
    reshape = pairs[0][1]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            heat = _one_pass(model, layers, reshape, cam_cls, pixels, text_vectors)
            if tta_flip:
                mirrored = _one_pass(model, layers, reshape, cam_cls, pixels.flip(-1), text_vectors)
                heat = (heat + mirrored[:, :, ::-1]) / 2
    finally:
        model.train(was_training)
    heat = np.nan_to_num(np.asarray(heat, np.float32))
    top = heat.reshape(len(heat), -1).max(axis=1)
    return heat / np.maximum(top, 1e-12)[:, None, None]


def crop_box(width: int, height: int, data_config: dict) -> tuple[float, float, float, float]:
    """The region ``(left, top, right, bottom)`` of an image of ``width`` x ``height`` that the
    tower's eval preprocessing (shorter side to ``size / crop_pct``, or with ``crop_mode``
    ``squash`` each side to its ``size / crop_pct``; centre crop) keeps."""
    size_h, size_w = data_config["input_size"][-2:]
    pct = float(data_config.get("crop_pct", 1.0))
    if data_config.get("crop_mode", "center") == "squash":
        sx, sy = math.floor(size_w / pct) / width, math.floor(size_h / pct) / height
    else:
        sx = sy = math.floor(min(size_h, size_w) / pct) / min(width, height)
    left, top = (width * sx - size_w) / 2.0, (height * sy - size_h) / 2.0
    return left / sx, top / sy, (left + size_w) / sx, (top + size_h) / sy


def heat_in_frame(heat: np.ndarray, width: int, height: int, data_config: dict) -> np.ndarray:
    """A heat map over the tower's input ``[H, W]`` placed on the original image ``[height,
    width]`` (bilinear); what the crop left out is 0."""
    import cv2

    left, top, right, bottom = crop_box(width, height, data_config)
    h, w = heat.shape
    xs = (np.arange(width, dtype=np.float32) + 0.5 - left) * (w / (right - left)) - 0.5
    ys = (np.arange(height, dtype=np.float32) + 0.5 - top) * (h / (bottom - top)) - 0.5
    map_x, map_y = np.meshgrid(xs, ys)  # [height, width] each: input-frame coordinates
    return cv2.remap(heat.astype(np.float32), map_x, map_y, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
