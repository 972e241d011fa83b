"""``crossalign tune --data DIR --out RUN [--trials N] [--budget 10m] [--auto-towers A,B] ...``
and ``crossalign tune --resume RUN``: the recipe search of ``train --auto``, without the final fit.
"""

from __future__ import annotations

import argparse
import logging


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """The search options, shared by ``tune`` and ``train --auto``."""
    g = p.add_argument_group("recipe search")
    p.set_defaults(count_extraction=True)  # train's default search sets False: its budget starts after extraction
    g.add_argument("--trials", type=int, default=None,
                   help="trials in the study in all, resumes included (default 30 without --budget)")
    g.add_argument("--budget", default=None, metavar="TIME",
                   help="time for the whole search, feature extraction included: 90s, 10m, 1.5h")
    g.add_argument("--auto-towers", default="", metavar="A,B",
                   help="frozen image towers to choose among, each extracted once: lite0,lite0+lite2")
    g.add_argument("--folds", type=int, default=5, help="K of the cross-validation (default 5)")
    g.add_argument("--min-val-images", type=int, default=1000,
                   help="below this many val images, score by K-fold over train + val (default 1000)")
    g.add_argument("--objective", default="rsum", choices=["rsum", "r1"],
                   help="validation R-sum (default) or the mean R@1 of both directions")
    g.add_argument("--max-epochs", type=int, default=40, help="the most epochs a trial may train (default 40)")
    g.add_argument("--search-seed", type=int, default=0, help="seed of the sampler and the folds (default 0)")
    g.add_argument("--no-prune", action="store_true", help="run every trial to its last epoch")
    g.add_argument("--keep", default="", metavar="P,Q",
                   help="parameters not to search (the base config's value), e.g. ranking,loss")
    g.add_argument("--no-refit", action="store_true",
                   help="fit the chosen recipe on train alone (default: train + val, at the chosen epoch count)")


def search_config(args: argparse.Namespace):
    """The SearchConfig the options describe."""
    from crossalign.train.search import SearchConfig, parse_budget

    towers = tuple(t.strip() for t in args.auto_towers.split(",") if t.strip())
    return SearchConfig(trials=args.trials or 0, budget=parse_budget(args.budget) if args.budget else 0.0,
                        towers=towers, seed=args.search_seed, folds=args.folds,
                        min_val_images=args.min_val_images, objective=args.objective,
                        max_epochs=args.max_epochs, prune=not args.no_prune,
                        count_extraction=args.count_extraction, refit=not args.no_refit,
                        keep=tuple(k.strip() for k in args.keep.split(",") if k.strip()))


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; crossalign prints its own line per trial."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)


def print_search(result) -> None:
    """What the search chose, how it scored trials, and where its records are."""
    print(f"search: {len(result.trials)} trials in {result.seconds:.0f} s; scored by "
          f"{result.validation['description']}")
    print(f"chosen: trial {result.best_trial}, score {result.best_score:.2f}, "
          f"{result.config.train.epochs} epochs; recipe in {result.run_dir / 'config.yaml'}, "
          f"every trial in {result.run_dir / 'trials.csv'}")


def run_auto(args: argparse.Namespace, dist):
    """``crossalign train --auto``: search, print what was chosen, train it; returns the TrainResult."""
    from crossalign.config import load_config
    from crossalign.errors import ConfigError
    from crossalign.train.search import auto_train

    if dist.world_size > 1:
        raise ConfigError("--auto searches in one process; start it without --nproc or torchrun")
    quiet_optuna()
    base = None if args.resume else load_config(args.config, args.overrides)
    found, result = auto_train(args.data, args.resume or args.out, base, search_config(args),
                               progress=not args.quiet, resume=bool(args.resume))
    print_search(found)
    return result


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search the recipe on your own data (frozen towers, cached features)",
                       description="Search learning rate, batch size, schedule and epochs, feature dropout, "
                                   "temperature, head, loss and ranking on held-out training data "
                                   "(never the test split); writes study.journal, trials.csv, search.json "
                                   "and the chosen config.yaml.")
    p.add_argument("--data", help="data folder (images/ + captions.txt, or another layout)")
    p.add_argument("--out", help="folder to write the search into")
    p.add_argument("--resume", metavar="RUN", help="continue the search stored in RUN")
    p.add_argument("--config", help="YAML config file: the base recipe (defaults otherwise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of the base recipe (repeatable)")
    add_search_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import tune
    from crossalign.errors import ConfigError

    if not args.resume and not (args.data and args.out):
        raise ConfigError("give --data DIR and --out RUN (or --resume RUN)")
    quiet_optuna()
    search = search_config(args)
    if args.resume:
        result = tune(None, args.resume, resume=True, progress=not args.quiet,
                      trials=args.trials, budget=search.budget if args.budget else None)
    else:
        result = tune(args.data, args.out, args.config, args.overrides, search=search, progress=not args.quiet)
    print_search(result)
    return 0
