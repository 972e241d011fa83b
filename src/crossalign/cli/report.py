"""``crossalign report RUN [RUN ...] --data DIR --out report.html [--split test] [--k 8] [--seed 0]
[--label-column COL] [--explain N]``"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one HTML page of curves, heatmap, galleries and ranks for runs",
                       description="Write a self-contained HTML report (thumbnails and plots embedded) for one "
                                   "or more runs; every plot is also saved as a PNG next to it.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) written by 'crossalign train'")
    p.add_argument("--data", help="data folder the runs were trained on (required)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--split", default="test", help="split for the heatmap, galleries and ranks (default test)")
    p.add_argument("--gallery", type=int, default=8, help="items in the heatmap and queries per gallery (default 8)")
    p.add_argument("--top", type=int, default=5, help="neighbours shown per gallery query (default 5)")
    p.add_argument("--seed", type=int, default=0, help="fixes the sampled items (default 0)")
    p.add_argument("--label-column", default="", help="also show label agreement by this column "
                   "(per-class chart, precision@K, R-precision, MAP@R beside chance)")
    p.add_argument("--explain", type=int, default=-1, metavar="N",
                   help="explain the first hit of the first N queries of each gallery (heat over the image, "
                        "words shaded); default every query, 0 none")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import report
    from crossalign.cli._call import call

    result = call(report, args)
    print(f"wrote {result.html} and {len(result.plots)} PNG plots beside it ({result.seconds:.1f} s)")
    return 0
