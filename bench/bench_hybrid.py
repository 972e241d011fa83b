"""Search by words, by meaning and both on Flickr8k: four captions of each image indexed, the
fifth the query.

For each of the val and test splits (1,000 images each), an index holds every image with four of
its five captions (the keyword index reads them); the fifth caption of each image is the query, and
a query hits when its own image ranks first (text→image R@1), also R@5 and R@10. The fusion weight
of the keyword ranking is chosen on val (the vector ranking's weight is 1) and applied to test.

    python bench/bench_hybrid.py --run runs/f8k --data ../shared/data/flickr8k --out /tmp/hybrid

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

import crossalign
from crossalign.index.search import open_index

KEYWORD_WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
DEPTH = 10


def _captions(data: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(data / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["image"], []).append(row["caption"])
    return out


def _collection(data: Path, split: str, folder: Path) -> dict[str, str]:
    """A data folder of the split's images with their first four captions (the images linked,
    not copied); returns image -> the held-out fifth caption."""
    caps = _captions(data)
    ids = (data / "splits" / f"{split}.txt").read_text().split()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "images").symlink_to((data / "images").resolve())
    with open(folder / "captions.txt", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i in ids:
            for c in caps[i][:4]:
                w.writerow([i, c])
    return {i: caps[i][4] for i in ids}


def _ranks(ix, held: dict[str, str], mode: str, fusion=(1.0, 1.0)) -> np.ndarray:
    """The rank (1 = first, DEPTH + 1 = not in the top DEPTH) of each query's own image."""
    out = []
    for name, query in held.items():
        hits = ix.search(text=query, k=DEPTH, mode=mode, fusion=fusion).hits
        names = [h.name for h in hits]
        out.append(names.index(name) + 1 if name in names else DEPTH + 1)
    return np.array(out)


def _recalls(ranks: np.ndarray) -> dict:
    return {f"R@{k}": round(float(np.mean(ranks <= k)) * 100, 2) for k in (1, 5, 10)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default="../shared/data/flickr8k")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    result: dict = {"run": args.run, "queries_per_split": None}
    ixs, held = {}, {}
    for split in ("val", "test"):
        held[split] = _collection(data, split, out / split / "data")
        t0 = time.perf_counter()
        crossalign.index(args.run, out / split / "index", data=out / split / "data", progress=False)
        result[f"{split}_index_seconds"] = round(time.perf_counter() - t0, 1)
        ixs[split] = open_index(out / split / "index")
    result["queries_per_split"] = len(held["test"])
    ranks = {s: {m: _ranks(ixs[s], held[s], m) for m in ("vector", "keyword")} for s in ixs}
    t0 = time.perf_counter()
    val_fused = {w: _recalls(_ranks(ixs["val"], held["val"], "hybrid", (1.0, w)))
                 for w in KEYWORD_WEIGHTS}
    best = max(KEYWORD_WEIGHTS, key=lambda w: (val_fused[w]["R@1"], val_fused[w]["R@5"], -abs(w - 1)))
    result["val"] = {"vector": _recalls(ranks["val"]["vector"]),
                     "keyword": _recalls(ranks["val"]["keyword"]),
                     "hybrid_by_keyword_weight": {str(w): r for w, r in val_fused.items()}}
    result["chosen_keyword_weight"] = best
    test_fused = _ranks(ixs["test"], held["test"], "hybrid", (1.0, best))
    result["test"] = {"vector": _recalls(ranks["test"]["vector"]),
                      "keyword": _recalls(ranks["test"]["keyword"]),
                      f"hybrid (1,{best})": _recalls(test_fused),
                      "hybrid (1,1)": _recalls(_ranks(ixs["test"], held["test"], "hybrid"))}
    result["fusion_sweep_seconds"] = round(time.perf_counter() - t0, 1)
    for ix in ixs.values():
        ix.close()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
