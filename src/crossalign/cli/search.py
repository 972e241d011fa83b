"""``crossalign search INDEX "a dog runs on the beach" [--image photo.jpg] [--minus TEXT] -k 5``
``crossalign search INDEX --query "beach +sunset:0.5 -people" --mode hybrid --min-prob 0.5``"""

from __future__ import annotations

import argparse
import json

from crossalign.cli._call import call


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index by text, by image, or both",
                       description="The nearest images (or captions) to a query. Several terms add up; "
                                   "--minus pushes a term away; --weights weighs each term.")
    p.add_argument("index", help="index folder written by 'crossalign index'")
    p.add_argument("text", nargs="*", help="text terms (each one a query term)")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image term (repeatable)")
    p.add_argument("--like", action="append", default=[], type=int, metavar="ID",
                   help="an image of the index, by id, as a term: more like this (repeatable)")
    p.add_argument("--minus", action="append", default=[], metavar="TEXT",
                   help="a text term to push away (repeatable)")
    p.add_argument("--weights", metavar="W,W,...",
                   help="one weight per term, in order: texts, then images, then --like items")
    p.add_argument("--query", metavar="QUERY",
                   help='the text terms in one string, with weights and terms to push away: '
                        '"beach +sunset:0.5 -people" (in place of TEXT, --weights, --minus)')
    p.add_argument("--mode", default="vector", choices=["vector", "keyword", "hybrid"],
                   help="vector: by meaning (default); keyword: by words (captions, file names, "
                        "labels, words read in the pictures), ranked by BM25; hybrid: both "
                        "rankings fused (reciprocal rank fusion)")
    p.add_argument("--fusion", metavar="V,K",
                   help="hybrid: the weights of the vector and the keyword ranking (default 1,1)")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--target", default="images", choices=["images", "captions"],
                   help="search images (default) or captions")
    p.add_argument("--min-score", type=float, metavar="S",
                   help="leave out hits below cosine similarity S, the same S for every query: "
                        "fewer than k may remain")
    p.add_argument("--min-prob", type=float, metavar="P",
                   help="leave out hits whose calibrated probability of being the query's match "
                        "is below P (calibrated on the run's validation pairs when indexing)")
    p.add_argument("--coverage", type=float, metavar="C",
                   help="keep the smallest set of hits that holds the query's match with "
                        "probability C (split-conformal, e.g. 0.9); at most k are shown")
    p.add_argument("--split", help="only images of these splits (comma-separated: train,val)")
    p.add_argument("--folder", help="only images in this folder of the collection (or below it)")
    p.add_argument("--since", metavar="DATE", help="only pictures taken (EXIF date, else the "
                                                   "file's date) on or after DATE (YYYY-MM-DD)")
    p.add_argument("--until", metavar="DATE", help="only pictures taken on or before DATE")
    p.add_argument("--label", action="append", default=[], metavar="COLUMN=VALUE",
                   help="only images with this label (repeatable; all must hold)")
    p.add_argument("--run", help="the run whose model embeds the query (default: the one that "
                                 "built the index)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import search

    result = call(search, args)
    if args.json:
        print(json.dumps({"target": result.target, "seconds": result.seconds, "mode": result.mode,
                          "ranking": result.ranking, "score_kind": result.score_kind,
                          "cutoff": result.cutoff, "hits": [h.to_dict() for h in result.hits]},
                         indent=2))
    else:
        print(result)  # the text SearchResult gives: rank, score, path, first caption
    return 0
