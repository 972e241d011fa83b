"""``crossalign duplicates``: planted true copies and near-copies are found and kept apart, and
distinct pictures are not reported."""

from __future__ import annotations

import io
import json
import random
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from crossalign.cli.main import main
from crossalign.errors import ConfigError
from crossalign.index.build import build_index
from crossalign.index.duplicates import KINDS, find_duplicates, plant_copy
from crossalign.index.search import open_index

PLANTED = [["copies/five_rotated.jpg", "scene_00005.png"],
           ["copies/four_cropped.jpg", "scene_00004.png"],
           ["copies/three_half.jpg", "scene_00003.png"]]


def _picture(rng: np.random.Generator, size: int = 160) -> Image.Image:
    """A photo-like picture: smooth colour fields under a few dozen shapes, with grain (a
    keypoint check needs corners and blobs, as photos have)."""
    im = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size),
                                                                                 Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(4, 20))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif shape == 1:
            draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
    grain = rng.normal(0, 4, (size, size, 3))
    pixels = np.asarray(im.filter(ImageFilter.GaussianBlur(0.8)), float) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _straighten(im: Image.Image, degrees: float) -> Image.Image:
    """Rotated and cropped to the middle, with no corner left, as a photo editor's straighten
    tool leaves it (a square at 4 degrees: 7 of 160 pixels cut from each side)."""
    w, h = im.size
    a = np.radians(abs(degrees))
    cut = int(np.ceil(w * (1 - 1 / (np.cos(a) + np.sin(a))) / 2))
    return im.rotate(degrees, Image.BICUBIC).crop((cut, cut, w - cut, h - cut))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, shapes_dir):
    """30 distinct pictures with two true copies of one, one of another, and three copies as
    people make them: a halved one re-saved as JPEG, a cropped one and a rotated one; a run
    to embed them (the pretrained image tower, a text tower from scratch, one epoch) and their
    index."""
    root = tmp_path_factory.mktemp("dups")
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(root / "run"), "--fixed",
                 "--set", "model.text.tower=lstm", "--set", "train.epochs=1",
                 "--set", "train.batch_size=64"]) == 0
    photos = root / "photos"
    (photos / "copies").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(30):
        _picture(rng).save(photos / f"scene_{i:05d}.png")
    shutil.copy(photos / "scene_00001.png", photos / "copies" / "one_a.png")
    shutil.copy(photos / "scene_00001.png", photos / "copies" / "one_b.png")
    shutil.copy(photos / "scene_00002.png", photos / "copies" / "two.png")
    with Image.open(photos / "scene_00003.png") as im:
        im.resize((80, 80), Image.LANCZOS).save(photos / "copies" / "three_half.jpg", quality=75)
    with Image.open(photos / "scene_00004.png") as im:
        im.crop((10, 4, 146, 140)).save(photos / "copies" / "four_cropped.jpg", quality=85)
    with Image.open(photos / "scene_00005.png") as im:
        _straighten(im, 4).save(photos / "copies" / "five_rotated.jpg", quality=85)
    build_index(root / "run", root / "idx", images=photos, progress=False)
    return root


@pytest.fixture(scope="module")
def embedder(planted):
    """The run's model, loaded once for the tests that calibrate."""
    from crossalign.index._vectors import Embedder

    return Embedder(planted / "run")


def _near(dup) -> list[list[str]]:
    return sorted(sorted((a.name, b.name)) for a, b, _, _ in dup.near)


def test_copies_people_make_are_found_with_the_calibrated_threshold(planted, embedder):
    ix = open_index(planted / "idx", model=False)
    dup = find_duplicates(ix.store, embedder=embedder, calibration_sample=10)
    ix.close()
    groups = sorted(sorted(im.name for im in g) for g in dup.exact)
    assert groups == [["copies/one_a.png", "copies/one_b.png", "scene_00001.png"],
                      ["copies/two.png", "scene_00002.png"]]
    assert _near(dup) == PLANTED
    c = dup.calibration
    assert c is not None and (c.originals, c.copies) == (10, 10 * len(KINDS)) and dup.complete
    # a crop moves the difference hash far, so the vector threshold is calibrated on crops at
    # least; the check confirms every planted copy but one at most (a copy of a picture with
    # few keypoints may not align)
    assert "crop" in c.lowest and dup.threshold <= min(c.lowest.values())
    assert c.found >= c.copies - 1
    assert all(corr >= dup.min_correlation for _, _, _, corr in dup.near)
    assert "60 copies planted of 10 of these images" in dup.summary()


def test_distinct_pictures_are_not_reported(planted):
    ix = open_index(planted / "idx", model=False)
    # every image's ten nearest in both spaces are candidates, however far: the check decides
    dup = find_duplicates(ix.store, threshold=-1.0, max_hash_distance=64)
    assert dup.calibration is None and dup.candidates > 10 * len(PLANTED)
    assert _near(dup) == PLANTED
    with pytest.raises(ConfigError):
        find_duplicates(ix.store, threshold=1.5)
    with pytest.raises(ConfigError, match="max_hash_distance"):
        find_duplicates(ix.store, threshold=0.5, max_hash_distance=65)
    with pytest.raises(ConfigError, match="min_correlation"):
        find_duplicates(ix.store, threshold=0.5, min_correlation=0)
    with pytest.raises(ConfigError, match="needs the index's run"):
        find_duplicates(ix.store)
    ix.close()


def test_an_approximate_index_finds_them_through_neighbours(planted, tmp_path):
    build_index(planted / "run", tmp_path / "hnsw", images=planted / "photos", index_type="hnsw",
                progress=False)
    ix = open_index(tmp_path / "hnsw", model=False)
    dup = find_duplicates(ix.store, threshold=-1.0, neighbours=len(ix) - 1)
    assert not dup.complete and len(dup.exact) == 2
    assert _near(dup) == PLANTED
    ix.close()


def test_a_file_gone_since_the_build_is_skipped(planted, embedder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ["scene_00003.png", "scene_00006.png", "scene_00007.png", "copies/three_half.jpg"]:
        shutil.copy(planted / "photos" / name, photos / name.replace("copies/", ""))
    build_index(planted / "run", tmp_path / "idx", images=photos, progress=False)
    (photos / "scene_00003.png").unlink()
    ix = open_index(tmp_path / "idx", model=False)
    dup = find_duplicates(ix.store, threshold=-1.0, embedder=embedder)
    assert dup.near == [] and dup.unchecked >= 1 and "could not be checked" in dup.summary()
    dup = find_duplicates(ix.store, embedder=embedder, calibration_sample=5)
    assert dup.calibration.originals == 3  # the gone picture is not copied
    ix.close()


def test_planted_copies_are_the_kinds_named():
    im = _picture(np.random.default_rng(1), 200)
    rng = random.Random(0)
    sizes = {k: Image.open(io.BytesIO(plant_copy(im, k, rng))).size for k in KINDS}
    assert sizes["half"] == (100, 100) and sizes["quarter"] == (50, 50)
    assert sizes["jpeg"] == sizes["colour"] == (200, 200)
    assert 160 <= sizes["crop"][0] <= 180 and sizes["rotate"][0] < 200
    with pytest.raises(ValueError):
        plant_copy(im, "mirror", rng)


def test_duplicates_command_writes_a_page_and_json(planted, tmp_path, capsys):
    out = tmp_path / "dups"
    assert main(["duplicates", str(planted / "idx"), "--out", str(out), "--calibration-sample",
                 "3"]) == 0  # the run is loaded from the index's record of it
    text = capsys.readouterr().out
    assert "2 groups of true duplicates (5 files), 3 near-duplicate pairs" in text
    assert "18 copies planted of 3 of these images" in text
    data = json.loads((out / "duplicates.json").read_text())
    assert len(data["exact"]) == 2 and len(data["near"]) == 3
    assert data["calibration"]["copies"] == 18 and data["threshold"] <= 1.0
    assert all(set(p) == {"a", "b", "cosine", "correlation"} for p in data["near"])
    page = (out / "duplicates.html").read_text()
    assert page.count("<div class='row exact'>") == 2 and "copies planted" in page
    assert page.count("data:image/jpeg;base64,") >= 5 + 2 * len(data["near"])
    assert str(planted) not in page  # images are named, never by their path


def test_neighbours_match_a_brute_force_ranking(monkeypatch):
    from crossalign.index import duplicates

    monkeypatch.setattr(duplicates, "SCORES_HELD", 7 * 50)  # blocks of 7 rows: several blocks
    vecs = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    rows, scores = duplicates._neighbours_flat(vecs, 4)
    full = vecs @ vecs.T
    np.fill_diagonal(full, -np.inf)
    truth = np.argsort(-full, axis=1)[:, :4]
    # random Gaussian scores: no ties among a row's top five, so the sets are the same
    assert [set(r) for r in rows] == [set(t) for t in truth]
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, axis=1), rtol=1e-6)
