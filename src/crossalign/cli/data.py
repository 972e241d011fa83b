"""``crossalign data synth --out DIR``: tools for data folders."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make, check and convert data folders")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="generate the built-in shapes data set")
    s.add_argument("--out", required=True, help="folder to write (images/ + captions.txt)")
    s.add_argument("--n", type=int, default=600, help="number of images (default 600)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from crossalign.data.synthetic import make_shapes_dataset

    out = make_shapes_dataset(args.out, args.n, args.seed, args.size)
    print(f"wrote {args.n} images with 5 captions each to {out}")
    return 0
