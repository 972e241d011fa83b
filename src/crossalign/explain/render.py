"""The picture of one explanation: the image under its heat map, the words shaded by share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["render_png", "overlay", "overlay_uri"]

WORD_RED = np.array([0.84, 0.15, 0.16])  # raised the similarity
WORD_BLUE = np.array([0.12, 0.47, 0.71])  # lowered it


def overlay(image, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``[height, width, 3]`` uint8: the image blended with a jet colouring of ``heat`` in [0, 1]."""
    from matplotlib import colormaps

    rgb = np.asarray(image.convert("RGB"), np.float32) / 255.0
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    weight = alpha * np.clip(heat, 0, 1)[..., None] ** 0.5 + (alpha * 0.35)  # cold parts barely tinted
    return (np.clip(rgb * (1 - weight) + colour * weight, 0, 1) * 255).astype(np.uint8)


def overlay_uri(expl, side: int) -> str:
    """The explanation's heat overlay fitted into ``side`` x ``side``, as a JPEG data URI
    (the report's galleries and the service's ``/explain`` embed it)."""
    import base64

    from PIL import Image

    from crossalign.data.transforms import jpeg_bytes

    im = Image.fromarray(overlay(expl.image, expl.heat_image))
    im.thumbnail((side, side))
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(im)).decode("ascii")


def _word_colour(score: float, top: float) -> tuple:
    strength = min(abs(score) / top, 1.0) if top > 0 else 0.0
    base = WORD_RED if score >= 0 else WORD_BLUE
    return tuple(1 - strength * (1 - base))  # white -> the full colour


def _draw_words(fig, ax, words: list[str], scores: list[float]) -> None:
    """Words left to right, wrapped, each on a box shaded by its score."""
    renderer = fig.canvas.get_renderer()
    top = max((abs(s) for s in scores), default=0.0)
    width = ax.get_window_extent(renderer).width
    x, y, line = 0.0, 1.0, 0.0
    for word, score in zip(words, scores):
        t = ax.text(x, y, word, va="top", ha="left", fontsize=11, transform=ax.transAxes,
                    bbox={"boxstyle": "round,pad=0.25", "fc": _word_colour(score, top), "ec": "none"})
        box = t.get_window_extent(renderer)
        if x > 0 and x + box.width / width > 1.0:  # wrap
            x, y = 0.0, y - line - 0.04
            t.set_position((x, y))
            box = t.get_window_extent(renderer)
        line = max(line, box.height / ax.get_window_extent(renderer).height)
        x += box.width / width + 0.015


def render_png(expl, path: str | Path) -> Path:
    """Write the explanation's picture to ``path`` (atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crossalign._io import atomic_path

    img = expl.image
    aspect = img.height / max(img.width, 1)
    fig = Figure(figsize=(6.0, 6.0 * aspect + 1.6), dpi=110)
    FigureCanvasAgg(fig)
    top = fig.add_axes((0.02, 1.4 / (6.0 * aspect + 1.6), 0.96, 1 - 1.5 / (6.0 * aspect + 1.6)))
    top.imshow(overlay(img, expl.heat_image))
    top.set_axis_off()
    top.set_title(f"similarity {expl.similarity:.3f}  ({expl.method}; words by integrated gradients)",
                  fontsize=10)
    bottom = fig.add_axes((0.03, 0.02, 0.94, 1.2 / (6.0 * aspect + 1.6)))
    bottom.set_axis_off()
    _draw_words(fig, bottom, expl.words.words, expl.words.scores)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
