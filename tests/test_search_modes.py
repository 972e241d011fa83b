"""Search by words and by meaning: the one-string query grammar, the keyword index (FTS5, BM25),
hybrid search (reciprocal rank fusion), the calibrated cut-offs (min_prob, coverage) and the
words read in pictures, through the library, the command, the service and the page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from crossalign.cli.main import main
from crossalign.errors import ConfigError
from crossalign.index.build import build_index
from crossalign.index.fusion import RRF_K, fuse
from crossalign.index.query import fts_match, parse_query
from crossalign.index.search import Filters, open_index
from crossalign.serve import create_app
from crossalign.serve.app import ServiceLimits

from _browser import browser_page
from _live import serving

LOCAL = "http://127.0.0.1"


# ---- the grammar ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, terms", [
    ("beach +sunset:0.5 -people", [("beach", 1.0), ("sunset", 0.5), ("people", -1.0)]),
    ("a dog in the snow +night:0.3", [("a dog in the snow", 1.0), ("night", 0.3)]),
    ('"red car":2 -"traffic jam" t-shirt', [("red car", 2.0), ("traffic jam", -1.0), ("t-shirt", 1.0)]),
    ("well-known +x -y:2", [("well-known", 1.0), ("x", 1.0), ("y", -2.0)]),
    ("ratio 3:4 photo", [("ratio 3:4 photo", 1.0)]),
])
def test_query_grammar(text, terms):
    assert [(t.text, t.weight) for t in parse_query(text).terms] == terms


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   ", "empty"), ("-people", "every term is pushed away"),
    ("beach +sunset:0", "must be positive"), ('beach +""', "empty quoted"),
    ("beach +:2", "no words"),
])
def test_query_grammar_refuses(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_query(text)


def test_keyword_expression():
    assert fts_match(parse_query("a dog in the snow")) == '("dog" OR "snow")'
    assert fts_match(parse_query('"red car" sunf* -people')) == \
        '("sunf" *) AND "red car" NOT "people"'
    assert fts_match(parse_query("the")) == '("the")'  # only common words: they are kept
    assert fts_match(parse_query('o"brien NEAR')) == '("o" OR "brien" OR "near")'  # no FTS5 syntax
    with pytest.raises(ConfigError, match="no word to look for"):
        fts_match(parse_query("+ ... -people"))


def test_reciprocal_rank_fusion_by_hand():
    rows, scores = fuse([np.array([5, 7, 9]), np.array([9, 4])], [1.0, 2.0])
    expect = {5: 1 / (RRF_K + 1), 7: 1 / (RRF_K + 2), 9: 1 / (RRF_K + 3) + 2 / (RRF_K + 1),
              4: 2 / (RRF_K + 2)}
    assert rows.tolist() == sorted(expect, key=lambda i: -expect[i])
    np.testing.assert_allclose(scores, sorted(expect.values(), reverse=True), rtol=1e-6)
    with pytest.raises(ConfigError, match="fusion weights"):
        fuse([np.array([1])], [0.0])


# ---- an index of the shapes data, with a calibration and words in some pictures ------------

def _draw_word(path: Path, word: str) -> None:
    with Image.open(path) as im:
        im = im.convert("RGB").resize((256, 256))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 96, 256, 160), fill=(255, 255, 255))
    draw.text((12, 104), word, fill=(0, 0, 0), font=ImageFont.load_default(size=40))
    im.save(path)


WORDS = {"scene_00001.png": "ZEBRA", "scene_00002.png": "KETTLE"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, shapes_dir) -> Path:
    """A copy of the shapes data with a word drawn on two pictures."""
    out = tmp_path_factory.mktemp("modes") / "data"
    shutil.copytree(shapes_dir, out)
    for name, word in WORDS.items():
        _draw_word(out / "images" / name, word)
    return out


@pytest.fixture(scope="module")
def run(data) -> Path:
    """A run whose validation split holds enough pairs (36 images, 180 captions) to calibrate."""
    out = data.parent / "run"
    assert main(["-q", "train", "--data", str(data), "--out", str(out), "--fixed",
                 "--set", "train.epochs=1", "--set", "train.batch_size=64",
                 "--set", "data.split_ratios=[0.3,0.6,0.1]"]) == 0
    return out


@pytest.fixture(scope="module")
def built(run, data):
    out = data.parent / "idx"
    summary = build_index(run, out, data=data, progress=False, ocr=True)
    assert summary.ocr_read == 60
    return out, summary


@pytest.fixture(scope="module")
def index(built):
    ix = open_index(built[0])
    yield ix
    ix.close()


def test_build_reads_words_once_and_calibrates(built, run, data):
    out, summary = built
    assert summary.calibration.startswith("calibration: ") and "none" not in summary.calibration
    store = open_index(out, model=False).store
    info = store.info
    assert info["ocr"] is True and info["calibration"]["images"]
    words = {im.name: im.ocr for im in store.all_images()}
    for name, word in WORDS.items():
        assert word.lower() in words[name].lower()
    assert all(w is not None for w in words.values())  # every picture was read
    others = " ".join(w for name, w in words.items() if name not in WORDS).lower()
    assert not any(word.lower() in others for word in WORDS.values())
    again = build_index(run, out, data=data, progress=False)  # --ocr is kept; nothing read twice
    assert again.ocr_read == 0 and again.embedded_images == 0
    assert open_index(out, model=False).store.info["ocr"] is True


def test_keyword_search_finds_words_in_pictures_and_captions(index):
    hit = index.search(query="kettle", mode="keyword", k=3).hits
    assert hit[0].name == "scene_00002.png" and hit[0].cosine is None
    assert any(matched and text.lower() == "kettle" for text, matched in hit[0].snippet)
    assert "KETTLE" in hit[0].ocr.upper()
    squares = index.search(query='"blue square"', mode="keyword", k=60).hits
    assert squares and all(any("blue square" in c for c in h.captions) for h in squares)
    every = index.search(query="square", mode="keyword", k=60).hits
    no_sky = index.search(query="square -sky", mode="keyword", k=60).hits
    assert len(squares) <= len(every) and len(no_sky) < len(every)
    assert all(all("sky" not in c for c in h.captions) for h in no_sky)
    val = index.search(query="square", mode="keyword", k=60, filters=Filters(split="val")).hits
    assert val and all(h.split == "val" for h in val)
    caps = index.search(query="circle", mode="keyword", k=5, target="captions").hits
    assert caps and all("circle" in h.captions[0] for h in caps)


def test_keyword_search_needs_no_model(built):
    ix = open_index(built[0], model=False)
    try:
        assert ix.search(query="zebra", mode="keyword", k=1).hits[0].name == "scene_00001.png"
        with pytest.raises(ConfigError, match="keyword search does not have"):
            ix.search(query="zebra", mode="keyword", min_score=0.1)
    finally:
        ix.close()


def test_hybrid_fuses_the_two_rankings(index):
    q = "a red circle"
    vec = index.search(query=q, k=100).hits
    words = index.search(query=q, mode="keyword", k=100).hits
    fused = index.search(query=q, mode="hybrid", k=10, fusion=(1.0, 0.5))
    expect, _ = fuse([np.array([h.id for h in vec]), np.array([h.id for h in words])], [1.0, 0.5])
    assert [h.id for h in fused.hits] == expect[:10].tolist()
    assert fused.ranking == "rrf" and all(h.cosine is not None for h in fused.hits)
    by_id = {h.id: h.cosine for h in vec}
    for h in fused.hits:  # the cosine of each fused hit is its exact cosine
        assert h.cosine == pytest.approx(by_id[h.id], abs=1e-5)  # float32 dot products


def test_calibrated_cut_offs(index):
    q = "a red circle"
    every = index.search(query=q, k=60)
    probs = [h.probability for h in every.hits]
    assert all(p is not None and 0.0 <= p <= 1.0 for p in probs)
    # one query's probabilities follow its cosines (ties in cosine: equal up to float rounding)
    assert all(a >= b - 1e-9 for a, b in zip(probs, probs[1:]))
    kept = index.search(query=q, k=60, min_prob=0.2)
    assert [h.id for h in kept.hits] == [h.id for h in every.hits if h.probability >= 0.2 - 1e-9][:60]
    cut = kept.cutoff["cosine"]
    assert all(h.cosine >= cut for h in kept.hits) and kept.cutoff["min_prob"] == 0.2
    small, large = (index.search(query=q, k=60, coverage=c) for c in (0.5, 0.95))
    assert len(small.hits) <= len(large.hits)  # a surer set is never smaller
    assert small.cutoff["cosine"] >= large.cutoff["cosine"]


def test_calibrated_cut_offs_refused_where_they_do_not_hold(index, shapes_dir):
    picture = shapes_dir / "images" / "scene_00003.png"
    with pytest.raises(ConfigError, match="fitted on text queries"):
        index.search(image=picture, min_prob=0.5)
    assert index.search(image=picture, k=3).hits[0].probability is None
    with pytest.raises(ConfigError, match="no calibration of its captions"):
        index.search(query="a red circle", target="captions", coverage=0.9)
    with pytest.raises(ConfigError, match=r"probability in \(0, 1\)"):
        index.search(query="a red circle", min_prob=1.5)


def test_an_uncalibrated_index_says_why(tmp_path, run, shapes_dir):
    from crossalign.index._vectors import Embedder

    emb = Embedder(run)
    emb.run = tmp_path / "elsewhere"  # its run.json (where the data is) cannot be found
    out = tmp_path / "idx"
    build_index(emb, out, images=shapes_dir / "images", progress=False)
    ix = open_index(out, run)
    try:
        with pytest.raises(ConfigError, match="validation pairs could not be read"):
            ix.search(query="a red circle", min_prob=0.5)
    finally:
        ix.close()


def test_the_command_and_python_alike(built, capsys):
    import crossalign

    out = built[0]
    assert main(["-q", "search", str(out), "--query", "zebra +circle:0.5", "--mode", "hybrid",
                 "--coverage", "0.9", "--json", "-k", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    same = crossalign.search(out, query="zebra +circle:0.5", mode="hybrid", coverage=0.9, k=5)
    assert [h["id"] for h in printed["hits"]] == [h.id for h in same.hits]
    assert printed["mode"] == "hybrid" and printed["cutoff"]["coverage"] == 0.9
    assert main(["-q", "search", str(out), "--query", "kettle", "--mode", "keyword"]) == 0
    text = capsys.readouterr().out
    assert "scene_00002.png" in text.splitlines()[0] and "[" in text  # the matched word marked
    assert main(["-q", "search", str(out), "--query=-people"]) == 2
    assert "every term is pushed away" in capsys.readouterr().err
    assert main(["-q", "search", str(out), "--query", "x", "--mode", "keyword", "--min-prob", "0.5"]) == 2
    assert "--min-prob" in capsys.readouterr().err  # the flag, named as the command spells it


# ---- the service and the page ---------------------------------------------------------------

@pytest.fixture(scope="module")
def app(index):
    return create_app(index, ServiceLimits(max_k=50))


def test_service_modes_and_cut_offs(app):
    client = TestClient(app, raise_server_exceptions=False, base_url=LOCAL)
    config = client.get("/config").json()
    assert config["modes"] == ["vector", "keyword", "hybrid"] and config["calibrated"] and config["ocr"]
    r = client.get("/search", params={"q": "kettle", "mode": "keyword", "k": 3})
    assert r.status_code == 200, r.text
    hit = r.json()["hits"][0]
    assert hit["name"] == "scene_00002.png" and ["KETTLE", True] in hit["snippet"] or \
        any(m and t.lower() == "kettle" for t, m in hit["snippet"])
    r = client.get("/search", params={"q": "a red circle -sky", "min_prob": 0.01, "k": 50})
    body = r.json()
    assert r.status_code == 200 and body["cutoff"]["min_prob"] == 0.01
    assert all(h["probability"] >= 0.01 - 1e-9 for h in body["hits"])
    for params, status in [({"q": "x", "mode": "words"}, 422), ({"q": "x", "min_prob": 1}, 422),
                           ({"q": "-x"}, 400), ({"q": "x", "mode": "hybrid", "fusion": "a,b"}, 422),
                           ({"q": "x", "mode": "hybrid", "fusion": "0,0"}, 400)]:
        r = client.get("/search", params=params)
        assert r.status_code == status, (params, r.text)
        assert "Traceback" not in r.text and "/" not in r.json()["detail"].replace("/search", "")


@pytest.mark.needs("chromium")
def test_page_searches_by_words_and_keeps_only_good_matches(app, index, tmp_path):
    good = len(index.search(query="a red circle", k=24, min_prob=0.5).hits)
    errors, asked = [], []
    with serving(app) as url, browser_page(errors) as page:
        page.on("request", lambda r: asked.append(r.url) if "/search" in r.url else None)
        page.goto(url + "/", wait_until="load")
        page.wait_for_function("() => !document.getElementById('mode').hidden")
        page.check('input[name="mode"][value="keyword"]')
        page.fill("#query", "kettle")
        page.press("#query", "Enter")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('keyword search')")
        assert page.locator(".card mark").first.inner_text().lower() == "kettle"
        assert "KETTLE" in page.locator(".card .ocr").first.inner_text().upper()
        page.screenshot(path=str(tmp_path / "words.png"), full_page=True)
        page.check('input[name="mode"][value="vector"]')
        page.fill("#query", "a red circle")
        page.check("#good")  # submits: the switch asks for hits likely to be the match
        page.wait_for_function("() => location.search.includes('min_prob')")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('cut off')")
        probs = page.locator(".card .prob").all_inner_texts()
        assert len(probs) == page.locator(".card").count() == good
        assert all(float(p.split()[1]) >= 0.5 for p in probs)
        page.screenshot(path=str(tmp_path / "good.png"), full_page=True)
    assert errors == []
    assert "mode=keyword" in asked[0] and "min_prob=0.5" in asked[-1]


def test_a_word_read_nearly_right_still_finds_its_picture(tmp_path):
    from crossalign.index.search import Index
    from crossalign.index.store import ImageRecord, IndexStore, write_version

    # what the reader made of some pictures
    read = ["THINNE SALE", "winner", "OPEN DAILY", "EXIT", "COFFEE MENU", "NO PARKING", "", None]
    records = [ImageRecord(i, f"/pictures/{i}.jpg", f"{i}.jpg", f"hash{i}", ocr=w)
               for i, w in enumerate(read)]
    info = {"dim": 8, "run": "run", "weights_hash": "w", "ocr": True}
    write_version(tmp_path, info, [], records, np.eye(len(read), 8, dtype=np.float32),
                  np.zeros((0, 8), np.float32), "flat")
    ix = Index(IndexStore(tmp_path))
    try:
        hits = ix.search(query="thinner", mode="keyword", k=4).hits
        assert [h.name for h in hits][:2] == ["0.jpg", "1.jpg"]  # most trigrams shared first
        assert ["SALE", True] in ix.search(query="sale", mode="keyword", k=4).hits[0].snippet
        # a word to leave out is a rule trigrams cannot keep: only whole words match then
        assert ix.search(query="thinner -sale", mode="keyword", k=4).hits == []
    finally:
        ix.close()


def test_a_run_that_trained_on_its_validation_pairs_is_not_calibrated(tmp_path, run, data):
    """Pairs the weights learned from would make the sets far too narrow (bench/RESULTS.md:
    90 % sets held 59 % of the matches), so such a run's index says why it has no calibration."""
    import yaml

    refit = tmp_path / "refit"
    shutil.copytree(run, refit)
    cfg = yaml.safe_load((refit / "config.yaml").read_text())
    cfg["train"].update(fit_on="train+val", keep="last", early_stopping=False)
    (refit / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = build_index(refit, tmp_path / "idx", data=data, split="test", progress=False)
    assert "trained on its validation pairs" in summary.calibration
    ix = open_index(tmp_path / "idx", refit)
    try:
        with pytest.raises(ConfigError, match="--no-refit"):
            ix.search(query="a red circle", coverage=0.9)
    finally:
        ix.close()
