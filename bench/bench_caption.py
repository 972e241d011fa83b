"""Captions from the aligned space on a data set's test split: consensus against the nearest caption.

Every test image is captioned from the captions of the train split (never the test split's
own) and scored against its own captions with pycocoevalcap's BLEU-1..4 and CIDEr-D (words as
:func:`crossalign.caption.nearest.tokenize` splits them). With ``--grid`` the neighbour count, the
mixing weight and Devlin's *m* are first chosen on the val split (best BLEU-4, then CIDEr), and
the test split is scored once with the chosen setting. Prints one JSON object.

    python bench/bench_caption.py --run RUN --data ../shared/data/flickr8k --grid
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from crossalign.caption import nearest as caption
from crossalign.runs import open_run


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _points(scores: dict) -> dict:
    return {k: round(100 * v, 2) for k, v in scores.items()}


def grid(pool, rd, args) -> tuple[dict, list[dict]]:
    """Every setting of the grid scored on ``args.tune_split``; the best by BLEU-4, then CIDEr."""
    image_emb, _, refs = caption.queries_from_split(rd, args.tune_split)
    rows = []
    for n, w, m in itertools.product(_floats(args.neighbours), _floats(args.weights), _floats(args.top_m)):
        setting = {"neighbours": int(n), "weight": w, "top_m": int(m)}
        scores = caption.score_pool(pool, image_emb, refs, **setting, baseline=False)["consensus"]
        rows.append({**setting, **_points(scores)})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: (r["BLEU-4"], r["CIDEr"]))
    return {k: best[k] for k in ("neighbours", "weight", "top_m")}, rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder trained on --data")
    p.add_argument("--data", required=True, help="the data folder (e.g. ../shared/data/flickr8k)")
    p.add_argument("--split", default="test", help="the split scored (default test)")
    p.add_argument("--tune-split", default="val", help="the split --grid chooses on (default val)")
    p.add_argument("--grid", action="store_true", help="choose the setting on --tune-split first")
    p.add_argument("--neighbours", default=str(caption.DEFAULT_NEIGHBOURS),
                   help="grid values, comma-separated")
    p.add_argument("--weights", default=str(caption.DEFAULT_WEIGHT), help="grid values, comma-separated")
    p.add_argument("--top-m", default=str(caption.DEFAULT_TOP_M), help="grid values, comma-separated")
    args = p.parse_args(argv)
    if {args.split, args.tune_split} & {"train"}:
        p.error("the train split is the caption pool; score and tune on other splits")
    t0 = time.perf_counter()
    rd = open_run(args.run, args.data, quiet=True)
    pool = caption.pool_from_split(rd, "train")
    t_pool = time.perf_counter() - t0
    setting, rows = grid(pool, rd, args) if args.grid else (
        {"neighbours": int(_floats(args.neighbours)[0]), "weight": _floats(args.weights)[0],
         "top_m": int(_floats(args.top_m)[0])}, [])
    t0 = time.perf_counter()
    image_emb, _, refs = caption.queries_from_split(rd, args.split)
    scored = caption.score_pool(pool, image_emb, refs, **setting)
    result = {"run": str(args.run), "split": args.split, "images": len(refs),
              "pool_captions": len(pool.captions), "setting": setting,
              "chosen_on": args.tune_split if args.grid else "given",
              "consensus": _points(scored["consensus"]),
              "nearest_caption": _points(scored["nearest_caption"]),
              "pool_seconds": round(t_pool, 1), "score_seconds": round(time.perf_counter() - t0, 1),
              "grid": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
