"""``crossalign train --data DIR --out RUN [--config FILE] [--set key=value ...] [--nproc N]``
and ``crossalign train --resume RUN``.

Under ``torchrun`` (or with ``--nproc N``, which starts torchrun itself) every process runs
this command; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


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
                        "the chosen one; with --resume, continue the search, then the fit")
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


def run(args: argparse.Namespace) -> int:
    from crossalign.errors import ConfigError

    if args.auto and args.nproc > 1:
        raise ConfigError("--auto searches in one process; drop --nproc")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args.nproc)
    if not args.resume and not (args.data and args.out):
        raise ConfigError("give --data DIR and --out RUN (or --resume RUN)")
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
