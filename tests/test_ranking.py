"""Query-bank normalisation (dynamic inverted softmax) against the paper's full-matrix formula."""

import numpy as np
import pytest
import torch

from crossalign.evaluate.ranking import QBNormParams, fit_bank, qbnorm_blocks, qbnorm_reference
from crossalign.evaluate.retrieval import retrieve, topk


def _unit(rng, n, dim=8):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _blocked(queries, gallery, bank, beta, k, max_bytes):
    out = np.zeros((len(queries), len(gallery)), np.float64)
    for s, e, block in qbnorm_blocks(queries, gallery, bank, QBNormParams(beta, k), max_bytes=max_bytes):
        assert block.shape == (e - s, len(gallery))
        out[s:e] = block.numpy()
    return out


@pytest.mark.parametrize("beta,k", [(20.0, 1), (5.0, 3), (50.0, 2)])
@pytest.mark.parametrize("max_bytes", [1, 400, 10**9])  # one row per block, a few rows, everything
def test_blocks_equal_the_log_of_the_reference(beta, k, max_bytes):
    rng = np.random.default_rng(int(beta) + k)
    q, g, b = _unit(rng, 23), _unit(rng, 17), _unit(rng, 41)
    ref = np.log(qbnorm_reference(q, g, b, beta, k))
    got = _blocked(q, g, b, beta, k, max_bytes)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_fit_bank_is_the_same_in_any_block_size():
    rng = np.random.default_rng(3)
    g, b = _unit(rng, 30), _unit(rng, 200)
    whole = fit_bank(g, b, QBNormParams(20.0, 2), max_bytes=10**9)
    tiny = fit_bank(g, b, QBNormParams(20.0, 2), max_bytes=1)
    torch.testing.assert_close(whole.log_norm, tiny.log_norm)
    assert torch.equal(whole.active, tiny.active)
    # the activation set is exactly the gallery items in some bank query's top 2
    sims = b @ g.T
    expected = np.zeros(30, bool)
    expected[np.argsort(-sims, axis=1)[:, :2].ravel()] = True
    np.testing.assert_array_equal(whole.active.numpy(), expected)
    np.testing.assert_allclose(whole.log_norm.numpy(), np.log(np.exp(20.0 * sims.astype(np.float64)).sum(0)),
                               rtol=1e-5)


def test_rows_outside_the_activation_set_keep_the_cosine_order():
    rng = np.random.default_rng(4)
    q, g, b = _unit(rng, 40), _unit(rng, 25), _unit(rng, 6)  # a small bank activates few items
    norm = fit_bank(g, b, QBNormParams(20.0, 1))
    sim = torch.from_numpy(q @ g.T)
    scores = norm(sim.clone())
    kept = ~norm.active[sim.argmax(1)]
    assert 0 < int(kept.sum()) < len(q)  # both kinds of rows occur
    torch.testing.assert_close(scores[kept], 20.0 * sim[kept])
    torch.testing.assert_close(scores[~kept], 20.0 * sim[~kept] - norm.log_norm)


def test_huge_beta_stays_finite():
    rng = np.random.default_rng(5)
    q, g, b = _unit(rng, 10), _unit(rng, 12), _unit(rng, 30)
    got = _blocked(q, g, b, 5000.0, 1, 10**9)
    assert np.isfinite(got).all()


def _brute_ranks(scores, t2i):
    """t2i ranks from a [captions, images] score matrix and i2t from [images, captions], ties against."""
    t_scores, i_scores = scores
    t_rank = np.array([np.sum(row >= row[t2i[c]]) for c, row in enumerate(t_scores)])
    i_rank = []
    for i, row in enumerate(i_scores):
        best = row[t2i == i].max()
        i_rank.append(np.sum(row[t2i != i] >= best) + 1)
    return t_rank, np.array(i_rank)


def test_ranks_under_qbnorm_match_a_brute_force_reference():
    rng = np.random.default_rng(6)
    img, bank_img = _unit(rng, 15), _unit(rng, 50)
    t2i = np.repeat(np.arange(15), 3)
    txt = img[t2i] + 0.9 * _unit(rng, 45)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    bank_txt = _unit(rng, 150)
    params = QBNormParams(20.0, 1)
    res = retrieve(img, txt, t2i, k=4, max_bytes=500, t2i_scores=fit_bank(img, bank_txt, params),
                   i2t_scores=fit_bank(txt, bank_img, params))
    ref_t = np.log(qbnorm_reference(txt, img, bank_txt, 20.0, 1))  # [captions, images]
    ref_i = np.log(qbnorm_reference(img, txt, bank_img, 20.0, 1))  # [images, captions]
    t_rank, i_rank = _brute_ranks((ref_t, ref_i), t2i)
    np.testing.assert_array_equal(res.t2i_ranks, t_rank)
    np.testing.assert_array_equal(res.i2t_ranks, i_rank)
    np.testing.assert_array_equal(res.t2i.indices[:, 0], ref_t.argmax(1))
    # the same ranking is available to search through topk
    top = topk(txt, img, 4, scores=fit_bank(img, bank_txt, params))
    np.testing.assert_array_equal(top.indices, res.t2i.indices)


def test_top_lists_say_which_ranking_made_their_scores_and_keep_the_cosine():
    rng = np.random.default_rng(8)
    img, txt, bank = _unit(rng, 15), _unit(rng, 40), _unit(rng, 60)
    sim = txt @ img.T  # [captions, images]
    normed = topk(txt, img, 5, max_bytes=300, scores=fit_bank(img, bank, QBNormParams(20.0, 1)))
    assert normed.ranking == "qbnorm"
    cos = np.take_along_axis(sim, normed.indices, axis=1)  # the true cosine of each listed pair
    np.testing.assert_allclose(normed.cosine, cos, atol=1e-5)
    assert np.abs(normed.scores - cos).max() > 1.0  # qbnorm scores are not cosines
    plain = topk(txt, img, 5, max_bytes=300)
    assert plain.ranking == "plain"
    np.testing.assert_allclose(plain.cosine, np.take_along_axis(sim, plain.indices, axis=1), atol=1e-5)
    np.testing.assert_array_equal(plain.scores, plain.cosine)
    assert topk(txt, img, 2, scores=lambda s: s * 2).ranking == "custom"


def test_a_hub_is_pushed_down():
    """A gallery item close to every bank query stops winning queries that belong elsewhere."""
    rng = np.random.default_rng(7)
    dim = 16
    hub = np.ones(dim, np.float32) / np.sqrt(dim)
    others = _unit(rng, 9, dim)
    gallery = np.vstack([hub, others])  # item 0 is the hub
    # each query is its own item plus a pull towards the hub direction
    queries = others + 1.5 * hub
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    bank = np.vstack([others + 1.5 * hub, hub + 0.1 * _unit(rng, 40, dim)])
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    t2i = np.arange(1, 10)
    plain = retrieve(gallery, queries, None, k=1).t2i
    normed = retrieve(gallery, queries, None, k=1, t2i_scores=fit_bank(gallery, bank)).t2i
    assert (plain.indices[:, 0] == 0).all()  # plain cosine: the hub wins every query
    assert (normed.indices[:, 0] == t2i).sum() > (plain.indices[:, 0] == t2i).sum()


@pytest.mark.parametrize("beta,k", [(0.0, 1), (-1.0, 1), (float("nan"), 1), (20.0, 0), (20.0, 1.5)])
def test_bad_parameters_are_refused(beta, k):
    with pytest.raises(ValueError, match="qbnorm"):
        QBNormParams(beta, k)


def test_empty_bank_and_width_mismatch_are_refused():
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="non-empty query bank"):
        fit_bank(_unit(rng, 4), np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="width"):
        fit_bank(_unit(rng, 4), _unit(rng, 4, dim=6))
    norm = fit_bank(_unit(rng, 4), _unit(rng, 5))
    with pytest.raises(ValueError, match="gallery columns"):
        norm(torch.zeros(2, 3))
