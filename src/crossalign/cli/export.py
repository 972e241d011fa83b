"""``crossalign export RUN --out PATH [--wise A] [--checkpoint best|last]``"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a fine-tuned pretrained model in its library's own format",
                       description="Write the run of a pretrained model in the format of the library it came "
                                   "from, which loads it with the same vectors, logit scale and (SigLIP) "
                                   "bias: an hf: model as a folder that transformers' CLIPModel / "
                                   "SiglipModel.from_pretrained loads (the checkpoint's config, tokenizer and "
                                   "image processor with the run's weights); an open_clip: model as a "
                                   "checkpoint file that open_clip.create_model(NAME, pretrained=FILE) loads "
                                   "(safetensors when FILE ends in .safetensors). --wise A writes the WiSE-FT "
                                   "ensemble (1 - A) * zero-shot + A * fine-tuned instead.")
    p.add_argument("run", help="run folder written by 'crossalign train' with model.pretrained_model (a pretrained model)")
    p.add_argument("--out", metavar="PATH",
                   help="a new (or empty) folder for an hf: model, a new file for an open_clip: model")
    p.add_argument("--wise", type=float, metavar="A", help="WiSE-FT mixing weight in [0, 1]")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import export
    from crossalign.cli._call import call

    how = call(export, args)
    print(f"wrote {args.out}: {how}" + (f" (WiSE-FT alpha {args.wise:g})" if args.wise is not None else ""))
    return 0
