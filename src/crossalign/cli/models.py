"""``crossalign models list [--modality image|text] [--json]`` and ``crossalign models show NAME``."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run_list", "run_show"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the towers crossalign can build",
                       description="Registered towers with their width, parameter count, default "
                                   "preprocessing and whether their weights are on this machine.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="every registered tower, the timm: and hf: prefixes, then the pretrained "
                                      "pairs (model.pair)")
    ls.add_argument("--modality", choices=["image", "text"], help="only image or only text towers")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=run_list)
    sh = msub.add_parser("show", help="one tower, prefixed names too (timm:resnet50, hf:FOLDER)")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true", help="print JSON")
    sh.set_defaults(func=run_show)


def _fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def _table(rows: list[dict]) -> str:
    cols = [("name", "tower"), ("modality", "kind"), ("width", "width"), ("params", "params"),
            ("weights", "weights"), ("preprocessing", "preprocessing")]
    cells = [[h for _, h in cols]] + [
        ["-" if r[k] is None else (_fmt_params(r[k]) if k == "params" else str(r[k])) for k, _ in cols]
        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def run_list(args: argparse.Namespace) -> int:
    from crossalign.models.pairs import PAIR_KINDS
    from crossalign.models.registry import describe_models

    rows = describe_models(args.modality)
    pairs = [{"name": f"{prefix}:", "modality": "pair", "description": text} for prefix, text in PAIR_KINDS.items()]
    if args.json:
        print(json.dumps(rows + ([] if args.modality else pairs), indent=2))
        return 0
    print(_table(rows))
    if not args.modality:  # a pair is both towers at once
        print("\npretrained pairs (both towers, their projections and the logit scale: --set model.pair=...)")
        for p in pairs:
            print(f"  {p['description']}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from crossalign.models.registry import describe

    row = describe(args.name)
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        for k, v in row.items():
            print(f"{k:>14}: {_fmt_params(v) if k == 'params' else v}")
    return 0
