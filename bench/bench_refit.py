"""The refit after a recipe search: the chosen recipe fitted on train alone and on train + val.

For each data set, ``crossalign tune`` chooses a recipe (the search sees train + val only), then
that one recipe is trained twice with the same seed: ``train.fit_on=train`` (the fit before the
refit existed) and ``train.fit_on=train+val`` (what ``crossalign train --auto`` now does). Both are
scored on the test split, and the standard error of their difference is a paired bootstrap over
test images (see ``bench_recipes.bootstrap``). Data sets are the subsets of ``bench_recipes``
(the first n of a seeded order of the Flickr8k train split, with n/6 val images) and the demo data.

    python bench/bench_refit.py --flickr ../shared/data/flickr8k --out /tmp/refit --budget 2m \\
        --sets flickr500x1,flickr1500x5,demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipes import SUBSETS, _run, bootstrap, make_demo, make_subset  # noqa: E402


def fit_and_score(cli: str, data: Path, search: Path, run: Path, fit_on: str) -> dict:
    """Train the searched recipe with ``train.fit_on``, then score its test split (lists kept)."""
    if not (run / "test.json").is_file():
        seconds = _run([cli, "train", "--data", str(data), "--out", str(run), "--config",
                        str(search / "config.yaml"), "--set", f"train.fit_on={fit_on}",
                        "--set", "train.tensorboard=false"], run.with_suffix(".train.log"))
        _run([cli, "evaluate", str(run), "--split", "test", "--json", str(run / "test.json"), "--lists",
              str(run / "test-lists.npz")], run.with_suffix(".eval.log"))
        (run / "seconds.txt").write_text(f"{seconds:.1f}\n")
    return json.loads((run / "test.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flickr", required=True, help="the Flickr8k folder (captions.txt, images/, splits/)")
    p.add_argument("--out", required=True, help="folder for the subsets, searches and runs (finished ones reused)")
    p.add_argument("--budget", default="2m", help="time budget of each search (default 2m)")
    p.add_argument("--sets", default="flickr500x1,flickr1500x5,demo", help="comma-separated data set names")
    args = p.parse_args(argv)
    cli = str(Path(sys.executable).with_name("crossalign"))
    out = Path(args.out)
    sets = {f"flickr{n}x{c}": (n, c) for n, c in SUBSETS}
    results = {}
    for name in [s for s in args.sets.split(",") if s]:
        data = make_demo(out / "data", cli) if name == "demo" else make_subset(Path(args.flickr), out / "data",
                                                                               *sets[name])
        search = out / "runs" / name / "search"
        search.parent.mkdir(parents=True, exist_ok=True)  # the logs go beside the runs
        if not (search / "config.yaml").is_file():
            _run([cli, "tune", "--data", str(data), "--out", str(search), "--budget", args.budget],
                 search.with_suffix(".log"))
        runs = {fit_on: out / "runs" / name / fit_on.replace("+", "_") for fit_on in ("train", "train+val")}
        tests = {fit_on: fit_and_score(cli, data, search, run, fit_on) for fit_on, run in runs.items()}
        b = bootstrap({fit_on: run for fit_on, run in runs.items()})
        se = b["se_diff"]["train-train+val"]
        r1 = b["r1"]
        results[name] = {"r1": r1, "se_diff": se,
                         "rsum": {k: t["rsum"] for k, t in tests.items()},
                         "chosen": json.loads((search / "search.json").read_text())["best"]}
        print(f"{name}: train {r1['train'][0]:.1f} / {r1['train'][1]:.1f}, train+val {r1['train+val'][0]:.1f} / "
              f"{r1['train+val'][1]:.1f}; difference {r1['train+val'][0] - r1['train'][0]:+.1f} ± {se[0]:.1f} / "
              f"{r1['train+val'][1] - r1['train'][1]:+.1f} ± {se[1]:.1f}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
