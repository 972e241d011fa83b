"""The calibrated cut-off: conformal coverage, calibrated probabilities, monotone cut-offs, the
prior correction for collection size, the stored record, and too few queries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crossalign.errors import ConfigError
from crossalign.index import calibrate
from crossalign.index.calibrate import (CONFORMAL_SCORES, METHODS, Calibration, fit_calibration,
                                        query_stats, reference_rows)

N_GALLERY, DIM = 200, 32


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gallery() -> np.ndarray:
    """``[N_GALLERY, DIM]`` items crowded around one common direction, as real embeddings are."""
    rng = np.random.default_rng(0)
    return _unit(rng.standard_normal((N_GALLERY, DIM)) + _common()).astype(np.float32)


def _common() -> np.ndarray:
    return _unit(np.random.default_rng(99).standard_normal(DIM))


def _queries(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of random gallery items; each query leans on the common direction by its own
    amount, so its cosines to the whole gallery (mu, sigma) differ from query to query."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, N_GALLERY, n)
    a = rng.uniform(0.6, 1.6, (n, 1))
    b = rng.uniform(-1.0, 2.0, (n, 1))
    q = _unit(a * _gallery()[truth] + b * _common() + 0.3 * rng.standard_normal((n, DIM)))
    return q.astype(np.float32), truth


@pytest.fixture(scope="module")
def fits() -> dict[str, Calibration]:
    q, t = _queries(1000, seed=1)
    return {m: fit_calibration(q, _gallery(), t, method=m) for m in METHODS}


@pytest.fixture(scope="module")
def held_out():
    q, t = _queries(2000, seed=2)
    g = _gallery()
    mu, sigma = query_stats(q, g[reference_rows(len(g))])
    return q @ g.T, t, mu, sigma  # sim [2000, N_GALLERY]


def test_reference_rows_sorted_and_stable():
    assert reference_rows(5).tolist() == [0, 1, 2, 3, 4]
    rows = reference_rows(10_000, size=300, seed=3)
    assert rows.dtype == np.int64 and len(rows) == 300 and len(np.unique(rows)) == 300
    assert np.all(np.diff(rows) > 0) and np.array_equal(rows, reference_rows(10_000, 300, 3))


def test_query_stats_against_brute_force():
    q, _ = _queries(7, seed=5)
    ref = _gallery()[:50]
    mu, sigma = query_stats(q, ref)
    sim = (q @ ref.T).astype(np.float64)
    np.testing.assert_allclose(mu, sim.mean(1), atol=1e-6)
    np.testing.assert_allclose(sigma, sim.std(1), atol=1e-6)
    assert query_stats(q, np.repeat(ref[:1], 3, 0))[1].min() > 0  # all equal: floored, not 0


@pytest.fixture(scope="module")
def conformal_fits() -> dict[str, Calibration]:
    q, t = _queries(1000, seed=1)
    return {(m, c): fit_calibration(q, _gallery(), t, method=m, conformal=c)
            for m in ("logistic", "logistic-isotonic", "isotonic") for c in CONFORMAL_SCORES}


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_conformal_coverage_on_held_out_queries(conformal_fits, held_out, coverage):
    sim, t, mu, sigma = held_out
    true_cos = sim[np.arange(len(t)), t]
    for key, cal in conformal_fits.items():
        got = np.mean(true_cos >= cal.coverage_cosine(coverage, mu, sigma))
        # Coverage given one calibration set of n = 1000 is Beta-distributed with sd about
        # sqrt(c (1 - c) / n) <= 0.016, and its estimate on 2000 held-out queries is binomial with
        # sd <= 0.011: together sd <= 0.02, so 0.05 is about 2.5 sd from the mark.
        assert abs(got - coverage) < 0.05, (key, coverage, got)


def test_conformal_quantile_is_exact_on_the_calibration_set():
    q, t = _queries(1000, seed=1)
    g = _gallery()
    cal = fit_calibration(q, g, t)
    mu, sigma = query_stats(q, g[reference_rows(len(g))])
    true_cos = (q * g[t]).sum(1)
    for c in (0.5, 0.9, 0.95):
        kept = int(np.sum(true_cos >= cal.coverage_cosine(c, mu, sigma) - 1e-6))  # float32 dots
        assert kept >= math.ceil((len(q) + 1) * c)  # the finite-sample rank ceil((n + 1) c)
    assert np.all(np.isneginf(cal.coverage_cosine(0.9995, mu, sigma)))  # n too small: every hit


def test_kept_order_statistics_only_widen_the_set(monkeypatch):
    monkeypatch.setattr(calibrate, "MAX_SCORES", 100)
    n = 1003
    q, t = _queries(n, seed=4)
    g = _gallery()
    cal = fit_calibration(q, g, t, method="logistic-z", conformal="z")
    assert len(cal.scores) == 100 and cal.n_queries == n
    mu, sigma = query_stats(q, g[reference_rows(len(g))])
    true_z = np.sort(((q * g[t]).sum(1) - mu) / sigma)
    exact = true_z[n - math.ceil((n + 1) * 0.9)]
    kept = float(cal.coverage_cosine(0.9, 0.0, 1.0))
    assert kept <= exact + 1e-12 and exact - kept < 0.1


def test_probabilities_are_calibrated(fits, held_out):
    sim, t, mu, sigma = held_out
    top = np.argsort(-sim, axis=1)[:, :10]  # [2000, 10]
    cos = np.take_along_axis(sim, top, 1)
    hit = (top == t[:, None]).astype(float)
    for method, cal in fits.items():
        p = cal.probability(cos, mu, sigma, N_GALLERY)
        bins = np.minimum((p * 10).astype(int), 9)
        ece = sum(abs(p[bins == b].mean() - hit[bins == b].mean()) * np.sum(bins == b)
                  for b in range(10) if np.any(bins == b)) / p.size
        # 2000 queries' hits: sampling noise alone gives an ECE of about 0.01 here
        assert ece < 0.03, (method, ece)


def test_probabilities_over_the_whole_gallery_sum_to_one_match(fits, held_out):
    """The fit sees only top candidates, the truth and a few weighted random rows; the weights
    must make the probabilities stand for every gallery item: one match per query in all."""
    sim, _, mu, sigma = held_out
    for method, cal in fits.items():
        total = cal.probability(sim, mu, sigma, N_GALLERY).sum(1).mean()
        assert abs(total - 1.0) < 0.1, (method, total)


def test_monotone_in_cosine_for_every_query(fits):
    cos = np.linspace(-1, 1, 401)
    rng = np.random.default_rng(7)
    for cal in fits.values():
        for mu, sigma in zip(rng.uniform(-0.5, 0.5, 20), rng.uniform(0.01, 1.0, 20)):
            assert np.all(np.diff(cal.probability(cos, mu, sigma, N_GALLERY)) >= 0)


def test_monotone_even_when_the_data_say_otherwise():
    """Truth at each query's worst item: an unconstrained fit would fall with cosine."""
    q, _ = _queries(300, seed=6)
    g = _gallery()
    worst = np.argmin(q @ g.T, axis=1)
    cal = fit_calibration(q, g, worst, method="logistic")
    _, b, c = cal.coef
    assert c >= 0 and b + c >= 0
    p = cal.probability(np.linspace(-1, 1, 101), 0.1, 0.2, N_GALLERY)
    assert np.all(np.diff(p) >= 0)


def test_min_cosine_is_where_probability_reaches_the_cut_off(fits, held_out):
    _, _, mu, sigma = held_out
    for method, cal in fits.items():
        for prob in (0.3, 0.5, 0.8):
            thr = cal.min_cosine(prob, mu, sigma, N_GALLERY)
            ok = np.isfinite(thr)
            p = cal.probability(thr[ok], mu[ok], sigma[ok], N_GALLERY)
            np.testing.assert_allclose(p, prob, atol=1e-6, err_msg=method)
            below = cal.probability(thr[ok] - 1e-3, mu[ok], sigma[ok], N_GALLERY)
            assert np.all(below < prob + 1e-9)
        assert np.all(np.isneginf(cal.min_cosine(0.0, mu, sigma, N_GALLERY)))


def test_prior_correction_follows_gallery_size(fits):
    cal = fits["logistic"]
    cos = np.array([0.2, 0.5, 0.8])
    small, same, big = (cal.probability(cos, 0.1, 0.15, n) for n in (50, N_GALLERY, 10 * N_GALLERY))
    assert np.all(small > same) and np.all(same > big)  # one match among more items: less likely
    logit = lambda p: np.log(p / (1 - p))
    np.testing.assert_allclose(logit(same) - logit(big),
                               np.log((10 * N_GALLERY - 1) / (N_GALLERY - 1)), rtol=1e-6)
    assert np.all(cal.probability(cos, 0.1, 0.15, 1) == 1.0)  # a single item is the match
    lo, hi = (cal.min_cosine(0.5, np.zeros(3), np.full(3, 0.15), n) for n in (N_GALLERY, 10 * N_GALLERY))
    assert np.all(hi > lo)


def test_dict_round_trip_through_json(fits):
    for cal in fits.values():
        back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict(), allow_nan=False)))
        assert back == cal
        assert back.summary() == cal.summary() and str(cal.n_queries) in cal.summary().replace(",", "")
    with pytest.raises(ConfigError, match="calibration record"):
        Calibration.from_dict({"method": "logistic"})


def test_auto_fits_isotonic_only_with_enough_queries():
    q, t = _queries(calibrate.ISOTONIC_MIN_QUERIES, seed=9)
    assert fit_calibration(q, _gallery(), t).method == "logistic-isotonic"
    assert fit_calibration(q[:300], _gallery(), t[:300]).method == "logistic"


def test_too_few_queries_is_a_config_error():
    q, t = _queries(49, seed=8)
    with pytest.raises(ConfigError, match="at least 50 queries"):
        fit_calibration(q, _gallery(), t)
    q, t = _queries(60, seed=8)
    with pytest.raises(ConfigError, match="method"):
        fit_calibration(q, _gallery(), t, method="platt")
    cal = fit_calibration(q, _gallery(), t)
    with pytest.raises(ConfigError, match="coverage"):
        cal.coverage_cosine(1.0, 0.0, 1.0)
    with pytest.raises(ConfigError, match="min_prob"):
        cal.min_cosine(1.5, 0.0, 1.0, N_GALLERY)
