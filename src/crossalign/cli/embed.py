"""``crossalign embed RUN --data DATA --out DIR [--shard i/N] [--partition-size 10000]``"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed a collection into partitions, one task of N at a time",
                       description="Embed the images and captions of DATA with a trained run into "
                                   "partitions under DIR (vectors as .npy, metadata as Parquet), one per tar "
                                   "shard or per --partition-size images of any other layout. Task i of N "
                                   "(--shard i/N) takes every N-th partition and skips those already written, "
                                   "so any scheduler can run the N tasks, and run one again after a failure. "
                                   "'crossalign index RUN --from-embeddings DIR' builds the index from them.")
    p.add_argument("run", help="run folder written by 'crossalign train'")
    p.add_argument("--data",
                   help="a data set in any layout; tar shards also as a pattern: 'shards/train-{000..099}.tar'")
    p.add_argument("--out", metavar="DIR", help="folder of the partitions (required)")
    p.add_argument("--shard", default="", metavar="i/N",
                   help="this task's share: i of N (default 0/1; under torchrun, RANK/WORLD_SIZE)")
    p.add_argument("--partition-size", type=int, default=10_000,
                   help="images per partition, for layouts other than tar shards (default 10000)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import embed
    from crossalign.cli._call import call

    s = call(embed, args)
    i, n = s.shard
    print(f"task {i}/{n}: {len(s.units)} of {s.n_units} partitions are this task's; {len(s.written)} written, "
          f"{len(s.skipped)} already done, in {args.out}")
    return 0
