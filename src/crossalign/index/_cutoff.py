"""Where a search stops: a flat cosine, a calibrated probability, or a conformal set.

Every cut-off is, for one query, a lowest cosine similarity: the flat one (``min_score``) is
the same for every query; the calibrated ones (``min_prob``, ``coverage``) are set per query
from how its scores spread over a reference sample of the collection (see
:mod:`crossalign.index.calibrate`, fitted at build time on the run's validation pairs and kept
in the index). Several given at once: a hit must pass each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from crossalign.errors import ConfigError

__all__ = ["Cutoff", "Calibrated", "cutoff_of", "NOTHING_PASSES"]

NOTHING_PASSES = 2.0  # a cosine cut-off above every cosine: no hit is likely enough


@dataclass
class Cutoff:
    """The cut-off of one query: the lowest cosine a hit may have (None: no cut-off) and what
    asked for it (``min_score``, ``min_prob``, ``coverage``: the numbers given)."""

    cosine: float | None = None
    asked: dict | None = None

    def to_dict(self) -> dict:
        return {**(self.asked or {}), "cosine": self.cosine}


class Calibrated:
    """A version's calibration of one target, with the reference rows each query's scores are
    normalised against (read from the version's vectors once, on first use)."""

    def __init__(self, store, target: str) -> None:
        from crossalign.index.calibrate import Calibration

        self.calibration = Calibration.from_dict(store.info["calibration"][target])
        self._store, self._target = store, target
        self._reference: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def reference(self) -> np.ndarray:
        """``[r, dim]`` the reference rows of the target, float32."""
        from crossalign.index.calibrate import reference_rows

        with self._lock:
            if self._reference is None:
                vecs = self._store.vectors[self._target]
                rows = reference_rows(len(vecs))
                self._reference = np.asarray(vecs[rows], np.float32)
            return self._reference

    def stats(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mean and spread ``[1]`` each of the query ``[dim]``'s cosines to the reference."""
        from crossalign.index.calibrate import query_stats

        return query_stats(q[None, :], self.reference)

    def probability(self, q: np.ndarray, cosines: np.ndarray, n_gallery: int) -> np.ndarray:
        """``[k]`` the probability that each hit of cosine ``cosines [k]`` is the query's match."""
        mu, sigma = self.stats(q)
        return np.asarray(self.calibration.probability(np.asarray(cosines, np.float64)[None, :],
                                                       mu, sigma, n_gallery)).reshape(-1)


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"`{name}` is a probability in (0, 1), got {value}")
    return value


def cutoff_of(q: np.ndarray | None, calibrated: Calibrated | None, n_gallery: int,
              min_score: float | None, min_prob: float | None,
              coverage: float | None, why_not: str = "") -> Cutoff:
    """The cut-off of query ``q [dim]`` (None: no vector, a keyword search).

    Args:
        calibrated: the target's calibration, or None where the index has none or the query is
            not of the kind it was fitted on (``why_not`` says which).
        n_gallery: the items the query is searched among (the collection size corrects the
            calibrated probability).
    """
    asked = {k: v for k, v in (("min_score", min_score), ("min_prob", min_prob),
                               ("coverage", coverage)) if v is not None}
    if not asked:
        return Cutoff()
    if q is None:
        raise ConfigError(f"`{next(iter(asked))}` cuts by the cosine similarity, which a keyword "
                          f"search does not have: use mode vector or hybrid")
    cuts = [float(min_score)] if min_score is not None else []
    if min_prob is not None or coverage is not None:
        if calibrated is None:
            name = "min_prob" if min_prob is not None else "coverage"
            raise ConfigError(f"`{name}` needs a calibrated index: {why_not}")
        mu, sigma = calibrated.stats(q)
        cal = calibrated.calibration
        if min_prob is not None:
            p = _check_fraction("min_prob", min_prob)
            cuts.append(float(np.asarray(cal.min_cosine(p, mu, sigma, n_gallery)).reshape(-1)[0]))
        if coverage is not None:
            c = _check_fraction("coverage", coverage)
            cuts.append(float(np.asarray(cal.coverage_cosine(c, mu, sigma)).reshape(-1)[0]))
    cut = max(cuts)
    if cut == float("-inf"):  # every hit is likely enough: no cut
        return Cutoff(None, asked)
    # no cosine is likely enough: a cut above every cosine, which JSON can carry (not +inf)
    return Cutoff(min(cut, NOTHING_PASSES), asked)
