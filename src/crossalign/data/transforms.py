"""Image loading and the preprocessing each tower declares."""

from __future__ import annotations

import warnings
from typing import Callable

from PIL import Image, ImageOps

__all__ = ["ImageError", "load_image", "eval_transform"]


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file."""


def load_image(path: str, max_pixels: int = 89_478_485) -> Image.Image:
    """Open an image as RGB, applying its EXIF rotation. Raises :class:`ImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise ImageError(f"{path}: {im.width}x{im.height} pixels is over the limit of {max_pixels}")
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    # composite transparency on white rather than on black
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGB", rgba.size, (255, 255, 255))
                    bg.paste(rgba, mask=rgba.split()[-1])
                    return bg
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    im = im.point(lambda v: v / 256).convert("L")
                return im.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except Exception as e:  # truncated, zero bytes, not an image, bomb ...
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def eval_transform(data_config: dict) -> Callable:
    """Deterministic preprocessing of a tower (resize shorter side, centre crop, normalise)."""
    from timm.data import create_transform

    return create_transform(
        input_size=data_config["input_size"], interpolation=data_config["interpolation"],
        crop_pct=data_config["crop_pct"], mean=data_config["mean"], std=data_config["std"],
        is_training=False,
    )
