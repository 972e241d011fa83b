"""``crossalign explain RUN --image X --text "..." [--out PREFIX] [--method layercam]``"""

from __future__ import annotations

import argparse
from pathlib import Path

WORDS_PRINTED = 8


def add_parser(sub: argparse._SubParsersAction) -> None:
    from crossalign.explain import DEFAULT_METHOD, METHODS

    p = sub.add_parser("explain", help="which image regions and which words made a pair close",
                       description="Explain the similarity of one image and one text: a heat map over the "
                                   "image (a Grad-CAM-family map of the similarity at the tower's last "
                                   "convolutional stage) and a score per word (integrated gradients over "
                                   "the token embeddings). Writes PREFIX.png (the image under its heat map, "
                                   "the words shaded by score) and PREFIX.json (the similarity, the heat "
                                   "map, per-word scores).")
    p.add_argument("run", help="run folder written by 'crossalign train'")
    p.add_argument("--image", help="image file (required)")
    p.add_argument("--text", help="the text to match against the image (required)")
    p.add_argument("--out", help="prefix of the files written (default: explain-<image name> here)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"heat-map method (default {DEFAULT_METHOD})")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def format_explanation(e) -> str:
    """The similarity, the hottest point and the words that counted most."""
    ranked = sorted(zip(e.words.words, e.words.scores, e.words.shares()), key=lambda t: -abs(t[1]))
    x, y = e.hottest()
    out = [f"similarity {e.similarity:.4f}  ({e.method}; hottest point x={x} y={y} of "
           f"{e.image.width}x{e.image.height})", "words by their part in the similarity:"]
    out += [f"  {w:<20} {s:+.4f}  ({sh:.0%})" for w, s, sh in ranked[:WORDS_PRINTED]]
    if e.words.truncated:
        out.append("  (the text was cut at the tower's token limit; later words are not scored)")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import explain
    from crossalign.cli._call import call

    expl = call(explain, args)
    prefix = args.out or f"explain-{Path(args.image).stem}"
    print(format_explanation(expl))
    print(f"wrote {prefix}.png and {prefix}.json")
    return 0
