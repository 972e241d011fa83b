"""Words inside pictures, read by PP-OCR (detection and recognition on ONNX Runtime, through
RapidOCR), so that an index can find a poster by its title or a photo by the sign in it.

:class:`WordReader` reads one image into :class:`Word` s; :func:`words_text` turns them into
the text that is stored and searched. The models ship inside the ``rapidocr-onnxruntime``
wheel: nothing is downloaded. Install it with ``pip install 'crossalign[ocr]'``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from crossalign.data.transforms import MAX_PIXELS, ImageSource, load_image
from crossalign.errors import ConfigError

__all__ = ["Word", "WordReader", "words_text", "MIN_CONFIDENCE", "MAX_SIDE"]

MIN_CONFIDENCE = 0.8  # the recogniser's score a word needs to be kept (bench/RESULTS.md)
MAX_SIDE = 1600  # images are shrunk to this longer side before reading (bench/RESULTS.md)
_MISSING = "OCR needs the rapidocr-onnxruntime package: pip install 'crossalign[ocr]'"

Point = tuple[float, float]


@dataclass(frozen=True)
class Word:
    """A run of text found in a picture: mostly one word, sometimes a line of them.

    Attributes:
        text: what was read.
        confidence: the recogniser's score, from 0 to 1.
        box: the four corners ``(x, y)`` in the pixels of the image given, clockwise from
            the top left of the text.
    """

    text: str
    confidence: float
    box: tuple[Point, Point, Point, Point]


def _top(word: Word) -> float:
    return min(y for _, y in word.box)


def _bottom(word: Word) -> float:
    return max(y for _, y in word.box)


def _left(word: Word) -> float:
    return min(x for x, _ in word.box)


def _reading_order(words: list[Word]) -> list[Word]:
    """``words`` as a reader meets them: lines from top to bottom, each from left to right.

    A word joins the line above it when its vertical middle lies within the span of that
    line's first word, so text tilted a few degrees still makes one line.
    """
    lines: list[list[Word]] = []
    for word in sorted(words, key=lambda w: (_top(w) + _bottom(w)) / 2):
        middle = (_top(word) + _bottom(word)) / 2
        if lines and _top(lines[-1][0]) <= middle <= _bottom(lines[-1][0]):
            lines[-1].append(word)
        else:
            lines.append([word])
    return [word for line in lines for word in sorted(line, key=_left)]


def words_text(words: list[Word]) -> str:
    """The words in reading order (top to bottom, left to right), joined by spaces."""
    return " ".join(word.text for word in _reading_order(words))


def _engine():
    """A RapidOCR engine that keeps every reading; :class:`WordReader` applies its own cut."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise ConfigError(_MISSING) from None
    return RapidOCR(text_score=0.0, print_verbose=False)


class WordReader:
    """Reads the words in images with one PP-OCR engine, loaded on first use.

    One reader may be called from several threads: images are decoded and shrunk in
    parallel, and the engine reads one image at a time (it uses every core for it).

    Args:
        min_confidence: words the recogniser scores below this are dropped.
        max_side: a larger image is shrunk so that its longer side is this many pixels.
        max_pixels: a larger image is refused before decoding (``data.max_pixels``).

    Raises:
        ConfigError: an option out of range, or rapidocr-onnxruntime not installed
            (on the first call).
    """

    def __init__(self, min_confidence: float = MIN_CONFIDENCE, max_side: int = MAX_SIDE,
                 max_pixels: int = MAX_PIXELS) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        if max_side < 32:
            raise ConfigError(f"max_side must be at least 32 pixels, got {max_side}")
        self.min_confidence = min_confidence
        self.max_side = max_side
        self.max_pixels = max_pixels
        self._engine = None
        self._lock = threading.Lock()

    def __call__(self, image: ImageSource) -> list[Word]:
        """The words in ``image`` (a path, a tar-shard member reference, the bytes of an image
        file or a PIL image), in reading order; ``[]`` when there are none.

        Raises:
            ImageError: the image cannot be read.
            ConfigError: rapidocr-onnxruntime is not installed.
        """
        im = load_image(image, max_pixels=self.max_pixels)  # a copy: shrinking it is safe
        width, height = im.size
        im.thumbnail((self.max_side, self.max_side), Image.Resampling.BICUBIC)
        sx, sy = width / im.width, height / im.height
        # [height, width, 3] in BGR order: the engine takes an array as BGR, as OpenCV reads one
        pixels = np.ascontiguousarray(np.asarray(im)[:, :, ::-1])
        with self._lock:
            if self._engine is None:
                self._engine = _engine()
            found, _ = self._engine(pixels)
        words = [Word(str(text), float(score), tuple((x * sx, y * sy) for x, y in box))
                 for box, text, score in found or []
                 if str(text).strip() and float(score) >= self.min_confidence]
        return _reading_order(words)
