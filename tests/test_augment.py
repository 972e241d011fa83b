"""Augmentation: determinism under a seed, each operation at probability 0 and 1, WordNet synonyms."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from crossalign.config import AugmentConfig, RunConfig, apply_overrides
from crossalign.data import augment as aug
from crossalign.data.splits import stable_seed
from crossalign.data._wordnet import WordNet, _find_line, find_wordnet_dir
from crossalign.errors import WordNetMissing
from crossalign.data.transforms import eval_transform

OFF = dict(crop_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, flip_prob=0.0)
TEXT_OFF = dict(text_prob=1.0, synonym_prob=0.0, word_dropout=0.0)
DATA_CONFIG = {"input_size": (3, 64, 64), "interpolation": "bicubic", "crop_pct": 0.875, "mean": (0.5,) * 3, "std": (0.5,) * 3}

# (lemma, part of speech, synset words): a tiny WordNet in the real file format
TINY_SYNSETS = [
    ("noun", ["dog", "domestic_dog", "Canis_familiaris"]),
    ("noun", ["frump", "dog"]),  # a second sense of "dog": never used (first sense only)
    ("noun", ["box"]),
    ("noun", ["puppy", "pup"]),
    ("noun", ["woman", "adult_female"]),
    ("verb", ["climb", "mount", "go_up"]),
    ("adj", ["red", "reddish(p)", "ruddy"]),
]


def _photo(w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
    """A smooth colourful image (gradients plus noise), so every colour operation shows."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1) + rs.randint(0, 30, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _make_tiny_wordnet(root) -> None:
    """Write index.<pos> / data.<pos> files whose synset offsets are true byte offsets."""
    header = "  1 This is a test copy of the WordNet file format.  \n"
    index: dict[str, dict[str, list[int]]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        blob = header
        for part, words in TINY_SYNSETS:
            if part != pos:
                continue
            offset = len(blob.encode())
            fields = " ".join(f"{w} 0" for w in words)
            blob += f"{offset:08d} 05 {pos[0]} {len(words):02x} {fields} 000 | a test gloss  \n"
            for w in words:
                lemma = re.sub(r"\(\w+\)$", "", w).lower()
                index.setdefault(pos, {}).setdefault(lemma, []).append(offset)
        (root / f"data.{pos}").write_text(blob)
        lines = [f"{lemma} {pos[0]} {len(offs)} 0 {len(offs)} 0 " + " ".join(f"{o:08d}" for o in offs) + "  \n"
                 for lemma, offs in sorted(index.get(pos, {}).items())]
        (root / f"index.{pos}").write_text(header + "".join(lines))


@pytest.fixture()
def tiny_wn(tmp_path) -> WordNet:
    _make_tiny_wordnet(tmp_path)
    return WordNet(tmp_path)


def _real_wordnet() -> WordNet:
    try:
        return WordNet(find_wordnet_dir())
    except WordNetMissing as e:
        pytest.skip(f"WordNet is not installed here ({e})")


# ------------------------------------------------------------------------------------- seeds


def test_sample_seed_is_stable_distinct_and_ordered():
    seeds = {stable_seed(0, epoch, i, v) for epoch in range(3) for i in range(50) for v in range(4)}
    assert len(seeds) == 3 * 50 * 4
    assert all(0 <= s < 2**63 for s in seeds)
    assert stable_seed(1, 2) != stable_seed(2, 1)
    assert stable_seed(1, 2) == stable_seed(1, 2)


def test_same_seed_same_output_in_another_process():
    """hash() is salted per process; the seeds and the views drawn from them must not be."""
    code = (
        "from crossalign.data.augment import augment_text; from crossalign.data.splits import stable_seed; "
        "from crossalign.config import AugmentConfig; "
        "c = AugmentConfig(text_prob=1.0, synonym_prob=0.0, word_dropout=0.5); "
        "s = stable_seed(3, 1, 7, 2); print(s, augment_text('a b c d e f g h', c, s))"
    )
    here = f"{stable_seed(3, 1, 7, 2)} " + aug.augment_text("a b c d e f g h", AugmentConfig(
        text_prob=1.0, synonym_prob=0.0, word_dropout=0.5), stable_seed(3, 1, 7, 2))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == here


def test_global_rngs_are_untouched():
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    cfg = AugmentConfig(flip_prob=0.5, text_prob=1.0, synonym_prob=0.0)
    for seed in range(5):
        aug.augment_image(_photo(), cfg, seed)
        aug.augment_text("a dog runs on the beach", cfg, seed)
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


# ------------------------------------------------------------------------------------ images


def test_image_same_seed_same_bytes_different_seeds_differ():
    img, cfg = _photo(), AugmentConfig(image=True)
    assert aug.augment_image(img, cfg, 11).tobytes() == aug.augment_image(img, cfg, 11).tobytes()
    views = {aug.augment_image(img, cfg, s).tobytes() for s in range(8)}
    assert len(views) == 8


def test_all_probabilities_zero_is_the_identity():
    img = _photo()
    assert aug.augment_image(img, AugmentConfig(**OFF), 5).tobytes() == img.tobytes()


def test_grayscale_at_one_and_zero():
    for seed in range(3):
        gray = np.asarray(aug.augment_image(_photo(), AugmentConfig(**{**OFF, "grayscale_prob": 1.0}), seed))
        assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    colour = np.asarray(aug.augment_image(_photo(), AugmentConfig(**OFF), 0))
    assert not (colour[..., 0] == colour[..., 1]).all()


def test_jitter_changes_colours_not_geometry():
    img = _photo()
    for seed in range(3):
        out = aug.augment_image(img, AugmentConfig(**{**OFF, "jitter_prob": 1.0}), seed)
        assert out.size == img.size
        diff = np.abs(np.asarray(out, dtype=int) - np.asarray(img, dtype=int))
        assert diff.mean() > 1.0


def test_crop_is_a_region_of_the_original_with_the_asked_area():
    img = _photo(64, 64)
    cfg = AugmentConfig(**{**OFF, "crop_prob": 1.0, "crop_scale": (0.3, 0.5)})
    src = np.asarray(img)
    for seed in range(4):
        out = np.asarray(aug.augment_image(img, cfg, seed))
        h, w = out.shape[:2]
        assert 0.25 <= h * w / (64 * 64) <= 0.55 and (h, w) != (64, 64)
        # no resampling here: the crop is found pixel for pixel somewhere in the source
        hits = [(t, l) for t in range(65 - h) for l in range(65 - w) if np.array_equal(src[t:t + h, l:l + w], out)]
        assert hits


def test_flip_at_one_mirrors():
    img = _photo()
    out = aug.augment_image(img, AugmentConfig(**{**OFF, "flip_prob": 1.0}), 0)
    assert np.array_equal(np.asarray(out), np.asarray(img)[:, ::-1])


def test_operations_draw_from_their_own_streams():
    """Switching grayscale on leaves the crop and jitter of the same seed exactly as they were."""
    img = _photo()
    base = dict(crop_prob=1.0, jitter_prob=1.0, flip_prob=0.0)
    for seed in range(3):
        colour = aug.augment_image(img, AugmentConfig(**base, grayscale_prob=0.0), seed)
        gray = aug.augment_image(img, AugmentConfig(**base, grayscale_prob=1.0), seed)
        expected = colour.convert("L").convert("RGB")
        assert gray.size == colour.size
        assert np.abs(np.asarray(gray, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_short_side_shrinks_large_crops_only():
    cfg = AugmentConfig(**{**OFF, "crop_prob": 1.0})
    assert min(aug.augment_image(_photo(200, 160), cfg, 1, short_side=64).size) == 64
    small = aug.augment_image(_photo(48, 40), cfg, 1, short_side=64)
    assert min(small.size) < 64


def test_output_composes_with_the_tower_preprocessing():
    transform = eval_transform(DATA_CONFIG)
    cfg = AugmentConfig(image=True, flip_prob=0.5)
    for seed in range(3):
        view = aug.augment_image(_photo(90, 70, seed), cfg, stable_seed(0, 0, seed, 1))
        x = transform(view)
        assert x.shape == (3, 64, 64) and torch.isfinite(x).all()


# -------------------------------------------------------------------------------------- text


def test_text_same_seed_same_caption_different_seeds_differ():
    cfg = AugmentConfig(**{**TEXT_OFF, "word_dropout": 0.3})
    text = "a brown dog runs along the wet sand next to the sea"
    assert aug.augment_text(text, cfg, 9) == aug.augment_text(text, cfg, 9)
    assert len({aug.augment_text(text, cfg, s) for s in range(10)}) > 5


def test_word_dropout_removes_words_but_never_all():
    text = "Two dogs play in the snow ."
    for seed in range(20):
        out = aug.augment_text(text, AugmentConfig(**{**TEXT_OFF, "word_dropout": 1.0}), seed)
        words = out.split()
        assert len(words) == 2 and words[-1] == "." and words[0] in text.split()
    outs = [aug.augment_text(text, AugmentConfig(**{**TEXT_OFF, "word_dropout": 0.5}), s) for s in range(30)]
    assert all(len(o.split()) >= 1 and set(o.split()) <= set(text.split()) for o in outs)
    assert any(len(o.split()) < len(text.split()) for o in outs)
    assert aug.augment_text(text, AugmentConfig(**TEXT_OFF), 0) == text


def test_text_prob_zero_leaves_every_caption_alone(tmp_path):
    cfg = AugmentConfig(text_prob=0.0, synonym_prob=1.0, word_dropout=1.0, wordnet_dir=str(tmp_path))  # no WordNet there
    assert all(aug.augment_text("a dog on a beach", cfg, s) == "a dog on a beach" for s in range(10))


def test_synonyms_come_from_the_first_sense_keep_case_and_plural(tiny_wn):
    cfg = AugmentConfig(**{**TEXT_OFF, "synonym_prob": 1.0})
    seen = set()
    for seed in range(12):
        out = aug.augment_text("the dog and the Dog near two boxes , red", cfg, seed, wordnet=tiny_wn)
        # stop words and punctuation stay; "Canis familiaris" and the second sense ("frump") never come;
        # "boxes" has no synonym in its first sense
        assert out.startswith("the domestic dog and the Domestic dog near two boxes , "), out
        seen.add(out.split()[-1])
    assert seen == {"reddish", "ruddy"}  # the "(p)" position marker is stripped
    out = aug.augment_text("Dog puppies woman climbs", cfg, 0, wordnet=tiny_wn)
    assert out in {"Domestic dog pups adult female mounts", "Domestic dog pups adult female climbs"}, out


@pytest.mark.needs("wordnet")
def test_synonym_text_is_a_real_wordnet_synonym():
    wordnet = _real_wordnet()
    cfg = AugmentConfig(**{**TEXT_OFF, "synonym_prob": 1.0})
    out = aug.augment_text("a dog", cfg, 0, wordnet=wordnet)
    synonym = out[len("a "):]
    assert synonym != "dog"
    # check against the raw database: the first noun sense of "dog" lists both words
    first = int(_find_line((wordnet.root / "index.noun").read_bytes(), b"dog").split()[-7])
    with open(wordnet.root / "data.noun", "rb") as f:
        f.seek(first)
        line = f.readline().decode()
    assert " dog " in line and f" {synonym.replace(' ', '_')} " in line


@pytest.mark.needs("wordnet")
def test_index_binary_search_matches_a_linear_scan():
    wordnet = _real_wordnet()
    blob = (wordnet.root / "index.adv").read_bytes()
    lines = [ln for ln in blob.split(b"\n") if ln and not ln.startswith(b"  ")]
    for line in lines[:3] + lines[-3:] + random.Random(0).sample(lines, 40):
        assert _find_line(blob, line.split(b" ", 1)[0]) == line
    assert _find_line(blob, b"zzzzzz-not-a-word") is None and _find_line(blob, b"!") is None


def test_missing_wordnet_is_a_clear_error_and_dropout_still_works(tmp_path):
    cfg = AugmentConfig(text=True, text_prob=1.0, synonym_prob=0.5, word_dropout=0.5, wordnet_dir=str(tmp_path))
    with pytest.raises(WordNetMissing, match="apt-get install wordnet-base"):
        aug.augment_text("a dog on a beach", cfg, 0)
    with pytest.raises(WordNetMissing, match="augment.synonym_prob"):
        aug.check_augment(cfg)
    cfg.synonym_prob = 0.0
    aug.check_augment(cfg)
    assert len(aug.augment_text("a dog on a beach", cfg, 1).split()) >= 1


# ------------------------------------------------------------------------------------ config


def test_config_overrides_checks_and_description():
    cfg = apply_overrides(RunConfig(), ["augment.image=true", "augment.crop_scale=0.5,0.9", "augment.text=true",
                                        "augment.synonym_prob=0"]).augment
    assert cfg.image and cfg.crop_scale == (0.5, 0.9)
    aug.check_augment(cfg)
    assert aug.describe(cfg) == "crop 0.5-0.9, jitter 0.4 hue 0.1 (p 0.8), gray 0.2; dropout 0.1 (p 0.5)"
    assert aug.describe(AugmentConfig()) == "none"
    for bad in ("jitter_prob=1.5", "crop_scale=[0.9,0.5]", "crop_scale=[0.5,1.2]", "hue=0.7", "cached_views=0"):
        with pytest.raises(ValueError, match="augment."):  # RunConfig.validate, as the config resolves
            apply_overrides(RunConfig(), [f"augment.{bad}"])
