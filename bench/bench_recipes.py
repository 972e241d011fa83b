"""Recipes on data of several sizes: the searched recipe against the fixed defaults.

Builds Flickr8k subsets (about 500, 1,500 and 6,000 training images, with 1 and with 5
captions per image; validation about a sixth of the training images; always the standard
1,000-image test split with its 5 captions) and the demo data, then trains on each:

- ``previous``: the fixed defaults before feature dropout and the cosine schedule
  (``model.image.dropout=0``, ``model.text.dropout=0``, ``train.scheduler=none``);
- ``fixed``: today's fixed defaults (``crossalign train --fixed``);
- ``search``: ``crossalign train --auto --budget B`` (the search sees train + val only), which is
  what ``crossalign train`` with no options does on data of this kind (with a 5-minute budget).

Every run is scored on its test split; the standard error of each difference between two
recipes is a paired bootstrap over test images (an image is drawn with all its captions, the
same draw for every recipe; 1,000 draws). One training seed per recipe: the error bars are
those of the test sample, not of training. Prints a markdown table and writes ``results.json``
into ``--out``.

    python bench/bench_recipes.py --flickr ../shared/data/flickr8k --out /tmp/recipes --budget 4m

Subset images are hard links into the Flickr8k folder where the file system allows (copies
otherwise), so the feature cache, keyed by file content, serves every subset.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SUBSETS = [(500, 1), (500, 5), (1500, 1), (1500, 5), (6000, 1), (6000, 5)]
RECIPES = {
    "previous": ["model.image.dropout=0", "model.text.dropout=0", "train.scheduler=none",
                 "train.warmup_steps=0"],
    "fixed": [],
}
DRAWS = 1000


def _read_captions(root: Path) -> dict[str, list[str]]:
    import csv

    caps: dict[str, list[str]] = {}
    with open(root / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            caps.setdefault(row["image"], []).append(row["caption"])
    return caps


def _split(root: Path, name: str) -> list[str]:
    return [s.strip() for s in (root / "splits" / f"{name}.txt").read_text().splitlines() if s.strip()]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_subset(flickr: Path, out: Path, n_train: int, n_caps: int, seed: int = 0) -> Path:
    """A data folder of ``n_train`` training images (nested across sizes: a seeded order of the
    standard train split), ``n_train // 6`` validation images, the whole test split; ``n_caps``
    captions per training and validation image, five per test image."""
    folder = out / f"flickr{n_train}x{n_caps}"
    if (folder / "captions.txt").is_file():
        return folder
    caps = _read_captions(flickr)
    train, val, test = _split(flickr, "train"), _split(flickr, "val"), _split(flickr, "test")
    random.Random(seed).shuffle(train)
    random.Random(seed + 1).shuffle(val)
    train, val = train[:n_train], val[:min(len(val), max(1, n_train // 6))]
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "splits").mkdir()
    import csv

    with open(tmp / "captions.txt", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for split, names in (("train", train), ("val", val), ("test", test)):
            (tmp / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
            for name in names:
                _link(flickr / "images" / name, tmp / "images" / name)
                for c in caps[name][:n_caps if split != "test" else 5]:
                    w.writerow([name, c])
    tmp.rename(folder)
    return folder


def make_demo(out: Path, cli: str) -> Path:
    folder = out / "demo"
    if not (folder / "captions.txt").is_file():
        subprocess.run([cli, "synth", "--out", str(folder), "--n", "600", "--seed", "0"], check=True,
                       stdout=subprocess.DEVNULL)
    return folder


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def train_and_score(cli: str, data: Path, run: Path, recipe: str, budget: str) -> dict:
    """Train ``recipe`` on ``data`` into ``run`` (kept when already done) and score its test split."""
    lists = run / "test-lists.npz"
    done = run / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(run, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cli, "train", "--data", str(data), "--out", str(run)]
    cmd += ["--auto", "--budget", budget] if recipe == "search" else ["--fixed"]
    for s in RECIPES.get(recipe, []):
        cmd += ["--set", s]
    seconds = _run(cmd, run.with_suffix(".train.log"))
    _run([cli, "evaluate", str(run), "--split", "test", "--json", str(run / "test.json"), "--lists", str(lists)],
         run.with_suffix(".eval.log"))
    metrics = json.loads((run / "test.json").read_text())
    out = {"recipe": recipe, "seconds": round(seconds, 1), "test": metrics}
    if recipe == "search":
        info = json.loads((run / "search.json").read_text())
        v = info["validation"]
        out["search"] = {"validation": "holdout" if v["kind"] == "holdout" else f"{v['folds']}-fold CV",
                         "validation_described": v["description"],
                         "trials": info.get("trials_finished"), "best": info["best"]}
    done.write_text(json.dumps(out, indent=2))
    return out


def _hits(lists: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per caption: text->image hit@1 and its image; per image: image->text hit@1."""
    z = np.load(lists)
    return (z["t2i_ranks"] == 1).astype(float), np.asarray(z["caption_image"]), (z["i2t_ranks"] == 1).astype(float)


def bootstrap(runs: dict[str, Path], seed: int = 0) -> dict:
    """R@1 both ways per recipe and the paired-bootstrap standard error of every difference."""
    hits = {name: _hits(run / "test-lists.npz") for name, run in runs.items()}
    first = next(iter(hits.values()))
    n_img = len(first[2])
    caps_of = [np.flatnonzero(first[1] == i) for i in range(n_img)]
    rng = np.random.default_rng(seed)
    draws = {name: ([], []) for name in hits}
    for _ in range(DRAWS):
        pick = rng.integers(0, n_img, n_img)
        cap_idx = np.concatenate([caps_of[i] for i in pick])
        for name, (t2i, _, i2t) in hits.items():
            draws[name][0].append(100 * t2i[cap_idx].mean())
            draws[name][1].append(100 * i2t[pick].mean())
    out = {"r1": {n: (100 * h[0].mean(), 100 * h[2].mean()) for n, h in hits.items()}, "se_diff": {}}
    names = list(hits)
    for a in names:
        for b in names:
            if a < b:
                out["se_diff"][f"{a}-{b}"] = tuple(float(np.std(np.subtract(draws[a][k], draws[b][k]))) for k in (0, 1))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flickr", required=True, help="the Flickr8k folder (captions.txt, images/, splits/)")
    p.add_argument("--out", required=True, help="folder for the subsets and the runs (kept; finished runs are reused)")
    p.add_argument("--budget", default="4m", help="time budget of each search (default 4m)")
    p.add_argument("--sets", default="", help="comma-separated names to run (default all), e.g. flickr500x1,demo")
    p.add_argument("--recipes", default="previous,fixed,search",
                   help="the recipes to train (default all three; the bootstrap table needs all three)")
    args = p.parse_args(argv)
    recipes = [r for r in args.recipes.split(",") if r]
    cli = str(Path(sys.executable).with_name("crossalign"))
    out = Path(args.out)
    sets = {f"flickr{n}x{c}": (n, c) for n, c in SUBSETS}
    wanted = [s for s in args.sets.split(",") if s] or [*sets, "demo"]
    results = {}
    for name in wanted:
        data = make_demo(out / "data", cli) if name == "demo" else make_subset(Path(args.flickr), out / "data", *sets[name])
        runs = {}
        for recipe in recipes:
            runs[recipe] = out / "runs" / name / recipe
            r = train_and_score(cli, data, runs[recipe], recipe, args.budget)
            print(f"{name} {recipe}: R@1 {r['test']['t2i_R@1']:.2f} / {r['test']['i2t_R@1']:.2f} "
                  f"in {r['seconds']:.0f} s", flush=True)
            results.setdefault(name, {})[recipe] = r
        if len(runs) == 3:
            results[name]["bootstrap"] = bootstrap(runs)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    if all("bootstrap" in r for r in results.values()):
        print(table(results))
    return results


def table(results: dict) -> str:
    rows = ["| data | previous t→i / i→t | fixed t→i / i→t | search t→i / i→t | search − best fixed (± SE) | "
            "search chose | search + fit |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        b = r["bootstrap"]
        cells = [f"{b['r1'][k][0]:.1f} / {b['r1'][k][1]:.1f}" for k in ("previous", "fixed", "search")]
        diffs = []
        for k in (0, 1):
            best = max(("previous", "fixed"), key=lambda x: b["r1"][x][k])
            se = b["se_diff"][f"{min(best, 'search')}-{max(best, 'search')}"][k]
            diffs.append(f"{b['r1']['search'][k] - b['r1'][best][k]:+.1f} ± {se:.1f}")
        s = r["search"].get("search", {})
        best = s.get("best", {}).get("params", {})
        chose = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best.items())
        rows.append(f"| {name} | {' | '.join(cells)} | {' / '.join(diffs)} | {s.get('trials', '?')} trials, "
                    f"{s.get('validation', '?')}: {chose} | {r['search']['seconds']:.0f} s |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
