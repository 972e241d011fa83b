"""Image loading and the preprocessing each tower declares.

:func:`load_image` is the one door every stage (training, evaluation, indexing, the
data check) opens images through, so an image that fails here fails everywhere the same
way: as an :class:`ImageError` naming the file, which costs that image's rows and not the
run. What it does with the awkward cases:

- CMYK and YCbCr JPEGs, palette GIFs and PNGs, WEBP, grey images: converted to RGB;
- 16-bit PNGs: scaled to 8 bits (not clipped, which would turn most of them white);
- transparency (RGBA, LA, a palette with a transparent colour): composited on white;
- EXIF orientation: applied, so a phone photo is upright (a broken EXIF block is ignored);
- more than ``max_pixels`` pixels: refused before decoding (a decompression bomb);
- zero bytes, truncated or not an image at all: refused.

It takes a path, the bytes of a file (an upload) or an already opened PIL image, and
puts all three through the same checks and conversion.
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union
import numpy as np

from PIL import Image, ImageOps

from crossalign.errors import ImageError

__all__ = ["IMAGE_EXTS", "list_images", "thumbnail", "jpeg_bytes", "ImageSource", "load_image", "inspect_image", "eval_transform", "MAX_PIXELS",
           "check_upload", "png_data_complete",
           "file_date", "dhash"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")  # image files we read
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb warning threshold

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]


def _failure(path: str, e: Exception) -> ImageError:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(f"{path}: image is over Pillow's pixel limit ({e})", "too_large")
    if "truncated" in text.lower() or isinstance(e, EOFError):
        return ImageError(f"{path}: image file is truncated ({text})", "truncated")
    return ImageError(f"{path}: cannot read image ({text})", "unreadable")


def _name(source: ImageSource) -> str:
    """How messages name an image: its path, or what it is when there is no path."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return str(getattr(source, "filename", "") or "<PIL image>")
    return f"<{len(source)} bytes>"


def _open(source: ImageSource, name: str) -> Image.Image:
    """Open (lazily) a path or bytes; a PIL image is used as it is."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{name}: image file is empty (0 bytes)", "empty_file")
        return Image.open(io.BytesIO(bytes(source)))
    from crossalign.data.members import parse_ref, read_member

    ref = parse_ref(source)
    if ref is not None:  # a member of a tar shard: its bytes, read in place
        return _open(read_member(ref), name)
    if os.path.getsize(source) == 0:
        raise ImageError(f"{name}: image file is empty (0 bytes)", "empty_file")
    return Image.open(source)


@contextmanager
def _decoded(source: ImageSource, max_pixels: int,
             draft: bool = False) -> Iterator[tuple[Image.Image, tuple[int, int]]]:
    """An image opened and fully decoded, with its stored size; every failure becomes
    :class:`ImageError`.

    ``draft`` lets a JPEG decode at 1/8 scale: every byte of its data is still read, so
    damage is still found, at a third less time.
    """
    name = _name(source)
    try:
        with warnings.catch_warnings():
            # our own limit decides, before any pixel is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open(source, name)
            try:
                if im.width * im.height > max_pixels:
                    raise ImageError(f"{name}: {im.width}x{im.height} pixels is over the limit of "
                                     f"{max_pixels} (data.max_pixels)", "too_large")
                size = im.size
                if draft and im.format == "JPEG":
                    im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
                yield im, size
            finally:
                if im is not source:  # the caller's own image stays open
                    im.close()
    except ImageError:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{name}: image file not found", "missing") from None
    except Exception as e:  # truncated, not an image, broken codec data ...
        raise _failure(name, e) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not cost the picture
        pass
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        # composite transparency on white rather than on black
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    if im.mode.startswith("I;16") or im.mode == "I":
        im = im.point(lambda v: v / 256).convert("L")  # 16-bit range -> 8-bit range
    return im.convert("RGB")


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image as RGB, with its EXIF rotation applied, transparency on white and 16 bits
    scaled to 8. Raises :class:`ImageError`.

    Args:
        source: a path, the bytes of an image file (an upload) or a PIL image; all three
            go through the same pixel limit, decoding checks and conversion.
        max_pixels: more pixels than this is refused before decoding (``data.max_pixels``).
    """
    with _decoded(source, max_pixels) as (im, _):
        return _to_rgb(im)


def inspect_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> tuple[int, int, str]:
    """``(width, height, mode)`` after a full decode, the cheap form of :func:`load_image`'s
    checks (no conversion). Raises :class:`ImageError`."""
    with _decoded(source, max_pixels, draft=True) as (im, size):
        return size[0], size[1], im.mode


def file_date(path: str | os.PathLike) -> str:
    """When a picture was taken, ``YYYY-MM-DDTHH:MM:SS``: its EXIF ``DateTimeOriginal`` (else
    EXIF ``DateTime``) as the camera wrote it, or else the file's modification time (UTC).
    Reads only the file's header; a file without a readable date gives its mtime."""
    import datetime

    from crossalign.data.members import parse_ref, read_member

    ref = parse_ref(path)
    try:
        with Image.open(io.BytesIO(read_member(ref)) if ref else path) as im:
            exif = im.getexif()
            stamp = exif.get_ifd(0x8769).get(36867) or exif.get(306)  # DateTimeOriginal, DateTime
        if isinstance(stamp, bytes):
            stamp = stamp.decode("ascii", "replace")
        if isinstance(stamp, str):
            taken = datetime.datetime.strptime(stamp.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
            return taken.strftime("%Y-%m-%dT%H:%M:%S")
    except Exception:  # no EXIF block, a broken one, or a date that does not parse
        pass
    mtime = os.stat(ref.shard if ref else path).st_mtime
    return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def dhash(source: ImageSource, bits: int = 8) -> int:
    """The difference hash of a picture (Krawetz): the image in gray at ``(bits + 1) x bits``
    pixels, one bit per pair of neighbours in a row (is the left one brighter). Re-encoding,
    resizing and light retouching change few of its ``bits * bits`` bits; another picture
    changes about half. Raises :class:`ImageError`."""
    im = load_image(source).convert("L").resize((bits + 1, bits), Image.Resampling.LANCZOS)
    px = np.asarray(im, dtype=np.int16)  # [bits, bits + 1]
    diff = (px[:, :-1] > px[:, 1:]).ravel()
    return int("".join("1" if b else "0" for b in diff), 2)


def eval_transform(data_config: dict) -> Callable:
    """Deterministic preprocessing of a tower (resize the shorter side and crop the centre, or
    with ``crop_mode`` ``squash`` resize both sides; normalise)."""
    from timm.data import create_transform

    return create_transform(
        input_size=data_config["input_size"], interpolation=data_config["interpolation"],
        crop_pct=data_config["crop_pct"], crop_mode=data_config.get("crop_mode", "center"),
        mean=data_config["mean"], std=data_config["std"], is_training=False,
    )


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by :data:`IMAGE_EXTS`) under ``folder``, recursively, sorted; hidden files and
    folders (``.git``, ``._photo.jpg`` resource forks) are left out."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not any(s.startswith(".") for s in p.relative_to(folder).parts))


def thumbnail(source: ImageSource, size: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image fitted into ``size`` x ``size`` pixels, read by :func:`load_image` (upright, on white).

    Raises:
        ImageError: the image cannot be read.
    """
    im = load_image(source, max_pixels=max_pixels)
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    return im


def jpeg_bytes(im: Image.Image, quality: int = 85) -> bytes:
    """``im`` encoded as a JPEG file."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _png_raw_size(width: int, height: int, bits: int, colour: int, interlaced: bool) -> int:
    """Bytes a PNG's image data inflates to: a filter byte per row and the packed samples."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
    row = lambda w: 0 if w == 0 else 1 + (w * channels * bits + 7) // 8  # noqa: E731
    if not interlaced:
        return height * row(width)
    total = 0  # Adam7: seven passes over sub-grids of the image
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)):
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        total += 0 if w <= 0 or h <= 0 else h * row(w)
    return total


def png_data_complete(data: bytes) -> bool:
    """Whether a PNG's compressed image data inflates to all of its pixels.

    Pillow fills the rest of an image whose zlib stream ends early with zeros and raises
    nothing; this counts the inflated bytes, a megabyte at a time, without keeping them.
    """
    import struct
    import zlib

    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n":
        return True  # not a PNG: Pillow's own checks apply
    width, height, bits, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    need = _png_raw_size(width, height, bits, colour, interlace == 1)
    inflate, got, pos = zlib.decompressobj(), 0, 8
    try:
        while pos + 8 <= len(data) and got < need:
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            if kind == b"IDAT":
                chunk = data[pos + 8:pos + 8 + length]
                while chunk and got < need:
                    got += len(inflate.decompress(chunk, 1 << 20))
                    chunk = inflate.unconsumed_tail
            pos += 12 + length
    except zlib.error:
        return False
    return got >= need


def check_upload(data: bytes, max_pixels: int, name: str = "upload") -> tuple[int, int]:
    """The size of an uploaded image, checked before anything is decoded: its pixel count
    from its header against ``max_pixels``, and a PNG's data against its declared size.
    Raises :class:`ImageError` (``too_large``, ``truncated``, ``empty_file``, ``unreadable``)."""
    if not data:
        raise ImageError(f"{name}: image file is empty (0 bytes)", "empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                size = im.size
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is over the pixel limit of {max_pixels}", "too_large") from None
    except Exception:  # noqa: BLE001 - not an image Pillow knows; never the object in the message
        raise ImageError(f"{name}: not an image file this service can read", "unreadable") from None
    if size[0] * size[1] > max_pixels:
        raise ImageError(f"{name}: {size[0]}x{size[1]} pixels is over the limit of {max_pixels} "
                         f"pixels", "too_large")
    if not png_data_complete(data):
        raise ImageError(f"{name}: image file is truncated (its data ends before its last row)",
                         "truncated")
    return size
