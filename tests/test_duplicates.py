"""``crossalign duplicates``: planted true copies and near-copies are found and kept apart."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from crossalign.cli.main import main
from crossalign.errors import ConfigError
from crossalign.index.build import build_index
from crossalign.index.search import open_index
from crossalign.index.duplicates import find_duplicates


def _texture(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A photo-like picture: smooth random colour fields with grain (the shapes scenes are too
    regular for a 64-bit hash to tell apart)."""
    low = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size),
                                                                                   Image.BICUBIC)
    grain = rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(low, float) + grain, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, shapes_dir):
    """40 pictures with two true copies of one, one of another, a re-encoded and shrunk copy of
    a third and a cropped copy of a fourth; a run to embed them and their index."""
    root = tmp_path_factory.mktemp("dups")
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(root / "run"),
                 "--set", "train.epochs=1", "--set", "train.batch_size=64"]) == 0
    photos = root / "photos"
    (photos / "copies").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        _texture(rng).save(photos / f"scene_{i:05d}.png")
    shutil.copy(photos / "scene_00001.png", photos / "copies" / "one_a.png")
    shutil.copy(photos / "scene_00001.png", photos / "copies" / "one_b.png")
    shutil.copy(photos / "scene_00002.png", photos / "copies" / "two.png")
    with Image.open(photos / "scene_00003.png") as im:
        im.resize((72, 72)).save(photos / "copies" / "three_small.jpg", quality=80)
    with Image.open(photos / "scene_00004.png") as im:
        im.crop((2, 2, 94, 94)).resize((96, 96)).save(photos / "copies" / "four_cropped.png")
    build_index(root / "run", root / "idx", images=photos, progress=False)
    return root


def test_true_copies_and_near_copies_are_found_apart(planted):
    ix = open_index(planted / "idx", model=False)
    # a model trained one epoch on shapes says little about textures: a loose candidate
    # threshold lets many pairs through, and the check on the pixels keeps the true ones
    dup = find_duplicates(ix.store, threshold=0.5)
    groups = sorted(sorted(im.name for im in g) for g in dup.exact)
    assert groups == [["copies/one_a.png", "copies/one_b.png", "scene_00001.png"],
                      ["copies/two.png", "scene_00002.png"]]
    pairs = [{a.name, b.name} for a, b, _, _ in dup.near]
    assert sorted(map(sorted, pairs)) == [["copies/four_cropped.png", "scene_00004.png"],
                                          ["copies/three_small.jpg", "scene_00003.png"]]
    assert dup.candidates > len(dup.near)  # similar scenes were candidates, and were let go
    assert all(s >= 0.5 and d <= 10 for _, _, s, d in dup.near) and dup.complete
    with pytest.raises(ConfigError):
        find_duplicates(ix.store, threshold=1.5)
    ix.close()


def test_an_approximate_index_finds_them_through_neighbours(planted, tmp_path):
    build_index(planted / "run", tmp_path / "hnsw", images=planted / "photos", index_type="hnsw",
                progress=False)
    ix = open_index(tmp_path / "hnsw", model=False)
    dup = find_duplicates(ix.store, threshold=0.5, neighbours=len(ix) - 1)
    assert not dup.complete and len(dup.exact) == 2
    pairs = sorted(sorted((a.name, b.name)) for a, b, _, _ in dup.near)
    assert pairs == [["copies/four_cropped.png", "scene_00004.png"],
                     ["copies/three_small.jpg", "scene_00003.png"]]
    ix.close()


def test_duplicates_command_writes_a_page_and_json(planted, tmp_path, capsys):
    out = tmp_path / "dups"
    assert main(["duplicates", str(planted / "idx"), "--out", str(out), "--threshold", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "2 groups of true duplicates (5 files)" in text and "same content:" in text
    data = json.loads((out / "duplicates.json").read_text())
    assert len(data["exact"]) == 2 and data["threshold"] == 0.5 and len(data["near"]) == 2
    assert all(set(p) == {"a", "b", "cosine", "hash_distance"} for p in data["near"])
    page = (out / "duplicates.html").read_text()
    assert page.count("<div class='row exact'>") == 2
    assert page.count("data:image/jpeg;base64,") >= 5 + 2 * len(data["near"][:200])
    assert str(planted) not in page  # images are named, never by their path
