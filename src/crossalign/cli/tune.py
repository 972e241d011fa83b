"""``crossalign tune --data DIR --out RUN [--trials N] [--budget 10m] [--towers A,B] ...`` and
``crossalign tune --resume RUN``: :func:`crossalign.tune`, the recipe search without the final fit."""

from __future__ import annotations

import argparse

from crossalign.cli._call import call, names


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """Where the data, the run folder and the (base) recipe come from: train's and tune's."""
    p.add_argument("--data", help="data folder (images/ + captions.txt, or another layout)")
    p.add_argument("--out", help="folder to write")
    p.add_argument("--resume", metavar="RUN", help="continue the stopped run (or search) in RUN")
    p.add_argument("--config", help="YAML config file: the recipe, or the base of a search (defaults otherwise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.epochs=10 (repeatable)")


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    """How a recipe search runs: tune's and train's."""
    g = p.add_argument_group("recipe search")
    g.add_argument("--trials", type=int, default=None,
                   help="trials in the study in all, resumes included (default 30 without --budget)")
    g.add_argument("--budget", default=None, metavar="TIME",
                   help="time for the whole search, feature extraction included: 90s, 10m, 1.5h")
    g.add_argument("--towers", type=names, default=(), metavar="A,B",
                   help="frozen image towers to choose among, each extracted once: lite0,lite0+lite2")
    g.add_argument("--folds", type=int, default=5, help="K of the cross-validation (default 5)")
    g.add_argument("--min-val-images", type=int, default=1000,
                   help="below this many val images, score by K-fold over train + val (default 1000)")
    g.add_argument("--objective", default="rsum", choices=["rsum", "r1"],
                   help="validation R-sum (default) or the mean R@1 of both directions")
    g.add_argument("--max-epochs", type=int, default=40, help="the most epochs a trial may train (default 40)")
    g.add_argument("--search-seed", type=int, default=0, help="seed of the sampler and the folds (default 0)")
    g.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                   help="stop trials that fall behind the median early (default; --no-prune runs each to its end)")
    g.add_argument("--fix", type=names, default=(), metavar="P,Q",
                   help="searched settings to hold at the base recipe's value, e.g. ranking,loss")
    g.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                   help="fit the chosen recipe on train + val at the chosen epoch count (default; "
                        "--no-refit: on train alone)")


def print_search(result) -> None:
    """What the search chose, how it scored trials, and where its records are."""
    print(f"search: {len(result.trials)} trials in {result.seconds:.0f} s; scored by "
          f"{result.validation['description']}")
    print(f"chosen: trial {result.best_trial}, score {result.best_score:.2f}, "
          f"{result.config.train.epochs} epochs; recipe in {result.run_dir / 'config.yaml'}, "
          f"every trial in {result.run_dir / 'trials.csv'}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search the recipe on your own data (frozen towers, cached features)",
                       description="Search learning rate, batch size, schedule and epochs, feature dropout, "
                                   "temperature, head, loss and ranking on held-out training data "
                                   "(never the test split); writes study.journal, trials.csv, search.json "
                                   "and the chosen config.yaml.")
    add_recipe_arguments(p)
    add_tune_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import tune

    print_search(call(tune, args))
    return 0
