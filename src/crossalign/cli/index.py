"""``crossalign index RUN (--data DIR | --images FOLDER | --add FOLDER | --from-embeddings DIR) --out INDEX``"""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed a collection into a search index (incremental)",
                       description="Embed every image (and caption) of a data set or a folder of images "
                                   "with a trained run into an index folder: FAISS vectors plus SQLite "
                                   "metadata. Run again to update it: only new or changed files are "
                                   "embedded, and entries whose files are gone are dropped.")
    p.add_argument("run", help="run folder written by 'crossalign train'")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to create or update")
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
                   help="hnsw / ivfpq: tune the search to reach this recall@10 against exact "
                        "search, measured on a sample of the index's own vectors (default 0.95)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--nproc", type=int, default=0,
                   help="share the embedding over N processes on this machine (through torchrun)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports every CPU variant tried
    if args.from_embeddings:
        return _from_embeddings(args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from crossalign.cli.train import _relaunch

        return _relaunch(args.nproc)
    from crossalign.index import build_index
    from crossalign.distributed import cleanup_distributed, init_distributed

    dist = init_distributed(backend="gloo" if args.device == "cpu" else "auto")
    try:
        summary = build_index(args.run, args.out, data=args.data, images=args.images, add=args.add,
                              split=args.split, data_format=args.format, index_type=args.index_type,
                              which=args.checkpoint, device=args.device, progress=not args.quiet,
                              dist=dist if dist.world_size > 1 else None, recall=args.recall)
    finally:
        cleanup_distributed()
    if summary is None:
        return 0
    _print(summary)
    return 0


def _from_embeddings(args: argparse.Namespace) -> int:
    from crossalign.errors import ConfigError
    from crossalign.index import build_from_embeddings

    if args.data or args.images or args.add:
        raise ConfigError("--from-embeddings builds from partitions alone; leave out --data, --images, --add")
    summary = build_from_embeddings(args.run, args.out, args.from_embeddings, index_type=args.index_type,
                                    which=args.checkpoint, device=args.device, recall=args.recall)
    _print(summary)
    return 0


def _print(summary) -> None:
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
