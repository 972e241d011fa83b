"""``crossalign data synth|check|convert``: tools for data folders."""

from __future__ import annotations

import argparse


def _add_reading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto",
                   help="layout: auto (default), folder, flickr8k, karpathy, coco, csv, jsonl, sidecar, "
                        "movielens or webdataset")
    p.add_argument("--config", help="YAML config file (its data: section gives reader and split options)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set data.caption_column=overview (repeatable)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make, check and convert data folders")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="generate the built-in shapes data set")
    s.add_argument("--out", required=True, help="folder to write (images/ + captions.txt)")
    s.add_argument("--n", type=int, default=600, help="number of images (default 600)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.set_defaults(func=run_synth)

    c = dsub.add_parser("check", help="report everything wrong with a data set",
                        description="Counts, splits, captions per image, and every bad row or image, "
                                    "named by file and row. --json PATH writes the report as JSON too.")
    c.add_argument("data", help="data folder or file, any supported layout")
    _add_reading_options(c)
    c.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH "
                                                  "(default: none; nothing is written unless asked)")
    c.add_argument("--strict", action="store_true", help="exit with an error if any row would be skipped")
    c.add_argument("--no-images", action="store_true", help="do not decode images (only check they exist)")
    c.add_argument("--workers", type=int, default=0, help="processes for decoding images (0 = all cores)")
    c.set_defaults(func=run_check)

    v = dsub.add_parser("convert", help="write any supported layout as images/ + captions.txt + splits/")
    v.add_argument("src", help="data folder or file, any supported layout")
    v.add_argument("--out", required=True, help="new folder to write")
    _add_reading_options(v)
    v.add_argument("--strict", action="store_true", help="fail on the first bad row instead of skipping it")
    v.set_defaults(func=run_convert)


def run_synth(args: argparse.Namespace) -> int:
    from crossalign.data.synthetic import make_shapes_dataset

    out = make_shapes_dataset(args.out, args.n, args.seed, args.size)
    print(f"wrote {args.n} images with 5 captions each to {out}")
    return 0


def _config(args: argparse.Namespace):
    from crossalign.config import load_config

    sets = list(args.overrides)
    if args.format != "auto":
        sets.append(f"data.format={args.format}")
    if getattr(args, "strict", False):
        sets.append("data.strict=true")
    return load_config(args.config, sets)


def run_check(args: argparse.Namespace) -> int:
    from crossalign._io import atomic_write_json
    from crossalign.data.doctor import check_data, format_report
    from crossalign.models.text import token_counter
    from crossalign.errors import DataError

    cfg = _config(args)
    report = check_data(args.data, cfg.data, cfg.model.text.max_tokens, lambda: token_counter(cfg.model.text),
                        images=not args.no_images, workers=args.workers)
    print(format_report(report))
    if args.json and args.json != "-":  # '-' also means none
        atomic_write_json(args.json, report)
        print(f"report written to {args.json}")
    if args.strict and not report["ok"]:
        raise DataError(f"{args.data}: {report['rows_skipped']} row(s) would be skipped (--strict)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from crossalign.data.convert import convert_to_folder

    cfg = _config(args)
    table, problems = convert_to_folder(args.src, args.out, cfg.data, quiet=args.quiet)
    counts = ", ".join(f"{k} {v['images']}" for k, v in table.split_counts().items())
    print(f"wrote {len(set(table.image_id))} images and {len(table)} captions to {args.out} ({counts}); "
          f"{sum(p.level == 'error' for p in problems)} row(s) skipped")
    return 0
