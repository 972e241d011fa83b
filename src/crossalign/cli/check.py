"""``crossalign check DATA``, ``crossalign convert SRC --out DIR`` and ``crossalign synth --out DIR``:
data folders checked, converted and made (:func:`crossalign.check`, ``convert``, ``synth``)."""

from __future__ import annotations

import argparse

from crossalign.cli._call import call


def _add_reading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto",
                   help="layout: auto (default), folder, flickr8k, karpathy, coco, csv, jsonl, sidecar, "
                        "movielens or webdataset")
    p.add_argument("--config", help="YAML config file (its data: section gives reader and split options)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set data.caption_column=overview (repeatable)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="report everything wrong with a data set",
                       description="Counts, splits, captions per image, and every bad row or image, "
                                   "named by file and row. --json PATH writes the report as JSON too.")
    c.add_argument("data", help="data folder or file, any supported layout")
    _add_reading_options(c)
    c.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH "
                                                  "('-' or no flag: only print it)")
    c.add_argument("--strict", action="store_true", help="exit with an error if any row would be skipped")
    c.add_argument("--no-images", action="store_true", help="do not decode images (only check they exist)")
    c.add_argument("--workers", type=int, default=0, help="processes for decoding images (0 = all cores)")
    c.set_defaults(func=run_check)

    v = sub.add_parser("convert", help="write any supported layout as images/ + captions.txt + splits/")
    v.add_argument("src", help="data folder or file, any supported layout")
    v.add_argument("--out", help="new folder to write (required)")
    _add_reading_options(v)
    v.add_argument("--strict", action="store_true", help="fail on the first bad row instead of skipping it")
    v.set_defaults(func=run_convert)

    s = sub.add_parser("synth", help="generate the built-in shapes data set (the demo's data)")
    s.add_argument("--out", help="folder to write (images/ + captions.txt; required)")
    s.add_argument("--n", type=int, default=600, help="number of images (default 600)")
    s.add_argument("--seed", type=int, default=0, help="seed of the shapes and captions (default 0)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    s.set_defaults(func=run_synth)


def run_check(args: argparse.Namespace) -> int:
    from crossalign.api import check
    from crossalign.data.doctor import format_report

    report = call(check, args, strict=False)  # printed first, then --strict judged
    print(format_report(report))
    if args.json and args.json != "-":
        print(f"report written to {args.json}")
    if args.strict and not report["ok"]:
        from crossalign.errors import DataError

        raise DataError(f"{args.data}: {report['rows_skipped']} row(s) would be skipped (--strict)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from crossalign.api import convert

    table, problems = call(convert, args)
    counts = ", ".join(f"{k} {v['images']}" for k, v in table.split_counts().items())
    print(f"wrote {len(set(table.image_id))} images and {len(table)} captions to {args.out} ({counts}); "
          f"{sum(p.level == 'error' for p in problems)} row(s) skipped")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from crossalign.api import synth

    out = call(synth, args)
    print(f"wrote {args.n} images with 5 captions each to {out}")
    return 0
