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
