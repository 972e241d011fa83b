"""``crossalign caption RUN --image X [--image Y ...] [--captions FILE | --data DIR [--split train]]``
``[--k 5] [--json FILE]``, and ``crossalign caption RUN --score [--data DIR] [--split test] [--json FILE]``"""

from __future__ import annotations

import argparse

from crossalign.caption.nearest import DEFAULT_NEIGHBOURS, DEFAULT_TOP_M, DEFAULT_WEIGHT


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="propose captions for images by retrieval and consensus",
                       description="Propose captions for an image from a pool of existing captions: the "
                                   "captions of its nearest pool images (or the nearest captions of a text "
                                   "file) are the candidates, and the one most like the others wins "
                                   "(consensus re-ranking, Devlin et al. 2015). With --score, caption every "
                                   "image of a split from the train split's captions and report BLEU-1..4 "
                                   "and CIDEr-D against its own captions, beside the nearest caption alone.")
    p.add_argument("run", help="run folder written by 'crossalign train'")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image to caption; repeat")
    p.add_argument("--captions", metavar="FILE", help="caption pool: a text file, one caption a line")
    p.add_argument("--data", help="caption pool: this data folder (default: the one the run was trained on)")
    p.add_argument("--split", help="the pool's split (default train); with --score, the split captioned "
                                   "(default test)")
    p.add_argument("--pool-split", default="train", help="with --score: the pool's split (default train)")
    p.add_argument("--score", action="store_true", help="caption and score every image of --split")
    p.add_argument("--k", type=int, default=5, help="proposals printed per image (default 5)")
    p.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS,
                   help="nearest pool images (or captions) whose captions compete "
                        f"(default {DEFAULT_NEIGHBOURS})")
    p.add_argument("--weight", type=float, default=DEFAULT_WEIGHT,
                   help="share of the image-caption cosine in the score, 0..1 "
                        f"(default {DEFAULT_WEIGHT:g})")
    p.add_argument("--top-m", type=int, default=DEFAULT_TOP_M,
                   help="consensus over each candidate's M most similar others "
                        f"(default {DEFAULT_TOP_M}; 0: all of them)")
    p.add_argument("--json", help="also write the proposals or scores to this JSON file")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def format_scores(r: dict) -> str:
    """BLEU-1..4 and CIDEr of consensus and of the nearest caption, in points."""
    keys = list(r["consensus"])
    named = (("consensus", "consensus"), ("nearest caption", "nearest_caption"))
    rows = [["", *keys], *([name, *(f"{100 * r[key][k]:.1f}" for k in keys)] for name, key in named)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    table = ["  ".join(x.rjust(w) if c else x.ljust(w) for c, (x, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([f"{r['n_images']:,} images of the {r['split']} split captioned from "
                      f"{r['n_pool_captions']:,} captions of {r['pool']} (neighbours {r['neighbours']}, weight {r['weight']:g}, "
                      f"top-m {r['top_m']})", *table])


def run(args: argparse.Namespace) -> int:
    from crossalign.api import caption
    from crossalign.cli._call import call

    out = call(caption, args)
    if args.score:
        print(format_scores(out))
        return 0
    for item in out["images"]:
        print(item["image"])
        for j, p in enumerate(item["proposals"], 1):
            print(f"  {j}. {p['score']:.3f}  {p['caption']}  "
                  f"(consensus {p['consensus']:.3f}, cosine {p['cosine']:.3f})")
    return 0
