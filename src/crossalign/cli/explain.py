"""``crossalign explain RUN --image X --text "..." [--out PREFIX] [--method layercam]``"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_METHOD = "layercam"  # the best pointing game and deletion ratio of bench/bench_explain.py
WORDS_PRINTED = 8


def add_parser(sub: argparse._SubParsersAction) -> None:
    from crossalign.explain.image import METHODS

    p = sub.add_parser("explain", help="which image regions and which words made a pair close",
                       description="Explain the similarity of one image and one text: a heat map over the "
                                   "image (a Grad-CAM-family map of the similarity at the tower's last "
                                   "convolutional stage) and a score per word (integrated gradients over "
                                   "the token embeddings). Writes PREFIX.png (the image under its heat map, "
                                   "the words shaded by score) and PREFIX.json (the similarity, the heat "
                                   "map, per-word scores).")
    p.add_argument("run", help="run folder written by 'crossalign train'")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--text", required=True, help="the text to match against the image")
    p.add_argument("--out", help="prefix of the files written (default: explain-<image name> here)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"heat-map method (default {DEFAULT_METHOD})")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--device", default="cpu")
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
    from crossalign.errors import ConfigError, InputNotFound
    from crossalign.explain import explain_pair
    from crossalign.runs import load_model

    if not Path(args.image).is_file():
        raise InputNotFound(f"--image {args.image}: no such file")
    if not args.text.strip():
        raise ConfigError("--text is empty")
    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    model, cfg = load_model(args.run, args.checkpoint, args.device)
    expl = explain_pair(model, args.image, args.text, args.method, args.steps, cfg.data.max_pixels)
    prefix = args.out or f"explain-{Path(args.image).stem}"
    png, js = Path(f"{prefix}.png"), Path(f"{prefix}.json")
    expl.save(png, js)
    print(format_explanation(expl))
    print(f"wrote {png} and {js}")
    return 0
