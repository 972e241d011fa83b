"""Calibrated relevance cut-offs against a flat cosine cut-off, on a run's val and test splits.

The cut-off is fitted (:func:`crossalign.index.calibrate.fit_calibration`) on caption -> image
pairs and measured on other captions searching their images (``val_to_test``: fit on val, score
the test split's captions against the test images):

- conformal sets (``coverage_cosine``) at 0.8, 0.9 and 0.95: the share of test queries whose
  image is in the set, and the set's mean and median size; beside them a flat cosine cut-off
  placed on the fit's pairs at the same coverage (the same finite-sample rank), applied to test;
- probabilities (``probability``): expected calibration error on each query's top 50 hits
  (15 equal-width bins), on the top hit alone, the log loss, and the top hit's reliability
  (mean probability against the share that is the match, in five bins), for every method; for
  ``logistic`` also the posterior over the whole gallery (one match per query), which weighs a
  hit against the query's other hits as a per-hit probability cannot;
- ``min_prob`` 0.5: the share of passing hits that are the true match, and of queries with one.

When the run's weights learned from val too (``train.fit_on`` train+val, what a recipe search
chooses), val is not exchangeable with test, so ``test_halves`` also fits on the captions of
half the test images and scores the other half; the sections below then use that held-out fit:

- the prior correction: the scored captions of a quarter of the images against those images
  only (a smaller gallery than the fit's); when val is held out, against the test and val
  images (a larger one); with ``--extra N``, against their images plus N train images (larger
  again, but images the weights learned from); each with and without the correction;
- one caption per image (the first), fitted and scored the same way;
- conformal scores relative to the query's own best hits (minus the best cosine, minus a
  log-sum-exp of the top 50), which a cut-off from (mu, sigma) alone cannot use;
- the time of one fit at 50,000 queries x 10,000 gallery items (random unit vectors).

Vectors come from the run through ``crossalign.load`` and are saved in ``--out`` (npz), which
later runs read instead of embedding again. Prints one JSON object.

    python bench/bench_cutoff.py --run runs/f8k --data ../shared/data/flickr8k --out f8k.npz --extra 2000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from crossalign.index.calibrate import (CONFORMAL_SCORES, METHODS, fit_calibration, query_stats,
                                        reference_rows)

COVERAGES = (0.8, 0.9, 0.95)
TOP = 50  # hits per query scored for calibration
BINS = 15


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _split_pairs(table, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """Image paths, captions, and each caption's image row."""
    rows = [r for r, s in enumerate(table.split) if s == split]
    ids = list(dict.fromkeys(table.image_id[r] for r in rows))
    at = {i: n for n, i in enumerate(ids)}
    first_path = {}
    for r in rows:
        first_path.setdefault(table.image_id[r], table.image_path[r])
    t2i = np.array([at[table.image_id[r]] for r in rows], dtype=np.int64)
    return [first_path[i] for i in ids], [table.caption[r] for r in rows], t2i


def embed_splits(run: str, data: str, extra: int) -> dict[str, np.ndarray]:
    """val and test vectors (normalised), and ``extra`` train images for a larger gallery."""
    import crossalign
    from crossalign.data.prepare import prepare_table

    aligner = crossalign.load(run)
    table, _ = prepare_table(data, aligner.cfg.data, run_dir=run, quiet=True)
    out = {}
    for split in ("val", "test"):
        paths, captions, t2i = _split_pairs(table, split)
        out[f"{split}_img"] = _unit(aligner.encode_image(paths))
        out[f"{split}_txt"] = _unit(aligner.encode_text(captions))
        out[f"{split}_t2i"] = t2i
    out["fit_on"] = np.array(aligner.cfg.train.fit_on)  # the splits the weights learned from
    if extra:
        paths = _split_pairs(table, "train")[0][:extra]
        out["train_img"] = _unit(aligner.encode_image(paths))
    return out


def load_vectors(args) -> dict[str, np.ndarray]:
    path = Path(args.out)
    if path.exists():
        vec = dict(np.load(path))
        if not args.extra or len(vec.get("train_img", ())) >= args.extra:
            return vec
    t0 = time.perf_counter()
    vec = embed_splits(args.run, args.data, args.extra)
    print(f"embedded in {time.perf_counter() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **vec)
    return vec


# ---- measures -------------------------------------------------------------------------------

def ece(p: np.ndarray, hit: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-width bins of predicted probability
    (Naeini, Cooper and Hauskrecht, AAAI 2015)."""
    p, hit = p.ravel(), hit.ravel()
    b = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for i in np.unique(b):
        m = b == i
        total += abs(p[m].mean() - hit[m].mean()) * m.sum()
    return total / p.size


def reliability(p: np.ndarray, hit: np.ndarray, edges=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> list:
    """``[low, high, hits, mean p, share true]`` per bin of predicted probability."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (p >= lo) & ((p < hi) | (hi == edges[-1]))
        if m.any():
            rows.append([lo, hi, int(m.sum()), round(float(p[m].mean()), 3),
                         round(float(hit[m].mean()), 3)])
    return rows


def _stats(queries, gallery):
    return query_stats(queries, gallery[reference_rows(len(gallery))])


def _sets(sim: np.ndarray, truth: np.ndarray, thr: np.ndarray) -> dict:
    """Coverage and set size of per-query cosine cut-offs ``thr [m]`` over ``sim [m, n]``."""
    size = (sim >= np.asarray(thr).reshape(-1, 1)).sum(1)
    covered = sim[np.arange(len(truth)), truth] >= np.asarray(thr).reshape(-1)
    return {"coverage": round(float(covered.mean()), 4), "mean_size": round(float(size.mean()), 1),
            "median_size": float(np.median(size))}


def flat_cut(true_scores: np.ndarray, coverage: float) -> float:
    """The conformal threshold of any score: the ceil((n + 1) coverage)-th largest true score."""
    n = len(true_scores)
    k = math.ceil((n + 1) * coverage)
    return float(np.sort(true_scores)[n - k]) if k <= n else -math.inf


def _top_hits(sim: np.ndarray, truth: np.ndarray, top: int = TOP):
    idx = np.argpartition(-sim, top - 1, axis=1)[:, :top] if top < sim.shape[1] else \
        np.tile(np.arange(sim.shape[1]), (len(sim), 1))
    cos = np.take_along_axis(sim, idx, 1)
    order = np.argsort(-cos, axis=1)
    idx, cos = np.take_along_axis(idx, order, 1), np.take_along_axis(cos, order, 1)
    return cos, (idx == truth[:, None]).astype(float)  # [m, top] each, best first


def calibration_figures(cal, sim, truth, mu, sigma, n_gallery) -> dict:
    cos, hit = _top_hits(sim, truth)
    p = cal.probability(cos, mu, sigma, n_gallery)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    out = {"ece_top50": round(ece(p, hit), 4), "ece_top1": round(ece(p[:, :1], hit[:, :1]), 4),
           "log_loss_top50": round(float(-np.mean(hit * np.log(q) + (1 - hit) * np.log(1 - q))), 5)}
    out["top1_reliability"] = reliability(p[:, 0], hit[:, 0])
    thr = cal.min_cosine(0.5, mu, sigma, n_gallery)
    passed = cos >= thr[:, None]
    out["min_prob_0.5"] = {"precision": round(float(hit[passed].mean()), 4) if passed.any() else None,
                           "queries_with_a_hit": round(float(passed.any(1).mean()), 4)}
    return out


def joint_figures(cal, sim, truth, mu, sigma) -> dict:
    """The same figures for the posterior over the whole gallery, one match per query:
    ``p_i = odds_i / sum_j odds_j`` (the odds ratio of each item against the others), which
    also weighs the query's other hits; a per-hit cut-off cannot (it sees mu and sigma alone)."""
    p = np.clip(cal.probability(sim, mu, sigma, sim.shape[1]), 1e-15, 1 - 1e-15)  # [m, n]
    odds = p / (1 - p)
    joint = odds / odds.sum(1, keepdims=True)
    cos, hit = _top_hits(sim, truth)
    idx = np.argsort(-sim, axis=1)[:, :TOP]
    pj = np.take_along_axis(joint, idx, 1)
    passed = pj >= 0.5
    return {"ece_top50": round(ece(pj, hit), 4), "ece_top1": round(ece(pj[:, :1], hit[:, :1]), 4),
            "min_prob_0.5": {"precision": round(float(hit[passed].mean()), 4) if passed.any() else None,
                             "queries_with_a_hit": round(float(passed.any(1).mean()), 4)}}


VARIANTS = {"auto": {}, **{m: {"method": m} for m in METHODS},  # auto: the default
            "logistic/outside=0": {"method": "logistic", "outside": 0},  # candidates and truth only
            **{f"conformal={c}": {"method": "logistic", "conformal": c} for c in CONFORMAL_SCORES}}
BETA = 24.0  # inverse temperature of the log-sum-exp score: about the trained runs' logit scale


def hit_scores(sim: np.ndarray, top: int = TOP) -> dict[str, np.ndarray]:
    """Conformal scores [m, n] relative to each query's own best hits, which search has but a
    cut-off from (mu, sigma) alone does not: the cosine minus the best cosine, and minus the
    log-sum-exp of the top ``top`` cosines at ``BETA``."""
    best = np.sort(sim, axis=1)[:, -top:]  # [m, top]
    m = best[:, -1:]
    lse = m + np.log(np.exp(BETA * (best - m)).sum(1, keepdims=True)) / BETA
    return {"cos - top1": sim - m, f"cos - lse{int(BETA)}(top {top})": sim - lse}


def _fit_all(q, g, t, candidates: int) -> tuple[dict, dict]:
    """Every variant fitted; and the seconds each fit took."""
    fits, seconds = {}, {}
    for name, kw in VARIANTS.items():
        t0 = time.perf_counter()
        fits[name] = fit_calibration(q, g, t, candidates=candidates, **kw)
        seconds[name] = round(time.perf_counter() - t0, 2)
    return fits, seconds


def _pairs(v: dict, split: str) -> dict:
    return {"q": v[f"{split}_txt"], "g": v[f"{split}_img"], "t": v[f"{split}_t2i"]}


def subset(pairs: dict, images: np.ndarray) -> dict:
    """The captions of the gallery rows ``images``, against those rows only."""
    rows = np.flatnonzero(np.isin(pairs["t"], images))
    remap = np.full(len(pairs["g"]), -1)
    remap[images] = np.arange(len(images))
    return {"q": pairs["q"][rows], "g": pairs["g"][images], "t": remap[pairs["t"][rows]]}


def first_captions(pairs: dict) -> dict:
    """One caption per image: the first."""
    rows = np.unique(pairs["t"], return_index=True)[1]
    return {"q": pairs["q"][rows], "g": pairs["g"], "t": pairs["t"][rows]}


def evaluate(fit: dict, test: dict, candidates: int) -> dict:
    """Every measure of one fit (on ``fit``'s pairs) scored on ``test``'s pairs."""
    fits, seconds = _fit_all(fit["q"], fit["g"], fit["t"], candidates)
    sim = test["q"] @ test["g"].T  # [m, n]
    mu, sigma = _stats(test["q"], test["g"])
    fit_hits, test_hits = hit_scores(fit["q"] @ fit["g"].T), hit_scores(sim)
    fit_rows = np.arange(len(fit["t"]))
    sets = {}
    for c in COVERAGES:
        row = {name: _sets(sim, test["t"], fits[name].coverage_cosine(c, mu, sigma))
               for name in fits if name.startswith("conformal=")}
        for name, score in test_hits.items():  # a per-query cosine cut-off from the query's hits
            cut = flat_cut(fit_hits[name][fit_rows, fit["t"]], c)
            row[name] = _sets(score, test["t"], np.full(len(score), cut))
        sets[str(c)] = row
    probs = {name: {**calibration_figures(cal, sim, test["t"], mu, sigma, len(test["g"])),
                    "fit_seconds": seconds[name]}
             for name, cal in fits.items() if not name.startswith("conformal=")}
    probs["logistic"]["joint_over_gallery"] = joint_figures(fits["logistic"], sim, test["t"], mu, sigma)
    return {"queries": {"fit": len(fit["q"]), "test": len(sim)},
            "gallery": {"fit": len(fit["g"]), "test": len(test["g"])},
            "r_at_1_test": round(float(_top_hits(sim, test["t"], 1)[1].mean()), 4),
            "coefficients": {m: [round(x, 4) for x in fits[m].coef] for m in METHODS if m != "isotonic"},
            "sets": sets, "probability": probs, "summary": fits["auto"].summary()}


def prior_correction(cal, test: dict) -> dict:
    """ECE on ``test`` with the prior correction for its gallery size, and with the fit's own."""
    sim, (mu, sigma) = test["q"] @ test["g"].T, _stats(test["q"], test["g"])
    out = {"gallery": len(test["g"]), "queries": len(sim), "fit_gallery": cal.n_gallery}
    for name, n in (("corrected", len(test["g"])), ("uncorrected", cal.n_gallery)):
        out[name] = calibration_figures(cal, sim, test["t"], mu, sigma, n)
    out["sets_0.9"] = _sets(sim, test["t"], cal.coverage_cosine(0.9, mu, sigma))
    return out


def fit_timing(dim: int, n_q: int = 50_000, n_g: int = 10_000) -> dict:
    """Seconds of one fit on random unit vectors; a query is its item plus noise of norm about
    4, so its match is found often but not always, as in a real collection."""
    rng = np.random.default_rng(0)
    g = _unit(rng.standard_normal((n_g, dim), dtype=np.float32))
    t = rng.integers(0, n_g, n_q)
    q = _unit(g[t] + rng.standard_normal((n_q, dim), dtype=np.float32) * np.float32(4 / np.sqrt(dim)))
    out = {}
    for m in ("logistic-isotonic", "logistic"):
        t0 = time.perf_counter()
        fit_calibration(q, g, t, method=m)
        out[m] = round(time.perf_counter() - t0, 1)
    return {"queries": n_q, "gallery": n_g, "dim": dim, "seconds": out}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder trained on --data")
    p.add_argument("--data", required=True, help="the data folder with val and test splits")
    p.add_argument("--out", required=True, help="npz of the vectors (read when it exists)")
    p.add_argument("--extra", type=int, default=0, help="train images added to a larger test gallery")
    p.add_argument("--candidates", type=int, default=50, help="top hits per query the fit sees")
    p.add_argument("--no-timing", action="store_true", help="skip the 50k x 10k fit timing")
    args = p.parse_args(argv)
    v = load_vectors(args)
    val, test = _pairs(v, "val"), _pairs(v, "test")
    fit_on = str(v["fit_on"])
    res = {"run": args.run, "data": args.data, "fit_on": fit_on,
           "val_to_test": evaluate(val, test, args.candidates)}
    if "val" in fit_on:  # the weights saw val: calibrate on one half of test, score the other
        half = np.random.default_rng(0).permutation(len(test["g"]))
        cut = len(half) // 2
        fit, test = subset(test, np.sort(half[:cut])), subset(test, np.sort(half[cut:]))
        res["test_halves"] = evaluate(fit, test, args.candidates)
    else:
        fit = val
    cal = fit_calibration(fit["q"], fit["g"], fit["t"], candidates=args.candidates)
    n_test = len(test["g"])
    quarter = np.sort(np.random.default_rng(1).choice(n_test, n_test // 4, replace=False))
    res["smaller_gallery"] = prior_correction(cal, subset(test, quarter))
    if fit is val:  # val images are unseen by the weights: distractors of the same kind
        both = np.concatenate([test["g"], val["g"]])
        res["larger_gallery_val"] = prior_correction(cal, {**test, "g": both})
    if "train_img" in v:
        res["larger_gallery"] = prior_correction(cal, {**test, "g": np.concatenate(
            [test["g"], v["train_img"][:args.extra]])})
    if len(np.unique(fit["t"])) >= 50:
        res["one_caption_per_image"] = evaluate(first_captions(fit), first_captions(test),
                                                args.candidates)
    if not args.no_timing:
        res["fit_timing"] = fit_timing(v["val_img"].shape[1])
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
