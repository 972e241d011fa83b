"""One pair explained: the image's heat map, the text's word scores, the similarity, and the
picture and JSON that show them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crossalign.explain.image import heat_in_frame, image_heat
from crossalign.explain.words import WordScores, word_scores

__all__ = ["Explanation", "explain_pair", "HEAT_JSON_SIDE"]

HEAT_JSON_SIDE = 64  # the JSON's heat map is at most this many cells a side (the PNG has it whole)


@dataclass
class Explanation:
    """What made one image and one text close (or far).

    ``heat`` lies over the tower's input frame ``[H, W]``, ``heat_image`` over the original
    image ``[height, width]`` (0 where the centre crop cut); both peak at 1.
    """

    similarity: float
    text: str
    image: object  # PIL image, as read
    heat: np.ndarray
    heat_image: np.ndarray
    words: WordScores
    method: str
    source: str = ""
    extra: dict = field(default_factory=dict)

    def hottest(self) -> tuple[int, int]:
        """``(x, y)`` of the hottest pixel of the original image."""
        y, x = np.unravel_index(int(np.argmax(self.heat_image)), self.heat_image.shape)
        return int(x), int(y)

    def to_json(self) -> dict:
        """Plain values: the similarity, per-word scores and shares, and a reduced heat map."""
        import cv2

        h, w = self.heat_image.shape
        k = max(h, w) / HEAT_JSON_SIDE
        small = self.heat_image if k <= 1 else cv2.resize(
            self.heat_image, (max(int(round(w / k)), 1), max(int(round(h / k)), 1)), interpolation=cv2.INTER_AREA)
        shares = self.words.shares()
        return {
            "similarity": round(self.similarity, 6), "text": self.text, "image": self.source,
            "method": self.method, "image_size": [w, h], "hottest": list(self.hottest()),
            "heat": np.round(small, 4).tolist(), "heat_size": [small.shape[1], small.shape[0]],
            "words": [{"word": wd, "score": round(s, 6), "share": round(sh, 6)}
                      for wd, s, sh in zip(self.words.words, self.words.scores, shares)],
            "integrated_gradients": {"baseline_similarity": round(self.words.baseline_similarity, 6),
                                     "delta": round(self.words.delta, 6),
                                     "truncated": self.words.truncated},
            **self.extra,
        }

    def save(self, png: str | Path | None = None, json_path: str | Path | None = None) -> None:
        """Write the picture and/or the JSON, each atomically."""
        from crossalign._io import atomic_write_json
        from crossalign.explain.render import render_png

        if png is not None:
            render_png(self, png)
        if json_path is not None:
            atomic_write_json(json_path, self.to_json())


def _pixels(model, img) -> torch.Tensor:
    from crossalign.data.transforms import eval_transform

    return eval_transform(model.image_tower.data_config)(img).unsqueeze(0)  # [1, 3, H, W]


def explain_pair(model, image, text: str, method: str = "gradcam", steps: int = 32,
                 max_pixels: int = 0) -> Explanation:
    """Explain the similarity of ``image`` (a path, file bytes or PIL image) and ``text``.

    Args:
        model: a DualEncoder (``crossalign.runs.load_model``).
        method: a Grad-CAM-family method (:data:`crossalign.explain.METHODS`).
        steps: integrated-gradients steps over the words.
        max_pixels: larger images are refused (the run's ``data.max_pixels``; 0: Pillow's limit).
    Raises:
        ImageError: the image cannot be read.
    """
    from crossalign.data.transforms import MAX_PIXELS, load_image
    from crossalign.embed.collection import embed_images, embed_texts

    img = load_image(image, max_pixels or MAX_PIXELS)
    tvec = torch.from_numpy(embed_texts(model, [text]))  # [1, dim]
    ivec = torch.from_numpy(embed_images(model, [img], max_pixels=max_pixels or MAX_PIXELS))  # [1, dim], the way the run embeds it
    heat = image_heat(model, _pixels(model, img), tvec, method, tta_flip=bool(model.cfg.image.tta_flip))[0]
    words = word_scores(model, text, ivec[0], steps)
    frame = heat_in_frame(heat, img.width, img.height, model.image_tower.data_config)
    source = str(image) if isinstance(image, (str, Path)) else ""
    return Explanation(float((ivec * tvec).sum()), text, img, heat, frame, words, method, source)
