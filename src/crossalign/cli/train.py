"""``crossalign train --data DIR --out RUN [--config FILE] [--set key=value ...] [--nproc N]``
and ``crossalign train --resume RUN``: :func:`crossalign.train`.

Under ``torchrun`` (or with ``--nproc N``, which starts torchrun itself) every process runs
this command; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import argparse

from crossalign.cli._call import call
from crossalign.cli.tune import add_recipe_arguments, add_tune_arguments, print_search


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an aligner on a data folder (or resume a run)",
                       description="Train a dual encoder; writes a run folder with config, splits, "
                                   "metrics.csv, TensorBoard logs and safetensors checkpoints. Given no "
                                   "recipe (no --config, no --set of a searched setting) and frozen towers, "
                                   "it searches one first, for 5 minutes after feature extraction.")
    add_recipe_arguments(p)
    p.add_argument("--nproc", type=int, default=0,
                   help="start N processes on this machine through torchrun (DDP; gloo on CPU, NCCL on GPU)")
    p.add_argument("--auto", action="store_true",
                   help="search the recipe on held-out training data first (as crossalign tune), then train "
                        "the chosen one, even when a recipe is given (it is then the search's base)")
    p.add_argument("--fixed", action="store_true",
                   help="train the recipe as given (the fixed defaults without --config or --set), no search")
    add_tune_arguments(p)
    p.set_defaults(func=run)


def summary(result) -> str:
    """Where the run is and what its validation said (or that validation was trained on)."""
    m = result.best_metrics
    lines = [f"run folder: {result.run_dir}"]
    figures = (f"t2i R@1 {m['val_t2i_R@1']:.2f}  i2t R@1 {m['val_i2t_R@1']:.2f}  rsum {m['val_rsum']:.1f}"
               if m else "no validation figures")
    if result.refit:
        lines.append(f"trained {result.best_epoch} epochs on train + val ({result.train_seconds:.0f} s); the val "
                     f"figures ({figures}) are of data it trained on, so they say nothing of new data")
    else:
        lines.append(f"best epoch {result.best_epoch}: val {figures}  ({result.train_seconds:.0f} s)")
    lines.append(f"held-out figures: crossalign evaluate {result.run_dir} --split test")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import train
    from crossalign.distributed import dist_info_from_env

    result = call(train, args)
    if dist_info_from_env().is_main:
        if result.tuned is not None:
            print_search(result.tuned)
        print(summary(result))
    return 0
