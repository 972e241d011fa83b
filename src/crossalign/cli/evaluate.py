"""``crossalign evaluate RUN --data DIR [--split test] [--json FILE]``"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="retrieval metrics of a trained run",
                       description="Recall@K, median rank and more, in both directions, from embeddings.")
    p.add_argument("run", help="run folder written by 'crossalign train'")
    p.add_argument("--data", required=True, help="data folder")
    p.add_argument("--split", default="test", help="train, val, test or all (default test)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--k", default="1,5,10", help="the K of Recall@K, comma-separated")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def format_table(metrics: dict, ks: list[int]) -> str:
    """Metrics as a small text table, one row per direction."""
    head = ["direction"] + [f"R@{k}" for k in ks] + ["median rank", "mean rank", "MRR"]
    rows = []
    for d, label in (("t2i", "text->image"), ("i2t", "image->text")):
        rows.append([label] + [f"{metrics[f'{d}_R@{k}']:.2f}" for k in ks]
                    + [f"{metrics[f'{d}_median_rank']:.0f}", f"{metrics[f'{d}_mean_rank']:.1f}",
                       f"{metrics[f'{d}_mrr']:.3f}"])
    widths = [max(len(str(r[c])) for r in [head] + rows) for c in range(len(head))]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(f"{metrics['n_images']} images, {metrics['n_captions']} captions ({metrics['split']} split); "
               f"rsum {metrics['rsum']:.1f}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from crossalign._io import atomic_write_json
    from crossalign.evaluate.run import evaluate

    ks = [int(k) for k in args.k.split(",") if k.strip()]
    metrics = evaluate(args.run, args.data, args.split, ks, args.checkpoint, args.device, progress=not args.quiet)
    print(format_table(metrics, ks))
    if args.json:
        atomic_write_json(args.json, metrics)
    return 0
