"""Words inside pictures: WordReader reads words drawn with Pillow, on a plain band and
straight on a noisy, photo-like background, tilted a few degrees; words_text puts them in
reading order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from crossalign.errors import ConfigError
from crossalign.index.ocr import Word, WordReader, words_text

pytestmark = pytest.mark.needs("a scalable font (Pillow >= 10.1, or DejaVu or Liberation fonts)")

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")
FONT_FILES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf")


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's own scalable font (Pillow >= 10.1), else a common TrueType font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow: its default font has one size
        pass
    for folder in map(Path, FONT_DIRS):
        for name in FONT_FILES:
            found = next(folder.rglob(name), None) if folder.is_dir() else None
            if found is not None:
                return ImageFont.truetype(str(found), size)
    pytest.skip("no scalable font: Pillow < 10.1 and no DejaVu, Liberation or Arial font")


def _noisy(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like background: smooth colour gradients with grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([120 + 80 * np.sin(6 * x + 1), 110 + 70 * np.cos(5 * y),
                     90 + 60 * np.sin(4 * (x + y))], -1)  # [height, width, 3]
    grain = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def _draw(background: Image.Image, word: str, xy: tuple[int, int], band: bool, angle: float,
          size: int = 32) -> Image.Image:
    """``word`` in white, on a black band or straight on ``background``, turned by ``angle``."""
    font = _font(size)
    left, top, right, bottom = font.getbbox(word)
    layer = Image.new("RGBA", (right - left + 16, bottom - top + 16), (0, 0, 0, 255 if band else 0))
    draw = ImageDraw.Draw(layer)
    draw.text((8 - left, 8 - top), word, font=font, fill=(255, 255, 255, 255),
              stroke_width=0 if band else 2, stroke_fill=(0, 0, 0, 255))
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    out = background.copy()
    out.paste(layer, xy, layer)
    return out


def _read(words: list[Word]) -> set[str]:
    return {t.lower() for w in words for t in w.text.split()}


@pytest.fixture(scope="module")
def reader() -> WordReader:
    return WordReader()


def test_words_on_a_band_and_on_a_noisy_picture(reader):
    im = _draw(_noisy(480, 320), "harbour", (30, 40), band=True, angle=3)
    im = _draw(im, "Lighthouse", (200, 200), band=False, angle=-4)
    words = reader(im)
    assert {"harbour", "lighthouse"} <= _read(words)
    assert all(0.0 <= w.confidence <= 1.0 and len(w.box) == 4 for w in words)
    assert words_text(words).lower().split() == ["harbour", "lighthouse"]


def test_bytes_and_a_path_read_alike(reader, tmp_path):
    im = _draw(_noisy(320, 260, seed=1), "MOUNTAIN", (30, 100), band=True, angle=-2)
    path = tmp_path / "poster.png"
    im.save(path)
    assert "mountain" in _read(reader(path.read_bytes()))
    assert "mountain" in _read(reader(str(path)))


def test_boxes_are_in_the_pixels_of_the_image_given(tmp_path):
    white = Image.new("RGB", (1600, 1200), "white")
    im = _draw(white, "station", (1100, 1000), band=True, angle=0, size=64)
    words = WordReader(max_side=640)(im)  # read at 640 x 480
    assert "station" in _read(words)
    xs = [x for w in words for x, _ in w.box]
    ys = [y for w in words for _, y in w.box]
    assert 1050 <= min(xs) and max(xs) <= 1500 and 960 <= min(ys) and max(ys) <= 1120


def test_one_reader_serves_several_threads(reader):
    from concurrent.futures import ThreadPoolExecutor

    images = [_draw(_noisy(240, 200, seed=s), w, (20, 70), band=True, angle=s)
              for s, w in enumerate(["garden", "bicycle", "window"])]
    with ThreadPoolExecutor(3) as pool:
        found = list(pool.map(reader, images))
    assert [w in _read(f) for w, f in zip(["garden", "bicycle", "window"], found)] == [True] * 3


def test_a_picture_without_words_gives_none(reader):
    assert reader(_noisy(320, 240, seed=2)) == []
    assert words_text([]) == ""


def test_reading_order_is_lines_top_to_bottom_then_left_to_right():
    def word(text, x, y):
        return Word(text, 0.9, ((x, y), (x + 40, y + 2), (x + 40, y + 22), (x, y + 20)))

    words = [word("three", 10, 60), word("two", 60, 4), word("one", 5, 0), word("four", 70, 62)]
    assert words_text(words) == "one two three four"


def test_options_out_of_range_are_config_errors():
    with pytest.raises(ConfigError, match="min_confidence"):
        WordReader(min_confidence=1.5)
    with pytest.raises(ConfigError, match="max_side"):
        WordReader(max_side=0)


def test_without_rapidocr_the_error_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rapidocr(name, *args, **kwargs):
        if name.startswith("rapidocr_onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rapidocr)
    with pytest.raises(ConfigError, match=r"pip install 'crossalign\[ocr\]'"):
        WordReader()(Image.new("RGB", (64, 64), "white"))
