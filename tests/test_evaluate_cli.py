"""``crossalign evaluate`` end to end: every metric, chance, --gap, --split all, the matrix and lists."""

import json

import numpy as np
import pytest

from crossalign.cli.main import main

KEYS = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_median_rank",
        "i2t_median_rank", "n_images", "n_captions", "t2i_mrr", "i2t_mrr", "t2i_mean_rank", "i2t_mean_rank",
        "t2i_top1", "i2t_top1", "rsum")


@pytest.fixture(scope="module")
def run(tmp_path_factory, shapes_dir):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    code = main(["-q", "train", "--data", str(shapes_dir), "--out", str(out),
                 "--set", "train.epochs=2", "--set", "train.batch_size=64"])
    assert code == 0
    return out


def _evaluate(run, shapes_dir, tmp_path, *extra):
    out = tmp_path / "m.json"
    code = main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--json", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_test_split_keys_and_chance(run, shapes_dir, tmp_path, capsys):
    m = _evaluate(run, shapes_dir, tmp_path, "--split", "test")
    for key in KEYS:
        assert key in m, key
    assert m["n_images"] == 6 and m["n_captions"] == 30
    assert m["t2i_top1"] == m["t2i_R@1"] and m["i2t_top1"] == m["i2t_R@1"]
    assert m["rsum"] == pytest.approx(sum(m[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)))
    # chance for 6 images with 5 captions each
    assert m["chance"]["t2i_R@1"] == pytest.approx(100 / 6)
    assert m["chance"]["t2i_median_rank"] == 3.5
    assert m["chance"]["i2t_R@1"] == pytest.approx(100 * 5 / 30)
    printed = capsys.readouterr().out
    assert "chance" in printed and "MRR" in printed and "rsum" in printed


def test_matrix_and_lists_agree_with_the_metrics(run, shapes_dir, tmp_path):
    mat, lists = tmp_path / "d.npy", tmp_path / "l.npz"
    m = _evaluate(run, shapes_dir, tmp_path, "--split", "all", "--matrix", str(mat), "--lists", str(lists),
                  "--lists-k", "3", "--k", "1,2")
    assert m["n_images"] == 60 and m["n_captions"] == 300 and "t2i_R@2" in m
    d = np.load(mat)
    names = json.loads(mat.with_suffix(".json").read_text())
    assert d.shape == (60, 300) and len(names["image_ids"]) == 60
    t2i = np.array(names["caption_image"])
    sim = 1 - d.astype(np.float64)  # [images, captions]
    t_ranks = np.array([np.sum(sim[:, c] >= sim[t2i[c], c]) for c in range(300)])
    assert m["t2i_R@1"] == pytest.approx(100 * np.mean(t_ranks == 1))
    assert m["t2i_mrr"] == pytest.approx(np.mean(1 / t_ranks), abs=1e-3)
    z = np.load(lists)
    np.testing.assert_array_equal(z["caption_image"], t2i)
    assert z["t2i_topk"].shape == (300, 3) and z["i2t_topk"].shape == (60, 3)
    assert m["i2t_mean_rank"] == pytest.approx(z["i2t_ranks"].mean())
    np.testing.assert_array_equal(z["t2i_topk"][:, 0], sim.argmax(0))
    # --split all leaves no training query outside for a bank: ranked by plain cosine, and so labelled
    assert str(z["ranking"]) == "plain" and str(z["score_kind"]) == "cosine similarity"
    np.testing.assert_array_equal(z["t2i_topk_scores"], z["t2i_topk_cosine"])


@pytest.mark.parametrize("ranking", ["qbnorm", "plain"])
def test_lists_say_what_their_scores_are(run, shapes_dir, tmp_path, ranking):
    mat, lists = tmp_path / "d.npy", tmp_path / "l.npz"
    m = _evaluate(run, shapes_dir, tmp_path, "--split", "test", "--matrix", str(mat), "--lists", str(lists),
                  "--lists-k", "4", "--ranking", ranking, "--qb-beta", "15")
    z = np.load(lists)  # allow_pickle=False: every field, the labels too, is a plain array
    assert str(z["ranking"]) == ranking == m["ranking"]["name"]
    described = json.loads(str(z["ranking_json"]))
    assert described == json.loads(json.dumps(m["ranking"], sort_keys=True))
    sim = 1 - np.load(mat).astype(np.float64)  # [images, captions] cosine
    for d, cos in (("t2i", sim.T), ("i2t", sim)):
        np.testing.assert_allclose(z[f"{d}_topk_cosine"], np.take_along_axis(cos, z[f"{d}_topk"], 1),
                                   atol=1e-3)
    if ranking == "qbnorm":
        assert described["beta"] == 15 and described["k"] == 1 and described["bank"]["images"] == 48
        assert "not a cosine" in str(z["score_kind"])
        assert np.abs(z["t2i_topk_scores"] - z["t2i_topk_cosine"]).max() > 1.0
    else:
        assert str(z["score_kind"]) == "cosine similarity"
        np.testing.assert_array_equal(z["i2t_topk_scores"], z["i2t_topk_cosine"])


def test_gap_scores_seen_and_unseen_apart(run, shapes_dir, tmp_path, capsys):
    m = _evaluate(run, shapes_dir, tmp_path, "--split", "test", "--gap")
    for part in ("seen", "unseen"):
        for key in KEYS:
            assert key in m[part], (part, key)
    # the seen sample is drawn to the unseen size, so the numbers are comparable
    assert m["seen"]["n_images"] == m["unseen"]["n_images"] == 6
    assert m["seen"]["split"] == "train" and m["unseen"]["split"] == "test"
    assert m["gap_protocol"]["seen_images_available"] == 48 and m["gap_protocol"]["sampling"] == "match"
    assert m["gap"]["t2i_R@1"] == pytest.approx(m["seen"]["t2i_R@1"] - m["unseen"]["t2i_R@1"])
    assert "generalization gap" in capsys.readouterr().out
    full = _evaluate(run, shapes_dir, tmp_path, "--split", "all", "--gap", "--seen", "all")
    assert full["seen"]["n_images"] == 48 and full["unseen"]["n_images"] == 12
    assert full["unseen"]["split"] == "test,val"


def test_bad_requests_exit_2_with_a_message(run, shapes_dir, tmp_path, capsys, monkeypatch):
    base = ["-q", "evaluate", str(run), "--data", str(shapes_dir)]
    assert main(base + ["--split", "nope"]) == 2
    assert "'nope' split has no rows" in capsys.readouterr().err
    assert main(base + ["--split", "train", "--gap"]) == 2
    assert "held-out" in capsys.readouterr().err
    from crossalign.evaluate import run as run_mod

    monkeypatch.setattr(run_mod, "MATRIX_MAX_CELLS", 100)
    assert main(base + ["--matrix", str(tmp_path / "x.npy")]) == 2
    assert "distance-matrix limit" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_data_defaults_to_the_one_the_run_trained_on(run, shapes_dir, tmp_path):
    given = _evaluate(run, shapes_dir, tmp_path, "--split", "test")
    out = tmp_path / "default.json"
    assert main(["-q", "evaluate", str(run), "--split", "test", "--json", str(out)]) == 0
    recorded = json.loads(out.read_text())
    for key in KEYS:  # the same data, model and split: the same computation, bit for bit
        assert recorded[key] == given[key], key
