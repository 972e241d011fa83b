"""Recall@K and ranks against a brute-force count, several captions per image."""

import numpy as np
import pytest

from crossalign.evaluate.retrieval import retrieval_metrics


def brute_force(img, txt, t2i, ks=(1, 5, 10)):
    sim = txt @ img.T  # [captions, images]
    n_img = img.shape[0]
    t_ranks = []
    for c in range(txt.shape[0]):
        order = sorted(range(n_img), key=lambda j: -sim[c, j])
        t_ranks.append(order.index(t2i[c]) + 1)
    i_ranks = []
    for i in range(n_img):
        order = sorted(range(txt.shape[0]), key=lambda c: -sim[c, i])
        i_ranks.append(min(order.index(c) + 1 for c in range(txt.shape[0]) if t2i[c] == i))
    out = {}
    for k in ks:
        out[f"t2i_R@{k}"] = 100 * np.mean(np.array(t_ranks) <= k)
        out[f"i2t_R@{k}"] = 100 * np.mean(np.array(i_ranks) <= k)
    out["t2i_median_rank"] = float(np.median(t_ranks))
    out["i2t_median_rank"] = float(np.median(i_ranks))
    return out


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_uneven_captions_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_img = 23
    t2i = np.concatenate([np.full(rng.integers(1, 6), i) for i in range(n_img)])
    img = _unit(rng.normal(size=(n_img, 8))).astype(np.float32)
    txt = _unit(img[t2i] + rng.normal(scale=1.0, size=(len(t2i), 8))).astype(np.float32)
    got = retrieval_metrics(img, txt, t2i)
    want = brute_force(img.astype(np.float64), txt.astype(np.float64), t2i)
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k
    assert got["n_images"] == n_img and got["n_captions"] == len(t2i)


def test_hand_made_case():
    # 3 images on the axes; image 0 has 2 captions, one wrong, one right
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[0.2, 0.9, 0.1], [1, 0, 0], [0, 0.8, 0.6], [0, 0, 1]], dtype=np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    t2i = np.array([0, 0, 1, 2])
    m = retrieval_metrics(img, txt, t2i, ks=(1, 2))
    # captions: rank of own image = 2, 1, 1, 1
    assert m["t2i_R@1"] == pytest.approx(75.0)
    assert m["t2i_R@2"] == pytest.approx(100.0)
    assert m["t2i_median_rank"] == 1.0
    # image 0: best caption (row 1) ranks 1st; image 1: caption 0 scores 0.97 > 0.8 -> rank 2; image 2: rank 1
    assert m["i2t_R@1"] == pytest.approx(200 / 3)
    assert m["i2t_median_rank"] == 1.0
    assert m["t2i_mrr"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_constant_embeddings_are_not_rewarded_by_ties():
    img = np.ones((10, 4), np.float32) / 2
    txt = np.ones((10, 4), np.float32) / 2
    m = retrieval_metrics(img, txt, np.arange(10))
    assert m["t2i_R@1"] == 0.0 and m["i2t_R@1"] == 0.0


# ---- ties, blocks, top-K lists, the distance matrix, chance levels ----

import itertools

from crossalign.evaluate.chance import chance_metrics, rank_distribution
from crossalign.evaluate.retrieval import (block_rows, rank_summary, ranks_i2t, ranks_t2i, retrieve, topk,
                                           write_distance_matrix)


def brute_ranks_ties_against(img, txt, t2i):
    """Ranks from the full matrix, a tie between a correct and a wrong item going to the wrong one."""
    sim = txt @ img.T  # [captions, images]
    t = np.array([np.sum(sim[c] >= sim[c, t2i[c]]) for c in range(len(t2i))])
    i = []
    for im in range(img.shape[0]):
        pos = t2i == im
        best = sim[pos, im].max()
        i.append(1 + np.sum(sim[~pos, im] >= best))
    return t, np.array(i)


def _uneven(rng, n_img, max_caps=5, shuffle=True):
    t2i = np.concatenate([np.full(rng.integers(1, max_caps + 1), i) for i in range(n_img)])
    return rng.permutation(t2i) if shuffle else t2i


@pytest.mark.parametrize("max_bytes", [1, 200, 10**9])
def test_blocks_of_any_size_match_brute_force_with_ties(max_bytes):
    rng = np.random.default_rng(5)
    n_img = 17
    t2i = _uneven(rng, n_img)  # captions not grouped by image
    # small integer vectors: scores are exact integers, so many exact ties
    img = rng.integers(-1, 2, size=(n_img, 3)).astype(np.float32)
    txt = rng.integers(-1, 2, size=(len(t2i), 3)).astype(np.float32)
    want_t, want_i = brute_ranks_ties_against(img.astype(np.float64), txt.astype(np.float64), t2i)
    np.testing.assert_array_equal(ranks_t2i(img, txt, t2i, max_bytes=max_bytes), want_t)
    np.testing.assert_array_equal(ranks_i2t(img, txt, t2i, max_bytes=max_bytes), want_i)
    res = retrieve(img, txt, t2i, k=0, max_bytes=max_bytes)
    np.testing.assert_array_equal(res.t2i_ranks, want_t)
    np.testing.assert_array_equal(res.i2t_ranks, want_i)


def test_galleries_wider_than_a_counting_group_match_brute_force():
    # more than 255 images and captions: row counts are summed in groups of 255
    rng = np.random.default_rng(8)
    n_img = 301
    t2i = _uneven(rng, n_img, 3)
    img = rng.integers(-2, 3, size=(n_img, 4)).astype(np.float32)
    txt = (img[t2i] + rng.integers(-2, 3, size=(len(t2i), 4))).astype(np.float32)
    want_t, want_i = brute_ranks_ties_against(img.astype(np.float64), txt.astype(np.float64), t2i)
    np.testing.assert_array_equal(ranks_t2i(img, txt, t2i, max_bytes=10**5), want_t)
    np.testing.assert_array_equal(ranks_i2t(img, txt, t2i, max_bytes=10**5), want_i)
    assert want_t.max() > 255 and want_i.max() > 255  # the counts cross a group boundary


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_all_metrics_match_brute_force_for_any_chunk(chunk):
    rng = np.random.default_rng(11)
    n_img = 31
    t2i = _uneven(rng, n_img, 7)
    img = _unit(rng.normal(size=(n_img, 16))).astype(np.float32)
    txt = _unit(img[t2i] + rng.normal(scale=0.8, size=(len(t2i), 16))).astype(np.float32)
    t = ranks_t2i(img, txt, t2i, chunk)
    i = ranks_i2t(img, txt, t2i, chunk)
    want_t, want_i = brute_ranks_ties_against(img.astype(np.float64), txt.astype(np.float64), t2i)
    np.testing.assert_array_equal(t, want_t)
    np.testing.assert_array_equal(i, want_i)
    m = retrieval_metrics(img, txt, t2i, ks=(1, 3, 10), max_bytes=4096)
    for d, r in (("t2i", want_t), ("i2t", want_i)):
        assert m[f"{d}_mrr"] == pytest.approx(np.mean(1 / r))
        assert m[f"{d}_mean_rank"] == pytest.approx(np.mean(r))
        assert m[f"{d}_median_rank"] == pytest.approx(np.median(r))
        assert m[f"{d}_top1"] == pytest.approx(100 * np.mean(r == 1))
        assert m[f"{d}_R@3"] == pytest.approx(100 * np.mean(r <= 3))
    assert m["rsum"] == pytest.approx(sum(m[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in (1, 3, 10)))


def test_hand_computed_mrr_and_median_rank():
    # 4 images on the axes of R^4; every caption is a hand-placed mix
    img = np.eye(4, dtype=np.float32)
    txt = np.array([
        [0.1, 0.9, 0.0, 0.0],  # caption 0 of image 0: image 1 scores higher -> rank 2
        [0.3, 0.2, 0.5, 0.4],  # caption 1 of image 0: images 2, 3 higher -> rank 3
        [0.0, 1.0, 0.0, 0.0],  # caption 2 of image 1: rank 1
        [0.2, 0.0, 0.3, 0.6],  # caption 3 of image 2: image 3 higher -> rank 2
        [0.0, 0.0, 0.0, 1.0],  # caption 4 of image 3: rank 1
    ], dtype=np.float32)
    t2i = np.array([0, 0, 1, 2, 3])
    m = retrieval_metrics(img, txt, t2i, ks=(1, 2))
    # t2i ranks 2, 3, 1, 2, 1
    assert m["t2i_median_rank"] == 2.0
    assert m["t2i_mean_rank"] == pytest.approx(9 / 5)
    assert m["t2i_mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 1 / 2 + 1) / 5)
    # i2t, column by column: image 0 scores captions .1 .3 0 .2 0 -> its best (.3) ranks 1
    # image 1: .9 .2 1 0 0 -> caption 2 ranks 1; image 2: 0 .5 0 .3 0 -> caption 1 (.5) beats its own .3 -> 2
    # image 3: 0 .4 0 .6 1 -> caption 4 ranks 1
    assert m["i2t_median_rank"] == 1.0
    assert m["i2t_mean_rank"] == pytest.approx(5 / 4)
    assert m["i2t_mrr"] == pytest.approx((1 + 1 + 1 / 2 + 1) / 4)
    assert m["i2t_R@1"] == pytest.approx(75.0) and m["i2t_top1"] == pytest.approx(75.0)
    assert m["rsum"] == pytest.approx(40 + 80 + 75 + 100)


def test_rank_summary_even_count_median():
    s = rank_summary(np.array([1, 2, 4, 7]), (1,), "x")
    assert s["x_median_rank"] == 3.0 and s["x_mean_rank"] == 3.5
    assert s["x_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 7) / 4)


def test_topk_lists_match_a_full_sort():
    rng = np.random.default_rng(2)
    img = _unit(rng.normal(size=(13, 8))).astype(np.float32)
    txt = _unit(rng.normal(size=(29, 8))).astype(np.float32)
    sim = txt @ img.T
    res = retrieve(img, txt, k=4, max_bytes=500)  # several blocks each way
    np.testing.assert_array_equal(res.t2i.indices, np.argsort(-sim, axis=1)[:, :4])
    np.testing.assert_array_equal(res.i2t.indices, np.argsort(-sim.T, axis=1)[:, :4])
    np.testing.assert_allclose(res.i2t.scores, -np.sort(-sim.T, axis=1)[:, :4], rtol=1e-5)
    assert res.t2i_ranks is None
    # k larger than the gallery is cut to the gallery
    assert topk(txt, img, k=50).indices.shape == (29, 13)


def test_topk_ranks_agree_with_ranks():
    rng = np.random.default_rng(4)
    t2i = _uneven(rng, 9)
    img = _unit(rng.normal(size=(9, 6))).astype(np.float32)
    txt = _unit(img[t2i] + rng.normal(size=(len(t2i), 6))).astype(np.float32)
    res = retrieve(img, txt, t2i, k=9)
    # where a caption's image is in its list, its position there is its rank
    for c, row in enumerate(res.t2i.indices):
        assert list(row).index(t2i[c]) + 1 == res.t2i_ranks[c]


def test_block_rows_respects_the_memory_bound():
    for n, budget in [(125_000, 256 * 2**20), (100, 10_000), (7, 10**9)]:
        rows = block_rows(n, budget)
        assert rows >= 1 and rows * n * 4 <= budget  # the float32 scores alone fit
    assert block_rows(10**9, 10) == 1  # never zero rows


def test_distance_matrix_file(tmp_path):
    rng = np.random.default_rng(0)
    img = _unit(rng.normal(size=(5, 4))).astype(np.float32)
    txt = _unit(rng.normal(size=(12, 4))).astype(np.float32)
    path = write_distance_matrix(tmp_path / "d.npy", img, txt, max_bytes=300)
    d = np.load(path)
    assert d.shape == (5, 12) and d.dtype == np.float32
    np.testing.assert_allclose(d, 1 - img @ txt.T, atol=1e-6)
    d16 = np.load(write_distance_matrix(tmp_path / "h.npy", img, txt, float16=True))
    assert d16.dtype == np.float16
    np.testing.assert_allclose(d16, d, atol=2e-3)
    with pytest.raises(ValueError, match="above the limit"):
        write_distance_matrix(tmp_path / "big.npy", img, txt, max_cells=59)
    assert not (tmp_path / "big.npy").exists()


def test_bad_inputs_are_refused_with_a_message():
    img = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((3, 3), np.nan, np.float32), img, [0, 1, 2])
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(img, img, [0, 0, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(img, img, [0, 1, 3])
    with pytest.raises(ValueError, match="entries"):
        retrieval_metrics(img, img, [0, 1])


def _enumerated_chance(n_img_caps):
    """Average metrics over every ordering of the captions (image queries) and images (caption queries)."""
    t2i = np.concatenate([np.full(m, i) for i, m in enumerate(n_img_caps)])
    n_img, n_cap = len(n_img_caps), len(t2i)
    i_ranks = []
    for perm in itertools.permutations(range(n_cap)):
        pos = np.empty(n_cap, int)
        pos[list(perm)] = np.arange(1, n_cap + 1)
        i_ranks.append([pos[t2i == i].min() for i in range(n_img)])
    return np.array(i_ranks).ravel(), np.arange(1, n_img + 1)


def test_chance_levels_are_exact_expectations():
    caps = [2, 1, 3]
    i_ranks, t_ranks = _enumerated_chance(caps)
    t2i = np.concatenate([np.full(m, i) for i, m in enumerate(caps)])
    c = chance_metrics(t2i, 3, ks=(1, 2))
    assert c["i2t_R@1"] == pytest.approx(100 * np.mean(i_ranks <= 1))
    assert c["i2t_R@2"] == pytest.approx(100 * np.mean(i_ranks <= 2))
    assert c["i2t_mean_rank"] == pytest.approx(np.mean(i_ranks))
    assert c["i2t_mrr"] == pytest.approx(np.mean(1 / i_ranks))
    assert c["t2i_mrr"] == pytest.approx(np.mean(1 / t_ranks))
    assert c["t2i_median_rank"] == 2.0 and c["t2i_mean_rank"] == pytest.approx(2.0)
    assert chance_metrics(np.arange(10), 10)["t2i_median_rank"] == 5.5
    assert rank_distribution(10, 3).sum() == pytest.approx(1.0)
