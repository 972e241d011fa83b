"""Test-time flip averaging: an image's vector is the normalised mean of it and its mirror."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import crossalign
from crossalign.config import ModelConfig
from crossalign.embed.collection import embed_image_files, embed_images, tta_flip
from crossalign.models.dual import build_model


def _model(flip: bool, freeze: str = "frozen"):
    cfg = ModelConfig()
    cfg.image.tower, cfg.image.pretrained, cfg.image.width = "small_cnn", False, 32
    cfg.image.freeze = freeze
    cfg.image.tta_flip, cfg.image.image_size = flip, 16  # a 1x1 last map: far from mirror-invariant
    cfg.text.tower, cfg.text.pretrained, cfg.text.width = "lstm", False, 32
    torch.manual_seed(0)
    model = build_model(cfg)
    _calibrate(model.image_tower)
    return model


@torch.no_grad()
def _calibrate(tower) -> None:
    """Batch-norm statistics of real activations: a fresh tower's unit statistics shrink its
    features to ~1e-6, where every image embeds as the head's bias."""
    for m in tower.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative mean: one batch sets the statistics
    tower.train()
    tower(torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    tower.eval()


def _images(folder) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (48, 24, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)  # [48, 48, 3], mirror-symmetric
    paths = (folder / "symmetric.png", folder / "lopsided.png")
    Image.fromarray(symmetric).save(paths[0])
    Image.fromarray(np.concatenate([half, np.zeros_like(half)], axis=1)).save(paths[1])
    return str(paths[0]), str(paths[1])


def _copy(model, flip: bool):
    other = _model(flip, model.cfg.image.freeze)
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("freeze", ["frozen", "trainable"])
def test_a_symmetric_image_keeps_its_vector_and_vectors_stay_normalised(tmp_path, freeze):
    sym, lop = _images(tmp_path)
    plain = _model(False, freeze)
    flipped = _copy(plain, True)
    assert not tta_flip(plain) and tta_flip(flipped)
    a = embed_image_files(plain, [sym, lop], cache_root=tmp_path / "cache").vectors
    b = embed_image_files(flipped, [sym, lop], cache_root=tmp_path / "cache").vectors
    np.testing.assert_allclose(b[0], a[0], atol=1e-6)  # its mirror is itself
    assert np.abs(b[1] - a[1]).max() > 1e-3  # a lopsided one is averaged with a different view
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    mirrored = embed_image_files(plain, [_save_mirror(lop, tmp_path)]).vectors[0]
    mean = a[1] + mirrored
    # a frozen tower's views come from the cache, as float16 rows: equal to that rounding
    np.testing.assert_allclose(b[1], mean / np.linalg.norm(mean), atol=1e-6 if freeze == "trainable" else 2e-3)


def _save_mirror(path: str, folder) -> str:
    out = folder / "mirrored.png"
    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out)
    return str(out)


def test_every_door_gives_the_flip_averaged_vector(tmp_path):
    sym, lop = _images(tmp_path)
    model = _model(True)
    files = embed_image_files(model, [sym, lop], workers=2).vectors
    pictures = embed_images(model, [sym, Image.open(lop)])
    np.testing.assert_allclose(pictures, files, atol=1e-6)


def test_a_frozen_tower_extracts_the_mirror_once(tmp_path):
    sym, lop = _images(tmp_path)
    model = _model(True)
    seen = []
    model.image_tower.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[0]))
    first = embed_image_files(model, [sym, lop], cache_root=tmp_path / "cache").vectors
    assert sum(seen) == 4  # the two images and their two mirrors
    again = embed_image_files(model, [sym, lop], cache_root=tmp_path / "cache").vectors
    assert sum(seen) == 4  # both views from the cache
    np.testing.assert_array_equal(again, first)


def test_evaluate_states_it_and_the_run_keeps_it(tmp_path, shapes_dir):
    sets = ["model.image.tower=small_cnn", "model.image.width=32", "model.image.pretrained=false",
            "model.text.tower=lstm", "model.text.width=32", "model.text.pretrained=false",
            "model.image.tta_flip=true", "train.epochs=1", "train.batch_size=32",
            "train.tensorboard=false"]
    run = tmp_path / "run"
    crossalign.train(shapes_dir, run, overrides=sets, progress=False)
    metrics = crossalign.evaluate(run, shapes_dir, split="test", progress=False)
    assert metrics["tta_flip"] is True
    json.dumps(metrics)  # the JSON file states it
    assert tta_flip(crossalign.load(run).model)
    again = crossalign.evaluate(run, shapes_dir, split="test", progress=False)
    assert again == metrics
