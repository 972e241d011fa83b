"""``crossalign duplicates INDEX [--threshold 0.95] [--out DIR]``: true and near duplicates."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("duplicates", help="find true duplicates and near-duplicates in an index",
                       description="True duplicates: the same file content under several names. "
                                   "Near-duplicates: other files of nearly the same picture "
                                   "(re-encoded, resized, cropped): image vectors at least "
                                   "--threshold apart in cosine similarity, and pictures whose "
                                   "difference hashes differ in at most --max-hash-distance bits.")
    p.add_argument("index", help="index folder written by 'crossalign index'")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="cosine similarity of image vectors from which two images are candidates "
                        "(default 0.9)")
    p.add_argument("--max-hash-distance", type=int, default=10,
                   help="a candidate pair is a near-duplicate when the pictures' 64-bit difference "
                        "hashes differ in at most this many bits (default 10)")
    p.add_argument("--neighbours", type=int, default=10,
                   help="approximate indexes: the nearest images each one is compared with (default 10)")
    p.add_argument("--out", metavar="DIR",
                   help="write duplicates.html (the pairs with thumbnails) and duplicates.json here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import duplicates
    from crossalign.cli._call import call

    dup = call(duplicates, args)
    if args.json:
        print(json.dumps(dup.to_dict(), indent=2))
        return 0
    print(f"{dup.images} images: {len(dup.exact)} groups of true duplicates "
          f"({sum(len(g) for g in dup.exact)} files), {len(dup.near)} near-duplicate pairs (of "
          f"{dup.candidates} pairs at cosine >= {dup.threshold:.3f}" +
          ("" if dup.complete else f", each image against its nearest {args.neighbours}") +
          f"; difference hashes at most {dup.max_hash_distance} bits apart)")
    for g in dup.exact[:20]:
        print("  same content: " + ", ".join(f"#{im.id} {im.name}" for im in g))
    for a, b, s, d in dup.near[:20]:
        print(f"  near, cos {s:.4f}, {d} bits: #{a.id} {a.name}  ~  #{b.id} {b.name}")
    if dup.page:
        print(f"page: {dup.page}")
    return 0
