"""Label agreement (``evaluate --label-column``): precision@K, R-precision, MAP@R and Jaccard@K
by hand, against pytorch-metric-learning, their chance levels, and end to end."""

import json

import numpy as np
import pytest

from crossalign.evaluate.labels import agreement_both, label_agreement, parse_classes


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_parse_classes():
    assert parse_classes("drama| crime |") == {"drama", "crime"}
    assert parse_classes(None) == frozenset() and parse_classes("") == frozenset()
    assert parse_classes(float("nan")) == frozenset()
    assert parse_classes(["a", "b|c"]) == {"a", "b", "c"} and parse_classes(1995) == {"1995"}


def test_by_hand():
    """One query over five items along a line: the ranking is items 0, 1, 2, 3, 4."""
    angles = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    items = _unit(np.stack([np.cos(angles), np.sin(angles)], 1))
    query = _unit([[1.0, 0.0]])
    item_sets = [parse_classes(v) for v in ("a", "b", "a|b", "c", "a")]
    m = label_agreement(query, items, [parse_classes("a")], item_sets, ks=(1, 2, 5))
    # relevant (share "a"): ranks 1, 3, 5 -> R = 3
    assert m["precision@1"] == 1.0 and m["precision@2"] == 0.5 and m["precision@5"] == pytest.approx(3 / 5)
    assert m["r_precision"] == pytest.approx(2 / 3)  # 2 relevant in the first 3
    assert m["map@r"] == pytest.approx((1 / 1 + 2 / 3) / 3)  # ranks 1 and 3 within R = 3
    # Jaccard of {a} with {a}, {b}: (1 + 0) / 2; over five: (1 + 0 + 1/2 + 0 + 1) / 5
    assert m["jaccard@2"] == pytest.approx(0.5) and m["jaccard@5"] == pytest.approx(2.5 / 5)
    assert m["chance"]["precision@1"] == pytest.approx(3 / 5) and m["mean_relevant"] == 3
    assert m["per_class"]["a"]["queries"] == 1 and m["queries_unlabelled"] == 0


def test_unlabelled_queries_are_left_out_and_unlabelled_items_never_match():
    rng = np.random.default_rng(0)
    q, it = _unit(rng.standard_normal((4, 8))), _unit(rng.standard_normal((6, 8)))
    qs = [parse_classes(v) for v in ("x", None, "y", "")]
    its = [parse_classes(v) for v in ("x", None, "y", "x", None, "y")]
    m = label_agreement(q, it, qs, its, ks=(6,))
    assert m["queries"] == 2 and m["queries_unlabelled"] == 2 and m["items_unlabelled"] == 2
    assert m["precision@6"] == pytest.approx(2 / 6)  # every ranking of 6 holds both of its 2 matches


def _clustered(rng, n, centres, spread=0.9):
    lab = rng.integers(0, len(centres), n)
    return _unit(centres[lab] + spread * rng.standard_normal((n, centres.shape[1]))), lab


def test_equal_to_pytorch_metric_learning():
    """Single-label figures equal AccuracyCalculator's on the same vectors (cross-modal: the
    reference set does not hold the queries). Continuous random vectors: no ties."""
    pytest.importorskip("pytorch_metric_learning")
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((5, 16))
    q, ql = _clustered(rng, 120, centres)
    r, rl = _clustered(rng, 300, centres)
    ours = label_agreement(q, r, [frozenset({str(v)}) for v in ql], [frozenset({str(v)}) for v in rl], ks=(1,))
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count")
    theirs = calc.get_accuracy(torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(r),
                               torch.from_numpy(rl), ref_includes_query=False)
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert 0.2 < ours["map@r"] < 1  # a real test: neither chance nor perfect
    assert ours["jaccard@1"] == pytest.approx(ours["precision@1"])  # one class each


def test_chance_is_what_random_rankings_score():
    """The chance levels are the mean of rankings in random order (many of them)."""
    rng = np.random.default_rng(2)
    n_q, n_i = 40, 30
    q, it = _unit(rng.standard_normal((n_q, 8))), _unit(rng.standard_normal((n_i, 8)))
    pool = ["a", "b", "c", "a|b", "c|d"]
    qs = [parse_classes(pool[i]) for i in rng.integers(0, len(pool), n_q)]
    its = [parse_classes(pool[i]) for i in rng.integers(0, len(pool), n_i)]
    import torch

    def shuffled(block):
        return torch.from_numpy(rng.random(tuple(block.shape)).astype(np.float32))

    runs = [label_agreement(q, it, qs, its, ks=(1, 5), scores_fn=shuffled) for _ in range(300)]
    chance = runs[0]["chance"]
    for key in ("precision@1", "precision@5", "r_precision", "map@r", "jaccard@5"):
        mean = np.mean([r[key] for r in runs])
        assert mean == pytest.approx(chance[key], abs=0.02), key


def test_both_directions_carry_the_image_label():
    rng = np.random.default_rng(3)
    img = _unit(rng.standard_normal((3, 4)))
    cap = _unit(np.repeat(img, 2, 0) + 0.01 * rng.standard_normal((6, 4)))
    out = agreement_both(img, cap, np.repeat(np.arange(3), 2), ["x", "y", "x"], ks=(1,))
    assert out["t2i"]["queries"] == 6 and out["i2t"]["queries"] == 3
    assert out["t2i"]["precision@1"] == 1.0 and out["i2t"]["precision@1"] == 1.0  # near-copies
    assert out["t2i"]["chance"]["precision@1"] == pytest.approx((4 * 2 / 3 + 2 * 1 / 3) / 6)


@pytest.fixture(scope="module")
def labelled(labelled_shapes):
    return labelled_shapes


def test_evaluate_label_column_end_to_end(labelled, tmp_path, capsys):
    from crossalign.cli.main import main

    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(labelled), "--out", str(run), "--set", "train.epochs=2",
                 "--set", "train.batch_size=64"]) == 0
    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", str(run), "--split", "all", "--label-column", "colour", "--gap",
                 "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    lab = m["labels"]
    assert lab["column"] == "colour" and lab["t2i"]["queries"] == 300 and lab["i2t"]["queries"] == 60
    for d in ("t2i", "i2t"):
        assert 0 <= lab[d]["precision@1"] <= 1 and 0 < lab[d]["chance"]["precision@1"] < 1
        assert lab[d]["per_class"] and sum(c["queries"] for c in lab[d]["per_class"].values()) == lab[d]["queries"]
    assert "labels" in m["seen"] and "labels" in m["unseen"]
    gap = m["gap"]["labels"]["t2i"]["precision@1"]
    assert gap == pytest.approx(m["seen"]["labels"]["t2i"]["precision@1"] - m["unseen"]["labels"]["t2i"]["precision@1"])
    printed = capsys.readouterr().out
    assert "label agreement by 'colour'" in printed and "MAP@R" in printed
    assert main(["-q", "evaluate", str(run), "--label-column", "genre"]) == 2
    err = capsys.readouterr().err
    assert "'genre'" in err and "no such column" in err and "colour" in err


def test_a_search_with_parameters_survives_faiss_torch_utils():
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces Index.search
    process-wide with a wrapper that takes no parameters; filtered searches must still work."""
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401

    from crossalign.index.recall import approximate_top

    rng = np.random.default_rng(0)
    vecs = _unit(rng.standard_normal((500, 8)))
    index = faiss.index_factory(8, "HNSW16", faiss.METRIC_INNER_PRODUCT)
    index.add(vecs)
    sel = faiss.IDSelectorBatch(np.arange(0, 500, 2, dtype=np.int64))
    params = faiss.SearchParametersHNSW(sel=sel, efSearch=64)
    rows, _ = approximate_top(index, vecs, vecs[:5], 5, 4, params)
    assert (rows % 2 == 0).all() and rows[0, 0] == 0
