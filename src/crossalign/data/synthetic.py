"""A procedural scene data set: shapes of several colours, sizes, positions and counts.

Each image gets several captions that describe it in different words, so the demo and
the end-to-end tests exercise multi-caption retrieval on data the project makes itself.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["make_shapes_dataset", "scene_objects", "COLOURS", "SHAPES"]

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = {"grey": (128, 128, 128), "sky": (150, 200, 240), "sand": (225, 205, 160), "grass": (120, 180, 110)}
SIZES = {"small": 0.12, "large": 0.26}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # five-pointed star
        import math

        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        draw.polygon(pts, fill=fill)


def _region(cx: float, cy: float) -> str:
    vert = "top" if cy < 0.4 else "bottom" if cy > 0.6 else "middle"
    horiz = "left" if cx < 0.4 else "right" if cx > 0.6 else "centre"
    if vert == "middle" and horiz == "centre":
        return "in the centre"
    if vert == "middle":
        return f"on the {horiz}"
    if horiz == "centre":
        return f"at the {vert}"
    return f"in the {vert} {horiz}"


def _scene(rng: random.Random, size: int) -> tuple[Image.Image, list[str], list[tuple]]:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    size_word = rng.choice(list(SIZES))
    count = rng.choice([1, 1, 2, 3])
    bg = rng.choice(list(BACKGROUNDS))
    img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
    draw = ImageDraw.Draw(img)
    r = SIZES[size_word] * size / (1.0 if count == 1 else 1.4)
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    offsets = [(0, 0), (-1, 0.6), (1, -0.6)][:count]
    boxes = []
    for dx, dy in offsets:
        x = min(max(cx + dx * 2.2 * r / size, r / size), 1 - r / size)
        y = min(max(cy + dy * 2.2 * r / size, r / size), 1 - r / size)
        _draw_shape(draw, shape, x * size, y * size, r, COLOURS[colour])
        boxes.append((x * size - r, y * size - r, x * size + r, y * size + r))  # left, top, right, bottom
    where = _region(cx, cy)
    noun = shape if count == 1 else shape + "s"
    num = "a" if count == 1 else NUMBER_WORDS[count]
    captions = [
        f"{num} {size_word} {colour} {noun} {where} on a {bg} background",
        f"a {bg} picture with {num} {colour} {noun}",
        f"{NUMBER_WORDS[count]} {colour} {noun}, {size_word}, {where}",
        f"there {'is' if count == 1 else 'are'} {num} {colour} {noun} {where}",
        f"{size_word} {colour} {noun} against {bg}",
    ]
    return img, captions, boxes


def scene_objects(n_images: int = 600, seed: int = 0, size: int = 128) -> dict[str, list[tuple]]:
    """Where the shapes of :func:`make_shapes_dataset` with the same arguments lie: image name
    -> one ``(left, top, right, bottom)`` pixel box per drawn shape (for pointing-game checks)."""
    rng = random.Random(seed)
    return {f"scene_{k:05d}.png": _scene(rng, size)[2] for k in range(n_images)}


def make_shapes_dataset(out: str | Path, n_images: int = 600, seed: int = 0, size: int = 128,
                        with_splits: bool = False) -> Path:
    """Write ``images/`` and ``captions.txt`` (5 captions per image) under ``out``.

    Args:
        out: target folder (created).
        n_images: number of images.
        seed: the same seed gives byte-identical files.
        size: image side in pixels.
        with_splits: also write ``splits/`` (80/10/10) instead of leaving the split to the reader.
    """
    import csv
    import io

    from crossalign._io import atomic_write_text

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "caption"])
    names = []
    for k in range(n_images):
        img, captions, _ = _scene(rng, size)
        name = f"scene_{k:05d}.png"
        img.save(out / "images" / name)
        names.append(name)
        for c in captions:
            writer.writerow([name, c])
    atomic_write_text(out / "captions.txt", buf.getvalue())
    if with_splits:
        n_tr, n_va = int(0.8 * n_images), int(0.1 * n_images)
        parts = {"train": names[:n_tr], "val": names[n_tr:n_tr + n_va], "test": names[n_tr + n_va:]}
        for split, items in parts.items():
            atomic_write_text(out / "splits" / f"{split}.txt", "".join(f"{n}\n" for n in items))
    return out
