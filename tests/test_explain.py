"""Explanations: heat maps over images, word attributions, the picture and JSON, the checks.

The maths is checked against hand computations (Grad-CAM's weighted activations, integrated
gradients' completeness); every image tower of the contract test gets a heat map.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from crossalign.embed.collection import embed_texts
from crossalign.explain.image import crop_box, heat_in_frame, image_heat
from crossalign.explain.pair import explain_pair
from crossalign.explain.words import split_words, word_scores
from crossalign.explain.checks import cell_mask, deletion_drops, pointing_hit, text_without, word_drops
from test_towers_contract import IMAGE_CASES, TEXT_CASES, build, _one_thread, tiny_bert  # noqa: F401

LITE = {"input_size": (3, 224, 224), "crop_pct": 0.875}


def _pixels(model, n=2, seed=0):
    from crossalign.data.transforms import eval_transform

    rng = np.random.default_rng(seed)
    tf = eval_transform(model.image_tower.data_config)
    return torch.stack([tf(Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))) for _ in range(n)])


def _unit(v):
    return torch.nn.functional.normalize(v, dim=-1)


@pytest.mark.parametrize("name", sorted(k for k, v in IMAGE_CASES.items() if v.get("split", True)))
def test_every_image_tower_gets_a_heat_map(name, tiny_bert):
    model, _ = build(name, tiny_bert)
    text = _unit(torch.randn(2, 16, generator=torch.Generator().manual_seed(1)))
    pixels = _pixels(model)
    heat = image_heat(model, pixels, text, "gradcam++")
    assert heat.shape == (2, *pixels.shape[-2:])
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 + 1e-6
    assert model.training  # the model's mode is given back


def test_gradcam_is_the_gradient_weighted_last_stage(tiny_bert):
    """Grad-CAM by hand on the small CNN: ReLU(sum_k mean(dS/dA_k) A_k) of the last stage's
    output A, S the cosine similarity with the text vector."""
    import cv2

    model, _ = build("small_cnn", tiny_bert)
    model.eval()
    pixels = _pixels(model, 1)
    text = _unit(torch.randn(1, 16, generator=torch.Generator().manual_seed(2)))
    acts = {}
    handle = model.image_tower.stages[-1].register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    s = (model.encode_image(pixels) * text).sum()
    handle.remove()
    a = acts["a"]
    (grad,) = torch.autograd.grad(s, a)
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * a).sum(1))[0].detach().numpy()  # [h, w]
    cam = cv2.resize(cam - cam.min(), tuple(pixels.shape[-2:][::-1]))
    expected = cam / cam.max()
    got = image_heat(model, pixels, text, "gradcam")[0]
    assert np.allclose(got, expected, atol=1e-4)


def test_mirror_view_heat_is_the_mirror_of_the_mirrored_image(tiny_bert):
    model, _ = build("small_cnn", tiny_bert)
    pixels = _pixels(model, 1)
    text = _unit(torch.randn(1, 16, generator=torch.Generator().manual_seed(3)))
    a = image_heat(model, pixels, text, "gradcam", tta_flip=True)
    b = image_heat(model, pixels.flip(-1), text, "gradcam", tta_flip=True)
    assert np.allclose(a, b[:, :, ::-1], atol=1e-5)


def test_crop_box_and_the_heat_placed_on_the_original_image():
    assert crop_box(128, 128, LITE) == pytest.approx((8, 8, 120, 120))
    # a wide picture: the shorter side goes to 256, the centre 224 x 224 is kept
    left, top, right, bottom = crop_box(400, 200, LITE)
    assert (top, bottom) == pytest.approx((200 * 16 / 256, 200 * 240 / 256))
    assert right - left == pytest.approx(bottom - top) and (left + right) / 2 == pytest.approx(200)
    heat = np.zeros((224, 224), np.float32)
    heat[:112, 112:] = 1.0  # the top-right quarter of what the tower saw
    frame = heat_in_frame(heat, 128, 128, LITE)
    assert frame.shape == (128, 128)
    assert frame[:8].max() == 0 and frame[:, :8].max() == 0 and frame[120:].max() == 0  # cut by the crop
    assert frame[20, 100] == pytest.approx(1) and frame[100, 20] == pytest.approx(0)


@pytest.mark.parametrize("name", ["lstm", "transformer", "hf:TINY"])
def test_word_scores_are_complete(name, tiny_bert):
    """Integrated gradients: the words' scores add up to the similarity's rise from the baseline."""
    model, _ = build(name, tiny_bert)
    image = _unit(torch.randn(16, generator=torch.Generator().manual_seed(4)))
    text = "two blue squares beside a big green triangle."
    ws = word_scores(model, text, image, steps=64)
    sim = float(torch.from_numpy(embed_texts(model, [text]))[0] @ image)
    assert ws.words[:3] == ["two", "blue", "squares"]
    assert sum(ws.scores) - ws.delta == pytest.approx(sim - ws.baseline_similarity, abs=1e-5)
    assert abs(ws.delta) < 0.05 * max(abs(sim - ws.baseline_similarity), 1e-3)
    assert sum(ws.shares()) == pytest.approx(1.0)


def test_word_pieces_fold_into_their_words(tiny_bert):
    model, _ = build("hf:TINY", tiny_bert)
    ids, owners, words, truncated = split_words(model.text_tower, "squares, circles.")
    # [CLS] squares , circles . [SEP]: special tokens belong to no word
    assert words == ["squares", ",", "circles", "."] and owners[0] is None and owners[-1] is None
    assert not truncated and ids.shape == (1, len(owners))
    # a word outside the vocabulary is one word however it is cut
    ids, owners, words, _ = split_words(model.text_tower, "a sunflower")
    assert words == ["a", "sunflower"]


def test_text_without_cuts_the_right_word():
    words = ["two", "red", "circles", ",", "red"]
    assert text_without("Two red circles, red", words, 4) == "Two red circles,"
    assert text_without("Two red circles, red", words, 1) == "Two circles, red"


def test_cell_masks_and_the_pointing_game():
    score = np.zeros((28, 28))
    score[:14, :14] = 1.0
    mask = cell_mask(score, 0.25, 4)
    assert mask[:14, :14].all() and mask.sum() == 14 * 14
    heat = np.zeros((100, 100))
    heat[30, 70] = 1
    assert pointing_hit(heat, [(60, 20, 80, 40)]) == (True, pytest.approx(0.04))
    assert pointing_hit(heat, [(0, 0, 10, 10)])[0] is False
    assert pointing_hit(heat, [(72, 20, 80, 40)], tolerance=3)[0] is True


def test_deletion_blurs_equal_areas_and_drops_are_measured(tiny_bert):
    model, _ = build("small_cnn", tiny_bert)
    pixels = _pixels(model, 3)
    text = _unit(torch.randn(3, 16, generator=torch.Generator().manual_seed(5)))
    heat = image_heat(model, pixels, text)
    d = deletion_drops(model, pixels, heat, text, np.random.default_rng(0))
    assert d["hot"].shape == d["random"].shape == (3,) and np.isfinite(d["hot"]).all()
    with torch.no_grad():
        base = (model.encode_image(pixels) * text).sum(-1).numpy()
    assert np.allclose(d["base"], base, atol=1e-6)
    image = _unit(torch.randn(16, generator=torch.Generator().manual_seed(6)))
    ws = word_scores(model, "a big red circle", image)
    top, rand = word_drops(model, "a big red circle", ws.words, ws.scores, image, random.Random(0))
    assert np.isfinite([top, rand]).all()
    assert word_drops(model, "circle", ["circle"], [1.0], image, random.Random(0)) is None


def test_scene_objects_are_where_the_shapes_were_drawn(tmp_path):
    from crossalign.data.synthetic import BACKGROUNDS, make_shapes_dataset, scene_objects

    make_shapes_dataset(tmp_path, n_images=12, seed=3, size=64)
    objects = scene_objects(12, 3, 64)
    backgrounds = {tuple(v) for v in BACKGROUNDS.values()}
    for name, boxes in objects.items():
        px = np.asarray(Image.open(tmp_path / "images" / name).convert("RGB"))
        bg = tuple(int(v) for v in px[0, 0]) if tuple(px[0, 0]) in backgrounds else None
        inside = np.zeros(px.shape[:2], bool)
        for left, top, right, bottom in boxes:
            inside[int(np.floor(top)):int(np.ceil(bottom)) + 1, int(np.floor(left)):int(np.ceil(right)) + 1] = True
        painted = (px != np.array(bg if bg else px[inside].reshape(-1, 3)[0])).any(-1)
        assert painted[inside].any()  # every box holds paint
        if bg is not None:
            assert not painted[~inside].any()  # and nothing was painted outside them


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, shapes_dir):
    from crossalign.cli.main import main

    run = tmp_path_factory.mktemp("explain") / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(run), "--set", "train.epochs=1",
                 "--set", "model.image.tower=small_cnn", "--set", "model.image.image_size=32",
                 "--set", "model.text.tower=lstm", "--set", "train.batch_size=32"]) == 0
    return run


def test_explain_command_writes_the_picture_and_json(small_run, shapes_dir, tmp_path, capsys):
    from crossalign.api import load
    from crossalign.cli.main import main

    image = sorted((shapes_dir / "images").iterdir())[0]
    prefix = tmp_path / "why"
    assert main(["-q", "explain", str(small_run), "--image", str(image), "--text", "a red circle",
                 "--out", str(prefix)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "why.json").read_text())
    aligner = load(small_run)
    sim = float(aligner.encode_image(str(image))[0] @ aligner.encode_text("a red circle")[0])
    assert data["similarity"] == pytest.approx(sim, abs=1e-5)
    assert [w["word"] for w in data["words"]] == ["a", "red", "circle"]
    assert sum(w["share"] for w in data["words"]) == pytest.approx(1, abs=1e-4)
    w, h = data["image_size"]
    assert len(data["heat"]) == data["heat_size"][1] and max(map(max, data["heat"])) <= 1
    assert 0 <= data["hottest"][0] < w and 0 <= data["hottest"][1] < h
    with Image.open(tmp_path / "why.png") as im:
        assert im.format == "PNG" and im.width > 200
    assert "similarity" in printed and "red" in printed


def test_explain_command_names_bad_input(small_run, tmp_path, capsys):
    from crossalign.cli.main import main

    assert main(["-q", "explain", str(small_run), "--image", str(tmp_path / "nope.png"), "--text", "x"]) == 2
    assert "nope.png" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["-q", "explain", str(small_run), "--image", str(bad), "--text", "x",
                 "--out", str(tmp_path / "o")]) == 2
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "o.json").exists()
    image = tmp_path / "ok.png"
    Image.new("RGB", (20, 20)).save(image)
    assert main(["-q", "explain", str(small_run), "--image", str(image), "--text", "  "]) == 2
    assert "--text" in capsys.readouterr().err


def test_explain_pair_from_python(small_run, shapes_dir):
    from crossalign.api import load

    image = sorted((shapes_dir / "images").iterdir())[1]
    e = load(small_run).explain(str(image), "two blue squares")
    assert e.heat_image.shape == (e.image.height, e.image.width) and e.heat.max() == pytest.approx(1)
