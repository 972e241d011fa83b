"""``crossalign index RUN (--data DIR | --images FOLDER | --add FOLDER | --from-embeddings DIR) --out INDEX``"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed a collection into a search index (incremental)",
                       description="Embed every image (and caption) of a data set or a folder of images "
                                   "with a trained run into an index folder: FAISS vectors plus SQLite "
                                   "metadata. Run again to update it: only new or changed files are "
                                   "embedded, and entries whose files are gone are dropped.")
    p.add_argument("run", help="run folder written by 'crossalign train'")
    p.add_argument("--out", metavar="INDEX", help="index folder to create or update (required)")
    p.add_argument("--data", help="a data set in any layout the readers know (images and captions)")
    p.add_argument("--images", metavar="FOLDER", help="a folder of images, searched recursively")
    p.add_argument("--add", action="append", default=[], metavar="FOLDER",
                   help="add another image folder to the index's sources (repeatable)")
    p.add_argument("--from-embeddings", metavar="DIR",
                   help="build from the partitions 'crossalign embed' wrote to DIR (nothing is embedded)")
    p.add_argument("--split", default="all", help="with --data: which split (default all)")
    p.add_argument("--format", default="", help="with --data: the layout (default: detected)")
    p.add_argument("--index-type", choices=["auto", "flat", "hnsw", "ivfpq"],
                   help="flat: exact; hnsw / ivfpq: approximate, for large collections; auto: flat "
                        "below 100,000 vectors, hnsw below 1,000,000 where it fits a quarter of this machine's "
                        "memory, ivfpq above (default: what the "
                        "index had, auto for a new one)")
    p.add_argument("--recall", type=float, default=0.95,
                   help="hnsw / ivfpq: set the search to reach this recall@10 against exact "
                        "search, measured on a sample of the index's own vectors (default 0.95)")
    p.add_argument("--ocr", action=argparse.BooleanOptionalAction, default=None,
                   help="read the words in each picture (PP-OCR) into the keyword index, cached by "
                        "content hash (default: what the index did, off for a new one)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--nproc", type=int, default=0,
                   help="share the embedding over N processes on this machine (through torchrun)")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import index
    from crossalign.cli._call import call

    summary = call(index, args)
    if summary is not None:
        print_summary(summary)
    return 0


def print_summary(summary) -> None:
    print(f"index {summary.index}: {summary.images} images, {summary.captions} captions "
          f"({summary.embedded_images} images and {summary.embedded_captions} captions embedded, "
          f"{summary.removed_images} removed, {len(summary.failed)} unreadable) in "
          f"{summary.seconds:.1f} s; FAISS {summary.factory['images']} / "
          f"{summary.factory['captions']}")
    for target, t in summary.tuned.items():
        params = ", ".join(f"{k} {v}" for k, v in t["params"].items())
        verdict = "" if t["met"] else f" (short of the {t['target']:.2f} asked: the widest search tried)"
        print(f"  {target}: {params}: recall@10 {t['recall']:.3f} on {t['queries']} held queries, "
              f"{t['ms']:.2f} ms a query{verdict}")
    if summary.ocr_read:
        print(f"  words read in {summary.ocr_read} pictures")
    print(f"  {summary.calibration} (for --min-prob and --coverage)")
