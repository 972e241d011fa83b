"""Captions from the aligned space: the consensus rule by hand, the scores against pycocoevalcap,
the pool kept apart from the scored split, bad input named, and the command end to end."""

import json

import numpy as np
import pytest

from crossalign.caption import nearest as caption
from crossalign.caption.nearest import CaptionPool, Ngrams, choose, consensus, tokenize
from crossalign.cli.main import main
from crossalign.errors import ConfigError, CrossalignError, DataError


def test_words_are_lowercased_runs_of_letters_and_digits():
    assert tokenize("A Dog's ball, RED!  2 cats.") == ["a", "dog", "s", "ball", "red", "2", "cats"]
    assert tokenize(" .,; ") == []


def test_consensus_is_the_mean_similarity_to_the_others():
    sim = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
    np.testing.assert_allclose(consensus(sim), [0.3, 0.4, 0.2], atol=1e-6)
    np.testing.assert_allclose(consensus(sim, top_m=1), [0.5, 0.5, 0.3], atol=1e-6)
    np.testing.assert_allclose(consensus(np.ones((1, 1))), [0.0])


def test_ngram_similarity_is_the_mean_of_the_cosines_over_n():
    g = Ngrams.build(["a dog runs on grass", "a dog runs on grass", "red car", "blue car", "a cat"])
    sim = g.similarity(np.arange(5))
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-6)  # the same caption: every n agrees
    assert sim[0, 2] == pytest.approx(0.0, abs=1e-6)  # no shared word
    assert sim[2, 2] == pytest.approx(0.5, abs=1e-6)  # two words: only n = 1 and 2 exist, of 4
    assert 0.0 < sim[2, 3] < sim[2, 2]  # "car" shared, nothing longer


def test_the_candidate_most_like_the_others_wins():
    texts = ["a dog runs on the grass", "a brown dog runs on the grass", "the dog runs on the grass",
             "a red car parked on a street", "two people sit at a table"]
    sim = Ngrams.build(texts).similarity(np.arange(len(texts)))
    order = np.argsort(-consensus(sim))
    assert set(order[:3]) == {0, 1, 2} and texts[order[0]] == "a dog runs on the grass"


def _hand_pool() -> CaptionPool:
    """Three pool images on the axes, two captions each; a caption's vector leans to its image."""
    captions = ["a dog on grass", "a dog runs on grass", "a red car", "a car on a road", "a cat", "a cat sleeps"]
    image_emb = np.eye(3, dtype=np.float32)
    text_emb = np.repeat(image_emb, 2, axis=0) * 0.9 + 0.1
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    return CaptionPool(captions, text_emb, Ngrams.build(captions), "hand", image_emb,
                       np.array([0, 0, 1, 1, 2, 2]), ["i0", "i1", "i2"])


def test_candidates_come_from_the_nearest_images_and_the_query_can_be_left_out():
    pool = _hand_pool()
    query = np.array([[0.9, 0.3, 0.0]], np.float32)
    near = choose(pool, query, k=5, neighbours=1)[0]
    assert {p.caption for p in near} == {"a dog on grass", "a dog runs on grass"}
    left_out = choose(pool, query, k=5, neighbours=1, exclude=[0])[0]  # image 0 is the query itself
    assert {p.caption for p in left_out} == {"a red car", "a car on a road"}


def test_weight_one_ranks_by_cosine_and_proposals_are_distinct():
    pool = _hand_pool()
    pool.captions[1] = "A dog on grass."  # the same words as caption 0
    pool.ngrams = Ngrams.build(pool.captions)
    props = choose(pool, np.array([[0.2, 0.1, 0.95]], np.float32), k=6, neighbours=3, weight=1.0)[0]
    assert {p.caption for p in props[:2]} == {"a cat", "a cat sleeps"}
    assert len(props) == 5  # the two spellings of "a dog on grass" count once
    assert all(p.score == pytest.approx(p.cosine, abs=1e-6) for p in props)


def test_a_text_pool_takes_the_nearest_captions():
    pool = _hand_pool()
    pool.image_emb = pool.caption_image = pool.image_paths = None
    props = choose(pool, np.array([[0.0, 1.0, 0.0]], np.float32), k=5, neighbours=2)[0]
    assert {p.caption for p in props} == {"a red car", "a car on a road"}


def test_scores_equal_pycocoevalcap_on_a_hand_example():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    refs = {"1": ["A dog runs on the grass.", "The brown dog is running!"],
            "2": ["Two people sit at a table .", "People, eating at a table"],
            "3": ["A red car on a street", "a car parked in the road"]}
    hyps = {"1": "A dog is running on grass", "2": "two people eat at a table", "3": "A car on the road."}
    got = caption.caption_scores(refs, hyps)
    gts = {"1": ["a dog runs on the grass", "the brown dog is running"],
           "2": ["two people sit at a table", "people eating at a table"],
           "3": ["a red car on a street", "a car parked in the road"]}
    res = {"1": ["a dog is running on grass"], "2": ["two people eat at a table"], "3": ["a car on the road"]}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    for n in range(4):
        assert got[f"BLEU-{n + 1}"] == pytest.approx(bleu[n], abs=1e-9)
    assert got["CIDEr"] == pytest.approx(cider, abs=1e-9)
    assert 0.0 < got["BLEU-4"] < got["BLEU-1"] <= 1.0


def test_scores_refuse_images_without_a_caption():
    with pytest.raises(DataError):
        caption.caption_scores({"1": ["a dog"]}, {"2": "a dog"})
    with pytest.raises(DataError, match="'1'"):
        caption.caption_scores({"1": ["..."]}, {"1": "a dog"})


def test_caption_files_are_checked_and_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.txt"):
        caption.read_caption_file(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a dog\nfine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad\.txt:3"):
        caption.read_caption_file(bad)
    with pytest.raises(CrossalignError, match="missing.txt"):
        caption.read_caption_file(tmp_path / "missing.txt")
    good = tmp_path / "good.txt"
    good.write_text("\ufeffa dog\n\n a cat \n", encoding="utf-8")
    assert caption.read_caption_file(good) == ["a dog", "a cat"]


def test_the_command_line_defaults_are_the_library_defaults():
    from crossalign.cli import caption as cli

    assert (cli.DEFAULT_NEIGHBOURS, cli.DEFAULT_WEIGHT, cli.DEFAULT_TOP_M) == \
        (caption.DEFAULT_NEIGHBOURS, caption.DEFAULT_WEIGHT, caption.DEFAULT_TOP_M)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shapes_dir):
    out = tmp_path_factory.mktemp("caption") / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(out),
                 "--set", "train.epochs=2", "--set", "train.batch_size=64"]) == 0
    return out


def _split_rows(run, shapes_dir, split):
    from crossalign.runs import open_run

    rd = open_run(run, shapes_dir, quiet=True)
    return rd, rd.table.select(split)


def test_the_pool_is_the_train_split_and_never_the_scored_one(run, shapes_dir):
    rd, train = _split_rows(run, shapes_dir, "train")
    pool = caption.pool_from_split(rd, "train")
    assert sorted(pool.captions) == sorted(train.caption)
    assert set(pool.image_paths) == set(train.image_path)
    r = caption.score_split(run, shapes_dir, "test", neighbours=3)
    assert r["n_pool_captions"] == len(train) and "train split" in r["pool"]
    assert r["n_images"] == len(set(rd.table.select("test").image_id))
    for split, pool_split in (("test", "test"), ("test,train", "train"), ("all", "train"), ("test", "all")):
        with pytest.raises(ConfigError, match="split"):
            caption.score_split(run, shapes_dir, split, pool_split)


def test_a_pool_image_is_left_out_of_its_own_neighbours(run, shapes_dir, tmp_path):
    import shutil

    rd, train = _split_rows(run, shapes_dir, "train")
    path = train.image_path[0]
    own = {c for i, c in zip(train.image_path, train.caption) if i == path}
    others = {c for i, c in zip(train.image_path, train.caption) if i != path}
    props = caption.propose(run, [path], data=shapes_dir, k=50, neighbours=1)[0]
    assert {p.caption for p in props} <= others
    copy = tmp_path / "copy.png"  # the same pixels under another name: its nearest image is itself
    shutil.copy(path, copy)
    props = caption.propose(run, [copy], data=shapes_dir, k=50, neighbours=1)[0]
    assert {p.caption for p in props} == own


def test_command_proposes_captions_from_the_data_and_from_a_file(run, shapes_dir, tmp_path, capsys):
    image = str(_split_rows(run, shapes_dir, "test")[1].image_path[0])
    out = tmp_path / "p.json"
    assert main(["-q", "caption", str(run), "--image", image, "--image", image, "--data", str(shapes_dir),
                 "--k", "3", "--neighbours", "4", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [i["image"] for i in got["images"]] == [image, image]
    props = got["images"][0]["proposals"]
    assert 1 <= len(props) <= 3 and props == got["images"][1]["proposals"]
    assert [p["score"] for p in props] == sorted((p["score"] for p in props), reverse=True)
    assert props[0]["caption"] in capsys.readouterr().out
    pool = tmp_path / "pool.txt"
    pool.write_text("a red circle\na blue square\na green star on grass\n", encoding="utf-8")
    assert main(["-q", "caption", str(run), "--image", image, "--captions", str(pool), "--k", "5",
                 "--json", str(out)]) == 0
    props = json.loads(out.read_text())["images"][0]["proposals"]
    assert {p["caption"] for p in props} == set(pool.read_text().splitlines())


def test_command_scores_a_split(run, shapes_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["-q", "caption", str(run), "--data", str(shapes_dir), "--score", "--neighbours", "3",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["split"] == "test"
    for key in ("consensus", "nearest_caption"):
        assert set(got[key]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}
        assert 0.0 <= got[key]["BLEU-4"] <= got[key]["BLEU-1"] <= 1.0
    printed = capsys.readouterr().out
    assert "nearest caption" in printed and "CIDEr" in printed


def test_command_names_bad_input(run, shapes_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere.png"
    assert main(["-q", "caption", str(run), "--image", str(missing), "--data", str(shapes_dir)]) == 2
    assert "nowhere.png" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    image = str(_split_rows(run, shapes_dir, "test")[1].image_path[0])
    assert main(["-q", "caption", str(run), "--image", image, "--captions", str(empty)]) == 2
    assert "empty.txt" in capsys.readouterr().err
    for extra in ([], ["--image", image, "--score"], ["--image", image, "--neighbours", "0"],
                  ["--image", image, "--weight", "1.5"], ["--score", "--captions", str(empty)],
                  ["--image", image, "--captions", str(empty), "--data", str(shapes_dir)]):
        assert main(["-q", "caption", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("crossalign caption: error:") and len(err.strip().splitlines()) == 1
