"""Flickr8k with the slice's recipe: frozen EfficientNet-Lite0 + MiniLM, linear heads.

Runs training twice on the same data: first with an empty feature cache (feature
extraction included), then again with the warm cache, and evaluates the best checkpoint
of the first run on the test split. Prints one JSON object with the figures.

    python bench/bench_flickr.py --data ../shared/data/flickr8k --out runs/bench-flickr
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import crossalign.api


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="folder for the two run folders")
    p.add_argument("--cache", help="feature cache folder (default: a new empty one)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    cache = args.cache or tempfile.mkdtemp(prefix="crossalign-bench-cache-")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"cache.dir={cache}", *args.overrides]
    t0 = time.perf_counter()
    cold = crossalign.api.train(args.data, out / "cold", overrides=sets, progress=False)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    crossalign.api.train(args.data, out / "warm", overrides=sets, progress=False)
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = crossalign.evaluate(out / "cold", args.data, split="test", progress=False)
    t_eval = time.perf_counter() - t0
    result = {
        "first_run_seconds_with_feature_extraction": round(t_cold, 1),
        "second_run_seconds_warm_cache": round(t_warm, 1),
        "evaluate_seconds_warm_cache": round(t_eval, 1),
        "best_epoch": cold.best_epoch,
        "epochs_run": len(cold.history),
        "test": {k: round(v, 2) if isinstance(v, float) else v for k, v in test.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
