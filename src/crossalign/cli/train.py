"""``crossalign train --data DIR --out RUN [--config FILE] [--set key=value ...] [--nproc N]``
and ``crossalign train --resume RUN``.

Under ``torchrun`` (or with ``--nproc N``, which starts torchrun itself) every process runs
this command; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("crossalign.train")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an aligner on a data folder (or resume a run)",
                       description="Train a dual encoder; writes a run folder with config, splits, "
                                   "metrics.csv, TensorBoard logs and safetensors checkpoints.")
    p.add_argument("--data", help="data folder (images/ + captions.txt, or another layout)")
    p.add_argument("--out", help="run folder to write")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run from its latest resume point")
    p.add_argument("--config", help="YAML config file (defaults otherwise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.epochs=10 (repeatable)")
    p.add_argument("--nproc", type=int, default=0,
                   help="start N processes on this machine through torchrun (DDP; gloo on CPU, NCCL on GPU)")
    p.add_argument("--auto", action="store_true",
                   help="search the recipe on held-out training data first (as crossalign tune), then train "
                        "the chosen one; with --resume, continue the search, then the fit. Given no recipe "
                        "(no --config, no --set of a searched setting) and frozen towers, train searches "
                        "by default, for 5 minutes after feature extraction")
    p.add_argument("--fixed", action="store_true",
                   help="train the recipe as given (the fixed defaults without --config or --set), no search")
    from crossalign.cli.tune import add_search_arguments

    add_search_arguments(p)
    p.set_defaults(func=run)


def _relaunch(nproc: int) -> int:
    """Run this same command under torchrun with ``nproc`` processes."""
    argv = sys.argv[1:]
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "crossalign", *cleaned]
    return subprocess.call(cmd)


def _searches(args: argparse.Namespace) -> bool:
    """Whether this command searches the recipe: --auto or a search option, else the default
    (a search when no recipe is named and the towers are frozen; see default_search_reason)."""
    from crossalign.errors import ConfigError

    asked = args.auto or args.trials is not None or args.budget is not None or bool(args.auto_towers)
    if asked and args.fixed:
        raise ConfigError("--fixed trains the recipe as given; it does not combine with --auto or the "
                          "search options (--trials, --budget, --auto-towers)")
    if args.resume and not args.fixed and (Path(args.resume) / "search.json").is_file():
        return True  # a run that searched (by default or --auto) continues its search, then its fit
    if asked or args.fixed or args.resume or args.nproc > 1 or "WORLD_SIZE" in os.environ:
        return asked
    from crossalign.config import load_config
    from crossalign.data.prepare import prepare_table
    from crossalign.train.search import DEFAULT_BUDGET, default_search_reason

    cfg = load_config(args.config, args.overrides)
    table, _ = prepare_table(args.data, cfg.data, quiet=True)
    reason = default_search_reason(cfg, args.config, args.overrides, len(table.select(["train", "val"]).caption))
    if reason is not None:
        log.info("training %s, no recipe search", reason)
        return False
    args.budget, args.count_extraction = f"{DEFAULT_BUDGET:g}s", False
    if not args.quiet:
        print(f"no recipe given: searching one on your training data for {DEFAULT_BUDGET / 60:g} minutes once "
              f"the features are cached, then training it (--fixed trains the fixed defaults; --budget sets "
              f"the time, extraction included)")
    return True


def run(args: argparse.Namespace) -> int:
    from crossalign.errors import ConfigError

    if not args.resume and not (args.data and args.out):
        raise ConfigError("give --data DIR and --out RUN (or --resume RUN)")
    args.auto = _searches(args)
    if args.auto and args.nproc > 1:
        raise ConfigError("--auto searches in one process; drop --nproc")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args.nproc)
    from crossalign.distributed import cleanup_distributed, init_distributed

    dist = init_distributed()
    try:
        if args.auto:
            from crossalign.cli.tune import run_auto

            result = run_auto(args, dist)
        elif args.resume:
            from crossalign.train.loop import resume

            result = resume(args.resume, progress=not args.quiet, dist=dist)
        else:
            from crossalign.api import train

            result = train(args.data, args.out, args.config, args.overrides, progress=not args.quiet, dist=dist)
    finally:
        cleanup_distributed()
    if dist.is_main:
        m = result.best_metrics
        print(f"run folder: {result.run_dir}")
        print(f"best epoch {result.best_epoch}: val t2i R@1 {m['val_t2i_R@1']:.2f}  i2t R@1 {m['val_i2t_R@1']:.2f}"
              f"  rsum {m['val_rsum']:.1f}  ({result.train_seconds:.0f} s)")
    return 0
