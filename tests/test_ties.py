"""The comparisons of ``tests/_ties.py``: margins by hand, and the promise they rest on (a
clear query keeps its rank, a recall moves no more than its slack) over perturbed scores."""

import numpy as np
import pytest

from crossalign.evaluate.retrieval import ranks_i2t, ranks_t2i, retrieval_metrics

from _ties import assert_same_retrieval, clear_queries, margins, recall_slack


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_margins_by_hand():
    img = np.eye(3, dtype=np.float32)
    # caption 0 (image 0): scores 0.6, 0.8, 0 -> its image trails image 1 by 0.2
    # caption 1 (image 1): scores 0, 0.6, 0.8 -> trails image 2 by 0.2
    # caption 2 (image 1): scores 0.6, 0.62, 0.5 -> ahead of image 0 by 0.02
    txt = np.array([[0.6, 0.8, 0], [0, 0.6, 0.8], [0.6, 0.62, 0.5]], np.float32)
    t2i = np.array([0, 1, 1])
    t_margin, i_margin = margins((img, txt), t2i)
    np.testing.assert_allclose(t_margin, [0.2, 0.2, 0.02], atol=1e-6)
    # image 0: its caption scores 0.6, captions 1 and 2 score 0 and 0.6: a tie, margin 0;
    # image 1: its best caption 0.62 against caption 0's 0.8 (image 2 has no caption)
    np.testing.assert_allclose(i_margin[:2], [0.0, 0.18], atol=1e-6)
    t_clear, i_clear = clear_queries((img, txt), t2i, 0.009)
    assert t_clear.tolist() == [True, True, True] and i_clear[:2].tolist() == [False, True]
    assert not clear_queries((img, txt), t2i, 0.011)[0][2]  # 0.02 is not over twice 0.011


@pytest.mark.parametrize("seed", range(5))
def test_clear_ranks_hold_and_recalls_stay_within_their_slack(seed):
    rng = np.random.default_rng(seed)
    n_img = 12
    t2i = np.concatenate([np.arange(n_img), rng.integers(0, n_img, 24)])
    # coarse vectors: many scores tie exactly or nearly, as with tiny random towers
    img = _unit(rng.integers(-1, 2, size=(n_img, 4)) + 1e-3 * rng.normal(size=(n_img, 4)))
    txt = _unit(img[t2i] + rng.integers(-1, 2, size=(len(t2i), 4)) + 1e-3 * rng.normal(size=(len(t2i), 4)))
    tol = 1e-3
    for _ in range(20):  # other roundings of the same model: every score moves, by at most tol
        moved = (_unit(img + 5e-5 * rng.normal(size=img.shape)),
                 _unit(txt + 5e-5 * rng.normal(size=txt.shape)))
        assert_same_retrieval(moved, (img, txt), t2i, tol, min_clear=0.0)
        got, want = retrieval_metrics(*moved, t2i), retrieval_metrics(img, txt, t2i)
        for key, room in recall_slack((img, txt), t2i, tol).items():
            assert abs(got[key] - want[key]) <= room + 1e-9, key
    t_clear, i_clear = clear_queries((img, txt), t2i, tol)
    assert 0 < t_clear.mean() < 1 and 0 < i_clear.mean() <= 1  # both kinds were there to test


def test_scores_beyond_the_tolerance_and_too_few_clear_queries_fail():
    rng = np.random.default_rng(0)
    img = _unit(rng.normal(size=(6, 8)))
    txt = _unit(img + 0.3 * rng.normal(size=(6, 8)))
    t2i = np.arange(6)
    far = (_unit(img + 0.05 * rng.normal(size=img.shape)), txt)
    with pytest.raises(AssertionError, match="above the tolerance"):
        assert_same_retrieval(far, (img, txt), t2i, 1e-5)
    tied = np.repeat(img[:1], 6, axis=0)  # every image alike: each caption query is a tie
    with pytest.raises(AssertionError, match="clear of ties"):
        assert_same_retrieval((tied, txt), (tied, txt), t2i, 1e-5)
    assert (ranks_t2i(tied, txt, t2i) == 6).all() and ranks_i2t(tied, txt, t2i).min() >= 1
