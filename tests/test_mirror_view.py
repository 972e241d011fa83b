"""``augment.mirror`` is used: training steps read the mirrored image's cached features.

With a frozen image tower, each training sample draws the clean or the mirrored image's
features, per epoch. The test records what the projection head receives in every training
step and compares it, row by row, with features computed here without the cache: the clean
image's and the image flipped by PIL. An image the mirror leaves unchanged (a centred
shape) is no evidence either way, so only images whose two vectors differ clearly count.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from crossalign.embed import towers as embed
from crossalign.cli.main import main
from crossalign.models.dual import DualEncoder
from crossalign.train.sides import ImageSide

from _kill_runner import TINY, sets

# as fractions of the largest feature value (a random frozen CNN's features are tiny)
CLEAR = 5e-2  # two vectors this far apart (max abs difference) are told apart for sure
SAME = 1e-3  # a vector within this of another is that one (float16 rows of the cache: 5e-4)


def flipped(img: Image.Image, _key=None) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def test_training_steps_read_the_mirrored_features(tmp_path, shapes_dir, monkeypatch):
    sides: list[ImageSide] = []
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []  # (epoch, rows, features) per step
    step = threading.local()
    train_embed, project_image = ImageSide.train_embed, DualEncoder.project_image

    def spy_train_embed(self, rows, epoch=-1, samples=None):
        if self not in sides:
            sides.append(self)
        step.now = (epoch, np.asarray(rows))
        try:
            return train_embed(self, rows, epoch, samples)
        finally:
            step.now = None

    def spy_project_image(self, feats):
        now = getattr(step, "now", None)
        if now is not None and now[0] >= 0:  # a training step, not validation
            seen.append((now[0], now[1], feats.detach().cpu().numpy().copy()))
        return project_image(self, feats)

    monkeypatch.setattr(ImageSide, "train_embed", spy_train_embed)
    monkeypatch.setattr(DualEncoder, "project_image", spy_project_image)
    over = TINY + ["train.epochs=2", "augment.mirror=true", f"cache.dir={tmp_path / 'cache'}"]
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(tmp_path / "run"),
                 *sets(over)]) == 0
    (side,) = [s for s in sides if s.mirror]  # the training side of the images
    assert seen, "no training step went through the image head"

    clean = embed.image_features(side.tower, side.paths, None, progress=False).feats
    mirror = embed.image_features(side.tower, side.paths, None, progress=False,
                                  augment=flipped).feats
    scale = float(np.abs(clean).max())
    apart = np.abs(clean - mirror).max(1) > CLEAR * scale  # [n_images]: images the mirror changes
    assert apart.sum() >= len(apart) // 2, "too few asymmetric images to tell the views apart"

    used = {"clean": 0, "mirror": 0}
    for epoch, rows, feats in seen:
        for r, f in zip(rows.tolist(), feats):
            is_clean = np.abs(f - clean[r]).max() <= SAME * scale
            is_mirror = np.abs(f - mirror[r]).max() <= SAME * scale
            assert is_clean or is_mirror, f"epoch {epoch}: image row {r} got neither view"
            if apart[r]:
                used["clean" if is_clean else "mirror"] += 1
    assert used["mirror"] > 0, "no training step read the mirrored features"
    assert used["clean"] > 0, "no training step read the clean features"
