"""``crossalign evaluate RUN [--data DIR] [--split test|all] [--gap] [--label-column COL] [--json FILE] [--matrix FILE.npy]``"""

from __future__ import annotations

import argparse

from crossalign.errors import ConfigError
from crossalign.evaluate.tables import (format_gap, format_labels, format_ranking, format_seed,
                                        format_table, format_wise)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="retrieval metrics of a trained run",
                       description="Recall@K, median and mean rank, MRR, top-1 and R-sum in both directions, "
                                   "from embeddings, with the chance level beside each number.")
    p.add_argument("run", metavar="RUN_OR_PAIR",
                   help="run folder written by 'crossalign train', or a pretrained pair measured zero-shot "
                        "(hf:FOLDER, open_clip:NAME with --pair-weights) on --data's own split")
    p.add_argument("--data", help="data folder (default: the one the run was trained on, from its run.json)")
    p.add_argument("--split", default="test", help="train, val, test, several joined by commas, or all (default test)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--k", default="1,5,10", help="the K of Recall@K, comma-separated")
    p.add_argument("--gap", action="store_true",
                   help="also score items the model trained on (train split) and held-out items apart")
    p.add_argument("--seen", default="match", choices=["match", "all"],
                   help="with --gap: sample the train images down to the held-out count (match, default) or keep all")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")
    p.add_argument("--matrix", metavar="FILE.npy",
                   help="write the cosine distance matrix (rows images, columns captions) and FILE.json "
                        "naming them; refused for very large sets")
    p.add_argument("--float16", action="store_true", help="store the matrix as float16")
    p.add_argument("--lists", metavar="FILE.npz", help="write per-query ranks and top-K lists, both directions")
    p.add_argument("--lists-k", type=int, default=10, help="length of those lists (default 10)")
    p.add_argument("--ranking", choices=["plain", "qbnorm"],
                   help="plain cosine, or qbnorm: query-bank normalisation over training queries "
                        "(default: the run's evaluate.ranking)")
    p.add_argument("--qb-beta", type=float, help="qbnorm inverse temperature (default evaluate.qb_beta)")
    p.add_argument("--qb-bank", type=int, help="qbnorm: training images in the bank, 0 = all (evaluate.qb_bank)")
    p.add_argument("--protocol", default="standard", choices=["standard", "seed"],
                   help="seed: also top-1 accuracy over every item (training ones included) and for "
                        "held-out items ranked among all, as the seed reports counted")
    p.add_argument("--label-column", metavar="COLUMN",
                   help="also the label agreement of the rankings by this label column (e.g. genre; several "
                        "classes joined by '|'): precision@K, R-precision, MAP@R and Jaccard@K beside chance, "
                        "per class too")
    p.add_argument("--pair-weights", default="", metavar="FILE_OR_TAG",
                   help="the weights of an open_clip:NAME pair (a file or a pretrained tag)")
    p.add_argument("--wise", metavar="A,B,...",
                   help="a pretrained pair's run: evaluate the WiSE-FT weight ensembles (1 - a) * zero-shot "
                        "+ a * fine-tuned for each a (0 = the checkpoint as it was, 1 = the run), one table")
    p.add_argument("--wise-data", metavar="DIR",
                   help="with --wise: also a second data set the run never trained on (all its items), "
                        "to see what the fine-tune kept of the checkpoint's generality")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign._io import atomic_write_json
    from crossalign.evaluate.run import evaluate

    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if args.float16 and not args.matrix:
        raise ConfigError("--float16 applies to --matrix; give --matrix FILE.npy too")
    if args.wise_data and not args.wise:
        raise ConfigError("--wise-data goes with --wise A,B,...")
    if args.wise:
        return _run_wise(args, ks)
    metrics = evaluate(args.run, args.data, args.split, ks, args.checkpoint, args.device,
                       progress=not args.quiet, gap=args.gap, seen=args.seen, seed=args.seed,
                       matrix=args.matrix, float16=args.float16, lists=args.lists, lists_k=args.lists_k,
                       pair_weights=args.pair_weights,
                       ranking=args.ranking, qb_beta=args.qb_beta, qb_bank=args.qb_bank,
                       protocol=args.protocol, label_column=args.label_column)
    ks = sorted(set(ks))
    print(format_table(metrics, ks))
    print(format_ranking(metrics["ranking"]))
    if "labels" in metrics:
        print(format_labels(metrics["labels"], ks))
    if args.gap:
        print(format_gap(metrics, ks))
    if "seed_protocol" in metrics:
        print(format_seed(metrics["seed_protocol"]))
    if args.json:
        atomic_write_json(args.json, metrics)
    return 0


def _wise_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        alphas = []
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
        raise ConfigError(f"--wise must be comma-separated numbers in [0, 1], got {text!r}")
    return alphas


def _run_wise(args: argparse.Namespace, ks: list[int]) -> int:
    """``--wise``: the same evaluation for each alpha (WiSE-FT, 0 = zero-shot, 1 = fine-tuned) on
    the run's split, and with ``--wise-data`` on all of a second data set; one table each."""
    from crossalign._io import atomic_write_json
    from crossalign.evaluate.run import evaluate

    alphas = _wise_alphas(args.wise)
    ks = sorted(set(ks))
    pools = [("data", args.data, args.split)] + ([("second", args.wise_data, "all")] if args.wise_data else [])
    out: dict[str, dict] = {}
    for key, data, split in pools:
        sweep = {f"{a:g}": evaluate(args.run, data, split, ks, args.checkpoint, args.device,
                                    progress=not args.quiet, ranking=args.ranking, qb_beta=args.qb_beta,
                                    qb_bank=args.qb_bank, wise=a)
                 for a in alphas}
        where = f"{split} split" if key == "data" else f"all of {data} (a second data set)"
        print(format_wise(sweep, ks, f"WiSE-FT over alpha (0 = zero-shot, 1 = fine-tuned), {where}"))
        out[key] = {"data": str(data) if data else None, "split": split, "alphas": sweep}
    if args.json:
        atomic_write_json(args.json, {"wise": out["data"]["alphas"], "wise_pools": out})
    return 0
