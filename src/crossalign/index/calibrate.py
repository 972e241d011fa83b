"""Calibrated relevance cut-offs: the probability that a hit is its query's true match, and
conformal sets that hold the true match at a chosen rate.

Each query is described by its score distribution over a fixed reference sample of the target
(:func:`reference_rows`): the mean ``mu`` and standard deviation ``sigma`` of its cosines
(:func:`query_stats`); each hit by its cosine and its standardised score
``z = (cosine - mu) / sigma``, the per-query score normalisation of retrieval and biometrics
(Jain, Nandakumar and Ross, "Score normalization in multimodal biometric systems", 2005).

:func:`fit_calibration` fits, on pairs whose true match is known, the probability that a hit
is the true match, from features that are affine in the hit's cosine for a fixed query (so
every cut-off is a per-query cosine threshold):

    logistic           logit p = a + b * cosine + c * z     (Platt, "Probabilistic outputs for
    logistic-z         logit p = a + c * z                   support vector machines", 1999)
    logistic-cos       logit p = a + b * cosine              (a flat cut-off, calibrated)
    isotonic           p = a non-decreasing function of z   (Zadrozny and Elkan, KDD 2002)
    logistic-isotonic  p = a non-decreasing function of the logistic's a + b * cosine + c * z

The last takes the direction of the logistic fit and the shape of isotonic regression, which
does not force the probability of the best-scored hits up to 1 as the logistic curve does; it
needs more calibration queries, so ``auto`` (the default) fits it from ``ISOTONIC_MIN_QUERIES``
queries on and ``logistic`` below.

The fit also keeps the conformal scores of the calibration queries (the true match's cosine,
its ``z``, or its score ``a + b * cosine + c * z``), from which
:meth:`Calibration.coverage_cosine` gives split-conformal sets (Angelopoulos and Bates, "A
Gentle Introduction to Conformal Prediction", 2021). The cosine is the default: one cut-off
for every query, placed so that the coverage is guaranteed. Both defaults are measured in
bench/RESULTS.md ("Calibrated cut-offs").

A fit sees each query's top ``candidates`` hits and its true match, plus a few gallery rows
drawn at random and weighted as the inverse of their chance to be drawn (Horvitz and Thompson,
JASA 1952), so the fitted probabilities stand for the whole gallery: one true match among
``n_gallery`` items. A collection of another size changes that prior, and
:meth:`Calibration.probability` corrects for it with Bayes' rule.

Calibrate on pairs the weights never learned from: true matches the model was trained on score
higher than new ones, and sets placed on them fall short of their coverage.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from crossalign.errors import ConfigError

__all__ = ["REFERENCE_SIZE", "METHODS", "CONFORMAL_SCORES", "MIN_QUERIES", "reference_rows",
           "query_stats", "Calibration", "fit_calibration"]

REFERENCE_SIZE = 1000  # rows of the target sampled as each query's reference distribution
METHODS = ("logistic-isotonic", "logistic", "logistic-z", "logistic-cos", "isotonic")
ISOTONIC = ("isotonic", "logistic-isotonic")
CONFORMAL_SCORES = ("cosine", "z", "logit")
ISOTONIC_MIN_QUERIES = 1000  # from here on ``auto`` fits logistic-isotonic, below it logistic
MIN_QUERIES = 50  # fewer calibration queries than this cannot place a 90 % quantile usefully
SIGMA_FLOOR = 1e-4  # a query whose reference cosines are all equal still has a finite z
MAX_SCORES = 2000  # conformal scores kept (order statistics): the info stays small at any n
ISOTONIC_BINS = 1000  # quantile bins of the score pooled before pool-adjacent-violators
BLOCK_BYTES = 64 << 20  # bound of one [query rows, gallery] block of cosines
_EPS = 1e-12


def reference_rows(n: int, size: int = REFERENCE_SIZE, seed: int = 0) -> np.ndarray:
    """The sorted rows (int64) of a target of ``n`` vectors that form the reference sample.

    Every row when ``n <= size``; else ``size`` rows drawn without replacement, the same for
    the same ``(n, size, seed)``.
    """
    if n < 0 or size < 1:
        raise ConfigError(f"reference sample: need n >= 0 and size >= 1, got n={n}, size={size}")
    if n <= size:
        return np.arange(n, dtype=np.int64)
    rows = np.random.default_rng(seed).choice(n, size=size, replace=False)
    return np.sort(rows).astype(np.int64)


def _block_rows(width: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(width, 1)))


def query_stats(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's mean and standard deviation of cosine over the reference rows.

    Args:
        queries: ``[m, dim]`` L2-normalised query vectors.
        reference: ``[r, dim]`` L2-normalised reference vectors (``r >= 1``).

    Returns:
        ``mu [m]`` and ``sigma [m]`` (float64), ``sigma`` at least ``SIGMA_FLOOR``.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    if q.ndim != 2 or ref.ndim != 2 or q.shape[1] != ref.shape[1] or ref.shape[0] == 0:
        raise ValueError(f"query_stats: need [m, dim] queries and [r >= 1, dim] reference, got "
                         f"{q.shape} and {ref.shape}")
    mu, sigma = np.empty(len(q)), np.empty(len(q))
    rows = _block_rows(len(ref))
    for s in range(0, len(q), rows):
        sim = (q[s:s + rows] @ ref.T).astype(np.float64)  # [rows, r]
        mu[s:s + rows] = sim.mean(1)
        sigma[s:s + rows] = sim.std(1)
    return mu, np.maximum(sigma, SIGMA_FLOOR)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _logit(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _prior_shift(n_fit: int, n: int) -> float:
    """Change of log-odds when one true match is among ``n`` items instead of ``n_fit``.

    Bayes' rule: posterior odds = likelihood ratio x prior odds, and the prior odds of one
    item being the match are ``1 / (n - 1)``. The likelihood ratio of the features is taken to
    be the same in both collections (``z`` is normalised per query for that reason), so the
    log-odds move by ``log((n_fit - 1) / (n - 1))`` (Saerens, Latinne and Decaestecker,
    "Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation
    2002). A collection of one item holds the match for sure.
    """
    if n < 1:
        raise ConfigError(f"n_gallery must be at least 1, got {n}")
    if n == 1:
        return math.inf
    return math.log(max(n_fit - 1, 1)) - math.log(n - 1)


def _stored_ranks(n: int, m: int) -> np.ndarray:
    """The 0-based ascending ranks of the ``m`` order statistics kept out of ``n`` scores."""
    if n <= m:
        return np.arange(n)
    return (np.arange(m) * (n - 1)) // (m - 1)


@dataclass(frozen=True)
class Calibration:
    """A fitted cut-off model: probabilities of a true match and conformal sets, per query.

    ``mu`` and ``sigma`` passed to the methods are the query's :func:`query_stats` over the
    reference rows of the collection searched; arrays broadcast, so ``cosine [m, k]`` goes with
    ``mu``/``sigma`` of shape ``[m, 1]`` (``[m]`` is reshaped), ``cosine [k]`` with scalars.

    Attributes:
        method: one of ``METHODS``.
        coef: ``(a, b, c)`` of the score ``a + b * cosine + c * z`` (the log-odds of the
            logistic methods); ``(0, 0, 1)`` for ``isotonic``, whose score is ``z``.
        knots_x: scores at the knots of an isotonic fit (strictly increasing), else empty.
        knots_p: fitted probability at each knot (strictly increasing), else empty.
        conformal: what the conformal sets threshold: ``"cosine"``, ``"z"`` or ``"logit"`` (the
            score ``a + b * cosine + c * z``).
        scores: the calibration queries' conformal scores, ascending (at most ``MAX_SCORES``
            order statistics, evenly spaced in rank, when there were more queries).
        n_gallery: gallery size of the fit.
        n_queries: calibration queries of the fit (one true match each).
    """

    method: str
    coef: tuple[float, ...]
    knots_x: tuple[float, ...]
    knots_p: tuple[float, ...]
    conformal: str
    scores: tuple[float, ...]
    n_gallery: int
    n_queries: int

    def _stats(self, mu, sigma, cosine=None) -> tuple[np.ndarray, np.ndarray]:
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        if cosine is not None and mu.ndim == 1 and np.ndim(cosine) == 2:
            mu, sigma = mu[:, None], sigma[:, None]  # [m, 1] against cosine [m, k]
        return mu, sigma

    def _score(self, cosine: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """``a + b * cosine + c * z``: increasing in cosine for a fixed query."""
        a, b, c = self.coef
        return a + b * cosine + c * (cosine - mu) / sigma

    def _cosine_at_score(self, score, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """The cosine whose :meth:`Calibration._score` is ``score`` (the inverse, per query)."""
        a, b, c = self.coef
        slope = b + c / sigma  # > 0: a fit keeps b + c >= 0, c >= 0, and sigma <= 1
        with np.errstate(invalid="ignore", divide="ignore"):  # slope 0: a fit without signal
            cos = (score - a + c * mu / sigma) / slope
        return np.where(np.isnan(cos), np.where(np.asarray(score) > 0, np.inf, -np.inf), cos)

    def _fit_logit(self, cosine: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """The fit's log-odds of a match (at the prior of the fit's gallery size)."""
        score = self._score(cosine, mu, sigma)
        if self.method in ISOTONIC:
            p = np.interp(score, self.knots_x, self.knots_p)
            return _logit(np.clip(p, _EPS, 1 - _EPS))  # finite log-odds
        return score

    def _cosine_at_logit(self, t, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """The lowest cosine whose fit log-odds reach ``t`` (``+inf`` when none, ``-inf`` when all)."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), np.broadcast(t, mu, sigma).shape)
        if self.method in ISOTONIC:
            kx, kp = np.asarray(self.knots_x), np.asarray(self.knots_p)
            p = _sigmoid(t)
            t = np.where(p <= kp[0], -np.inf, np.where(p > kp[-1], np.inf, np.interp(p, kp, kx)))
        return self._cosine_at_score(t, mu, sigma)

    def probability(self, cosine: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                    n_gallery: int) -> np.ndarray:
        """The probability that each hit is its query's true match, in a collection of ``n_gallery``.

        Assumes one true match per query in the collection. When ``n_gallery`` differs from the
        fit's, the log-odds move by the Bayes prior correction ``log((n_fit - 1) / (n_gallery - 1))``
        (one true match among ``n_gallery`` items; Saerens et al., Neural Computation 2002):
        the same hit is less likely the match in a larger collection.

        Args:
            cosine: ``[m, k]`` cosines of each query's hits (or ``[k]`` with scalar mu/sigma).
            mu: ``[m]`` (or scalar) each query's mean reference cosine.
            sigma: ``[m]`` (or scalar) each query's reference standard deviation.
            n_gallery: items in the collection searched.

        Returns:
            Probabilities of the shape of ``cosine``.
        """
        cosine = np.asarray(cosine, dtype=np.float64)
        mu, sigma = self._stats(mu, sigma, cosine)
        shift = _prior_shift(self.n_gallery, int(n_gallery))
        if math.isinf(shift):
            return np.ones(np.broadcast(cosine, mu, sigma).shape)
        return _sigmoid(self._fit_logit(cosine, mu, sigma) + shift)

    def min_cosine(self, prob: float, mu: np.ndarray, sigma: np.ndarray, n_gallery: int) -> np.ndarray:
        """Per query, the lowest cosine whose :meth:`Calibration.probability` is at least ``prob``.

        Hits at or above it pass; ``+inf`` where no cosine reaches ``prob``, ``-inf`` where all do.
        """
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"a probability cut-off (`min_prob`) must lie in [0, 1], got {prob!r}")
        mu, sigma = self._stats(mu, sigma)
        shift = _prior_shift(self.n_gallery, int(n_gallery))
        if prob == 0.0 or math.isinf(shift):
            return np.full(np.broadcast(mu, sigma).shape, -np.inf)
        return self._cosine_at_logit(_logit(prob) - shift, mu, sigma)

    def _threshold(self, coverage: float) -> float:
        """The conformal score a set starts from: the k-th largest of the n calibration scores,
        ``k = ceil((n + 1) * coverage)``; ``-inf`` when ``k > n``."""
        n = self.n_queries
        k = math.ceil((n + 1) * coverage)
        if k > n:
            return -math.inf
        ranks = _stored_ranks(n, len(self.scores))
        return self.scores[int(np.searchsorted(ranks, n - k, side="right")) - 1]  # kept rank <= n - k

    def coverage_cosine(self, coverage: float, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Per query, the cosine from which hits form the split-conformal prediction set.

        The set holds the true match with probability at least ``coverage`` for a query
        exchangeable with the calibration queries (Angelopoulos and Bates 2021, section 1): the
        threshold is the ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile of the
        nonconformity scores (minus the true match's cosine, ``z`` or calibrated logit), so
        the coverage lies in ``[1 - alpha, 1 - alpha + 1 / (n + 1))`` on average over
        calibration sets. When ``scores`` keeps fewer order statistics than there were queries,
        the next lower one kept is used, which only widens the set. ``-inf`` (every hit) when
        ``n`` is too small for the coverage asked.
        """
        if not 0.0 < coverage < 1.0:
            raise ConfigError(f"a coverage (`coverage`) must lie in (0, 1), got {coverage!r}")
        mu, sigma = self._stats(mu, sigma)
        threshold = self._threshold(coverage)
        if self.conformal == "cosine" or threshold == -math.inf:
            return np.full(np.broadcast(mu, sigma).shape, threshold)
        if self.conformal == "z":
            return mu + sigma * threshold
        return self._cosine_at_score(threshold, mu, sigma)

    def to_dict(self) -> dict:
        """JSON-safe fields (plain floats, ints, strings and lists)."""
        d = asdict(self)
        for key in ("coef", "knots_x", "knots_p", "scores"):
            d[key] = [float(x) for x in d[key]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """The inverse of :meth:`Calibration.to_dict`."""
        try:
            cal = cls(method=str(d["method"]), coef=tuple(map(float, d["coef"])),
                      knots_x=tuple(map(float, d["knots_x"])), knots_p=tuple(map(float, d["knots_p"])),
                      conformal=str(d["conformal"]), scores=tuple(map(float, d["scores"])),
                      n_gallery=int(d["n_gallery"]), n_queries=int(d["n_queries"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"calibration record is incomplete or malformed: {e!r}") from None
        if cal.method not in METHODS or cal.conformal not in CONFORMAL_SCORES or not cal.scores:
            raise ConfigError(f"calibration record: unknown method {cal.method!r} or conformal score "
                              f"{cal.conformal!r}, or no scores")
        return cal

    def summary(self) -> str:
        """One line for a build's output."""
        at90 = self._threshold(0.9)
        return (f"calibration: {self.method} fit on {self.n_queries:,} queries against "
                f"{self.n_gallery:,} items; 90 % sets from {self.conformal} >= {at90:.3f}")


# ---- fitting -------------------------------------------------------------------------------

def _hits(queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray, mu: np.ndarray,
          sigma: np.ndarray, candidates: int, outside: int, rng: np.random.Generator):
    """The rows a fit sees: each query's top ``candidates``, its true match, and ``outside``
    random gallery rows weighted ``n_g / outside`` (those among the former two are dropped).

    Returns ``cos, z, y, w`` (flat float64 arrays) and ``true_cos [n_q]``.
    """
    n_q, n_g = len(queries), len(gallery)
    k = min(candidates, n_g)
    rows = _block_rows(n_g)
    parts, true_cos = [], np.empty(n_q)
    for s in range(0, n_q, rows):
        sim = queries[s:s + rows] @ gallery.T  # [b, n_g]
        b = len(sim)
        ar = np.arange(b)
        t = truth[s:s + b]
        top = np.argpartition(sim, n_g - k, axis=1)[:, n_g - k:]  # [b, k], unordered
        rand = rng.integers(0, n_g, size=(b, outside))  # [b, outside], with replacement
        true_in_top = (top == t[:, None]).any(1)
        # [b, outside]: a drawn row that is a candidate or the truth is counted there already
        keep_rand = ~(rand[:, :, None] == top[:, None, :]).any(2) & (rand != t[:, None])
        true_cos[s:s + b] = sim[ar, t]
        # [b, k] candidates, [b] the truth where it is not a candidate, [b, outside] random rows
        cols = [top, t[:, None], rand]
        weights = [np.ones((b, k)), (~true_in_top)[:, None].astype(float),
                   keep_rand * (n_g / max(outside, 1))]
        for col, w in zip(cols, weights):
            cos = np.take_along_axis(sim, col, 1).astype(np.float64)
            y = (col == t[:, None]).astype(np.float64)
            z = (cos - mu[s:s + b, None]) / sigma[s:s + b, None]
            m = w > 0
            parts.append((cos[m], z[m], y[m], w[m]))
    cos, z, y, w = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return cos, z, y, w, true_cos


def _irls(x: np.ndarray, y: np.ndarray, w: np.ndarray, steps: int = 30) -> tuple[np.ndarray, float]:
    """Weighted logistic regression by Newton's method (iteratively reweighted least squares).

    ``x [n, f]`` holds the features without the intercept, which is added. Columns are
    standardised first, so Newton's steps converge fast even when features nearly coincide
    (``cosine`` and ``z`` do when every query has about the same ``sigma``). A unit ridge on the
    standardised coefficients, negligible against the thousands of weighted rows of a fit,
    keeps the optimum finite when the classes separate. Returns ``[intercept, *coefficients]`` in
    the original units and the weighted log-likelihood.
    """
    centre, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    xs = np.concatenate([np.ones((len(x), 1)), (x - centre) / scale], axis=1)  # [n, f + 1]
    beta = np.zeros(xs.shape[1])
    beta[0] = _logit(np.clip(np.average(y, weights=w), _EPS, 1 - _EPS))  # the base rate: fewer steps
    ridge = np.diag([0.0] + [1.0] * x.shape[1])  # the intercept is not shrunk
    for _ in range(steps):
        p = _sigmoid(xs @ beta)
        grad = xs.T @ (w * (y - p)) - ridge @ beta
        hess = (xs * (w * p * (1 - p))[:, None]).T @ xs + ridge
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-7:
            break
    eta = xs @ beta
    ll = float(np.sum(w * (y * eta - np.logaddexp(0.0, eta))))
    coef = beta[1:] / scale
    return np.concatenate([[beta[0] - coef @ centre], coef]), ll


def _fit_logistic(cos, z, y, w, method: str) -> tuple[float, float, float]:
    """``(a, b, c)`` of ``logit p = a + b cos + c z``, kept increasing in cosine at any query.

    The slope in cosine is ``b + c / sigma``; with ``sigma <= 1`` (cosines lie in [-1, 1]) it is
    positive for every query when ``c >= 0`` and ``b + c >= 0``. An unconstrained fit that breaks
    this is replaced by the better of the fits on the two faces of that region
    (``c = 0`` and ``b = -c``).
    """
    if method == "logistic-z":
        (a, c), _ = _irls(z[:, None], y, w)
        return a, 0.0, max(c, 0.0)
    if method == "logistic-cos":
        (a, b), _ = _irls(cos[:, None], y, w)
        return a, max(b, 0.0), 0.0
    (a, b, c), _ = _irls(np.stack([cos, z], 1), y, w)
    if c >= 0 and b + c >= 0:
        return a, b, c
    (a1, b1), ll1 = _irls(cos[:, None], y, w)  # face c = 0
    (a2, c2), ll2 = _irls((z - cos)[:, None], y, w)  # face b = -c
    faces = [(ll1, (a1, max(b1, 0.0), 0.0)), (ll2, (a2, -max(c2, 0.0), max(c2, 0.0)))]
    return max(faces, key=lambda f: f[0])[1]


def _pav(value: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool adjacent violators (Ayer et al., Ann. Math. Statist. 1955): the weighted
    non-decreasing fit of ``value``. Returns, per pooled block, its first index, its value
    and its weight; equal neighbours are pooled too, so block values strictly increase."""
    starts, vals, wts = [], [], []
    for i, (v, wt) in enumerate(zip(value, weight)):
        starts.append(i), vals.append(v), wts.append(wt)
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            wsum = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            wts[-2] = wsum
            del starts[-1], vals[-1], wts[-1]
    return np.array(starts), np.array(vals), np.array(wts)


def _fit_isotonic(x, y, w, bins: int = ISOTONIC_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(x, p)`` of an increasing fit of ``P(match | x)`` for a score ``x``: rows pooled in
    quantile bins of ``x`` first (so PAV runs on ``bins`` points), then PAV; a knot is a block's
    weighted mean score."""
    order = np.argsort(x, kind="stable")
    x, y, w = x[order], y[order], w[order]
    edges = np.unique(np.linspace(0, len(x), bins + 1).astype(int))[:-1]  # bin starts
    wx, wy, ws = (np.add.reduceat(v, edges) for v in (w * x, w * y, w))  # [bins] each
    starts, vals, wts = _pav(wy / ws, ws)
    return np.add.reduceat(wx, starts) / wts, vals


def _conformal_scores(cal_fields: dict, true_cos: np.ndarray, mu: np.ndarray,
                      sigma: np.ndarray) -> np.ndarray:
    """The calibration queries' true-match scores, ascending, at most ``MAX_SCORES`` of them."""
    if cal_fields["conformal"] == "cosine":
        score = true_cos
    elif cal_fields["conformal"] == "z":
        score = (true_cos - mu) / sigma
    else:
        score = Calibration(**cal_fields, scores=(0.0,))._score(true_cos, mu, sigma)
    score = np.sort(score)
    return score[_stored_ranks(len(score), MAX_SCORES)]


def fit_calibration(queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray, *,
                    method: str = "auto", candidates: int = 50, seed: int = 0,
                    conformal: str = "cosine", outside: int = 16) -> Calibration:
    """Fit the probability of a true match and the conformal scores on pairs with known matches.

    Args:
        queries: ``[n_q, dim]`` L2-normalised query vectors, e.g. captions of held-out pairs
            (pairs the weights learned from make sets that fall short of their coverage).
        gallery: ``[n_g, dim]`` L2-normalised target vectors (e.g. their images).
        truth: ``[n_q]`` the gallery row of each query's true match.
        method: one of ``METHODS`` (see the module docstring), or ``"auto"``:
            ``logistic-isotonic`` from ``ISOTONIC_MIN_QUERIES`` queries on, else ``logistic``.
        candidates: top hits per query the fit sees (with the true match and ``outside`` rows).
        seed: seeds the reference sample and the random rows.
        conformal: the score of the true match the conformal sets threshold: ``"cosine"``,
            ``"z"`` or ``"logit"`` (its calibrated log-odds).
        outside: random gallery rows per query standing for the rows beyond the candidates.

    Raises:
        ConfigError: fewer than ``MIN_QUERIES`` queries, an unknown method or conformal score,
            or ``candidates`` < 1.
    """
    if method not in METHODS + ("auto",):
        raise ConfigError(f"calibration method {method!r}: choose auto or one of {', '.join(METHODS)}")
    if conformal not in CONFORMAL_SCORES:
        raise ConfigError(f"conformal score {conformal!r}: choose one of {', '.join(CONFORMAL_SCORES)}")
    if candidates < 1 or outside < 0:
        raise ConfigError(f"calibration needs candidates >= 1 and outside >= 0, got {candidates} "
                          f"and {outside}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    truth = np.asarray(truth, dtype=np.int64)
    if len(q) < MIN_QUERIES:
        raise ConfigError(f"calibration needs at least {MIN_QUERIES} queries with a known match "
                          f"(validation pairs), got {len(q)}")
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or truth.shape != (len(q),):
        raise ValueError(f"fit_calibration: shapes {q.shape}, {g.shape}, truth {truth.shape} do not fit")
    if len(g) < 2 or truth.min() < 0 or truth.max() >= len(g):
        raise ValueError(f"fit_calibration: truth rows must index a gallery of >= 2 rows ({len(g)})")
    if method == "auto":
        method = "logistic-isotonic" if len(q) >= ISOTONIC_MIN_QUERIES else "logistic"
    mu, sigma = query_stats(q, g[reference_rows(len(g), seed=seed)])
    rng = np.random.default_rng(seed)
    cos, z, y, w, true_cos = _hits(q, g, truth, mu, sigma, candidates, outside, rng)
    coef, kx, kp = (0.0, 0.0, 1.0), (), ()  # isotonic alone: its score is z
    if method != "isotonic":
        coef = _fit_logistic(cos, z, y, w, method)
    if method in ISOTONIC:
        a, b, c = coef
        kx, kp = _fit_isotonic(a + b * cos + c * z, y, w)
    fields = dict(method=method, coef=tuple(map(float, coef)), knots_x=tuple(map(float, kx)),
                  knots_p=tuple(map(float, kp)), conformal=conformal, n_gallery=len(g),
                  n_queries=len(q))
    scores = _conformal_scores(fields, true_cos, mu, sigma)
    return Calibration(**fields, scores=tuple(map(float, scores)))
