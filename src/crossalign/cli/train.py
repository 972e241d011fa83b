"""``crossalign train --data DIR --out RUN [--config FILE] [--set key=value ...]``"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an aligner on a data folder",
                       description="Train a dual encoder; writes a run folder with config, splits, "
                                   "metrics.csv and safetensors checkpoints.")
    p.add_argument("--data", required=True, help="data folder (images/ + captions.txt, or another layout)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--config", help="YAML config file (defaults otherwise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.epochs=10 (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import train

    result = train(args.data, args.out, args.config, args.overrides, progress=not args.quiet)
    m = result.best_metrics
    print(f"run folder: {result.run_dir}")
    print(f"best epoch {result.best_epoch}: val t2i R@1 {m['val_t2i_R@1']:.2f}  i2t R@1 {m['val_i2t_R@1']:.2f}  "
          f"rsum {m['val_rsum']:.1f}  ({result.train_seconds:.0f} s)")
    return 0
