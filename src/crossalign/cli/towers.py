"""``crossalign towers [NAME] [--modality image|text] [--json]``: :func:`crossalign.towers`."""

from __future__ import annotations

import argparse
import json

from crossalign.cli._call import call

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("towers", help="the towers crossalign can build",
                       description="Every registered tower (width, parameters, weights, preprocessing), the "
                                   "timm: and hf: prefixes, then the pretrained models; or one tower, "
                                   "prefixed names too (timm:resnet50, hf:FOLDER).")
    p.add_argument("name", nargs="?", help="one tower to describe")
    p.add_argument("--modality", choices=["image", "text"], help="only image or only text towers")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from crossalign.api import towers

    rows = call(towers, args)
    if args.json:
        print(json.dumps(rows[0] if args.name else rows, indent=2))
    elif args.name:
        for k, v in rows[0].items():
            print(f"{k:>14}: {_fmt_params(v) if k == 'params' else v}")
    else:
        print(_table([r for r in rows if r["modality"] != "pretrained"]))
        pretrained = [r for r in rows if r["modality"] == "pretrained"]
        if pretrained:  # both towers at once
            print("\npretrained models (both towers, their projections and the logit scale: --set model.pretrained_model=...)")
            for r in pretrained:
                print(f"  {r['description']}")
    return 0
