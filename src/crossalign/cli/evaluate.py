"""``crossalign evaluate RUN [--data DIR] [--split test|all] [--gap] [--label-column COL] [--json FILE] [--matrix FILE.npy]``"""

from __future__ import annotations

import argparse

from crossalign.api._scoring import numbers
from crossalign.cli._call import call
from crossalign.evaluate.tables import format_metrics, format_wise


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="retrieval metrics of a trained run",
                       description="Recall@K, median and mean rank, MRR, top-1 and R-sum in both directions, "
                                   "from embeddings, with the chance level beside each number.")
    p.add_argument("run", metavar="RUN_OR_PRETRAINED",
                   help="run folder written by 'crossalign train', or a pretrained model measured zero-shot "
                        "(hf:FOLDER, open_clip:NAME with --pretrained-weights) on --data's own split")
    p.add_argument("--data", help="data folder (default: the one the run was trained on, from its run.json)")
    p.add_argument("--split", default="test", help="train, val, test, several joined by commas, or all (default test)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--k", default=(1, 5, 10), metavar="K,K,...",
                   help="the K of Recall@K, comma-separated (default 1,5,10)")
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
    p.add_argument("--qb-k", type=int, help="qbnorm: activation set of the top K of some bank query "
                                            "(default evaluate.qb_k)")
    p.add_argument("--qb-bank", type=int, help="qbnorm: training images in the bank, 0 = all (evaluate.qb_bank)")
    p.add_argument("--protocol", default="standard", choices=["standard", "seed"],
                   help="seed: also top-1 accuracy over every item (training ones included) and for "
                        "held-out items ranked among all, as the seed reports counted")
    p.add_argument("--label-column", metavar="COLUMN",
                   help="also the label agreement of the rankings by this label column (e.g. genre; several "
                        "classes joined by '|'): precision@K, R-precision, MAP@R and Jaccard@K beside chance, "
                        "per class too")
    p.add_argument("--pretrained-weights", default="", metavar="FILE_OR_TAG",
                   help="the weights of an open_clip:NAME model (a file or a pretrained tag)")
    p.add_argument("--wise", metavar="A,B,...",
                   help="a pretrained model's run: evaluate the WiSE-FT weight ensembles (1 - a) * zero-shot "
                        "+ a * fine-tuned for each a (0 = the checkpoint as it was, 1 = the run), one table")
    p.add_argument("--wise-data", metavar="DIR",
                   help="with --wise: also a second data set the run never trained on (all its items), "
                        "to see what the fine-tune kept of the checkpoint's generality")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import evaluate

    result = call(evaluate, args)
    ks = sorted(set(numbers(args.k, int, "k")))
    if args.wise is not None:
        for key, pool in result["wise_pools"].items():
            where = f"{pool['split']} split" if key == "data" else f"all of {pool['data']} (a second data set)"
            print(format_wise(pool["alphas"], ks, f"WiSE-FT over alpha (0 = zero-shot, 1 = fine-tuned), {where}"))
        return 0
    print(format_metrics(result, ks))
    return 0
