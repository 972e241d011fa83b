"""``crossalign duplicates INDEX [--out DIR]``: true and near duplicates."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("duplicates", help="find true duplicates and near-duplicates in an index",
                       description="True duplicates: the same file content under several names. "
                                   "Near-duplicates: other files of the same picture (downscaled, "
                                   "cropped, re-encoded, rotated, colour-shifted). Each image's "
                                   "nearest --neighbours by difference hash (at most "
                                   "--max-hash-distance bits apart) and by image vector (at cosine "
                                   "--threshold or more) are candidates; the threshold is "
                                   "calibrated on copies planted of the index's own images and "
                                   "embedded with its run. A candidate is a near-duplicate when "
                                   "the two pictures, aligned by their SIFT keypoints, correlate "
                                   "at --min-correlation or more.")
    p.add_argument("index", help="index folder written by 'crossalign index'")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity of image vectors from which two images are candidates "
                        "(default: calibrated, the lower end of the cosines to their originals "
                        "of planted copies that the hash misses)")
    p.add_argument("--max-hash-distance", type=int, default=10,
                   help="two images whose 64-bit difference hashes differ in at most this many "
                        "bits are candidates (default 10)")
    p.add_argument("--min-correlation", type=float, default=0.9,
                   help="a candidate pair is a near-duplicate when the two pictures, aligned, "
                        "correlate at this or more (default 0.9)")
    p.add_argument("--neighbours", type=int, default=10,
                   help="each image's nearest this many, by hash and by vector, are its candidates "
                        "(default 10)")
    p.add_argument("--calibration-sample", type=int, default=50,
                   help="images of the index copied in each way to calibrate the threshold "
                        "(default 50)")
    p.add_argument("--run", help="the run that embeds the planted copies (default: the one that "
                                 "built the index); not loaded with --threshold")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
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
          f"({sum(len(g) for g in dup.exact)} files), {len(dup.near)} near-duplicate pairs")
    print(dup.summary())
    for g in dup.exact[:20]:
        print("  same content: " + ", ".join(f"#{im.id} {im.name}" for im in g))
    for a, b, s, c in dup.near[:20]:
        print(f"  near, cos {s:.4f}, corr {c:.3f}: #{a.id} {a.name}  ~  #{b.id} {b.name}")
    if dup.page:
        print(f"page: {dup.page}")
    return 0
