"""``crossalign zeroshot RUN --data DIR --label-column COL [--template "a photo of a {}"]... [--json FILE]``"""

from __future__ import annotations

import argparse

MAX_CONFUSION_PRINTED = 20  # wider confusion matrices go to --json only


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot classification by a label column",
                       description="Turn the values of a label column into text prompts and give each image "
                                   "the class whose prompt is nearest: accuracy, per-class accuracy, confusion "
                                   "matrix. A value may hold several classes separated by '|'; such an image "
                                   "is a hit when the predicted class is any of them.")
    p.add_argument("run", metavar="RUN_OR_PAIR",
                   help="run folder written by 'crossalign train', or a pretrained model as it is "
                        "(hf:FOLDER, open_clip:NAME with --pretrained-weights) on --data's own split")
    p.add_argument("--pretrained-weights", default="", metavar="FILE_OR_TAG",
                   help="the weights of an open_clip:NAME model (a file or a pretrained tag)")
    p.add_argument("--data", help="data folder (required)")
    p.add_argument("--label-column", help="a column of the data kept as a label (genre, colour, ...)")
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="prompt with {} for the class name; repeat to average several "
                        "(default 'a photo of a {}.')")
    p.add_argument("--classes", help="candidate classes, comma-separated (default: every value in the column)")
    p.add_argument("--sep", default="|", help="separator of several classes in one value (default '|')")
    p.add_argument("--split", default="test", help="train, val, test, several joined by commas, or all (default test)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def format_result(r: dict) -> str:
    """Accuracy beside chance, per-class accuracy, and the confusion matrix when it is small."""
    ch = r["chance"]
    out = [f"{r['n_items']} images, {r['n_classes']} classes of {r['label_column']!r} ({r['split']} split)",
           f"accuracy {r['accuracy']:.2f}  (chance {ch['accuracy']:.2f})"]
    for key in (k for k in r if k.startswith("top") and k.endswith("_accuracy")):
        out.append(f"{key.replace('_', ' ')} {r[key]:.2f}  (chance {ch[key]:.2f})")
    out.append(f"mean per-class accuracy {r['mean_per_class_accuracy']:.2f}")
    if r["multi_label_items"]:
        out.append(f"{r['multi_label_items']} images hold several classes (a hit when any of them is predicted)")
    width = max(len(c) for c in r["classes"])
    out.append("")
    out.append(f"{'class'.ljust(width)}  {'n':>5}  accuracy")
    for name, v in r["per_class"].items():
        acc = "-" if v["accuracy"] is None else f"{v['accuracy']:.2f}"
        out.append(f"{name.ljust(width)}  {v['n']:>5}  {acc:>8}")
    if r["n_classes"] <= MAX_CONFUSION_PRINTED:
        out.append("")
        out.append("confusion (rows true, columns predicted):")
        cells = max(4, max(len(str(x)) for row in r["confusion"] for x in row))
        out.append(" " * width + "  " + " ".join(str(j).rjust(cells) for j in range(r["n_classes"])))
        for j, (name, row) in enumerate(zip(r["classes"], r["confusion"])):
            out.append(f"{name.ljust(width)}  " + " ".join(str(x).rjust(cells) for x in row) + f"   ({j})")
    skipped = r["skipped_items"]
    if any(skipped.values()):
        out.append(f"skipped: {skipped['no_label']} without a label, {skipped['unreadable_image']} unreadable")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import zeroshot
    from crossalign.cli._call import call

    print(format_result(call(zeroshot, args)))
    return 0
