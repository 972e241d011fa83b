"""How long ``crossalign check`` takes on a data set, whole and in parts.

Runs the check the command runs (read, validate, split, decode every image, caption
checks with the text tower's tokenizer) several times, then once without decoding
images, and prints one JSON object with the figures.

    python bench/bench_data_check.py --data ../shared/data/flickr8k --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from crossalign.config import load_config
from crossalign.data.doctor import check_data, token_counter


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0 = one per core)")
    args = p.parse_args(argv)
    cfg = load_config()
    counter = lambda: token_counter(cfg.model.text)  # noqa: E731
    walls, report = [], {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        report = check_data(args.data, cfg.data, cfg.model.text.max_tokens, counter, workers=args.workers)
        walls.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    check_data(args.data, cfg.data, cfg.model.text.max_tokens, counter, images=False)
    no_images = time.perf_counter() - t0
    out = {
        "data": args.data, "cpu_cores": os.cpu_count(), "workers": args.workers or os.cpu_count(),
        "images": report["images"], "captions": report["captions"], "splits": report["splits"],
        "errors": report["errors"], "warnings": report["warnings"],
        "check_seconds": [round(w, 2) for w in walls], "check_seconds_median": round(statistics.median(walls), 2),
        "images_per_second": round(report["images"] / statistics.median(walls), 1),
        "without_image_decoding_seconds": round(no_images, 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
