"""``crossalign evaluate RUN [--data DIR] [--split test|all] [--gap] [--label-column COL] [--json FILE] [--matrix FILE.npy]``"""

from __future__ import annotations

import argparse

from crossalign.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="retrieval metrics of a trained run",
                       description="Recall@K, median and mean rank, MRR, top-1 and R-sum in both directions, "
                                   "from embeddings, with the chance level beside each number.")
    p.add_argument("run", metavar="RUN_OR_PAIR",
                   help="run folder written by 'crossalign train', or a pretrained pair measured zero-shot "
                        "(hf:FOLDER, open_clip:NAME with --pair-weights) on --data's own split")
    p.add_argument("--data", help="data folder (default: the one the run was trained on, from its run.json)")
    p.add_argument("--split", default="test", help="train, val, test, several joined by commas, or all (default test)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--k", default="1,5,10", help="the K of Recall@K, comma-separated")
    p.add_argument("--gap", action="store_true",
                   help="also score items the model trained on (train split) and held-out items apart")
    p.add_argument("--seen", default="match", choices=["match", "all"],
                   help="with --gap: sample the train images down to the held-out count (match, default) or keep all")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")
    p.add_argument("--matrix", metavar="FILE.npy",
                   help="write the cosine distance matrix (rows images, columns captions) and FILE.json "
                        "naming them; refused for very large sets")
    p.add_argument("--float16", action="store_true", help="store the matrix as float16")
    p.add_argument("--lists", metavar="FILE.npz", help="write per-query ranks and top-K lists, both directions")
    p.add_argument("--lists-k", type=int, default=10, help="length of those lists (default 10)")
    p.add_argument("--ranking", choices=["plain", "qbnorm"],
                   help="plain cosine, or qbnorm: query-bank normalisation over training queries "
                        "(default: the run's evaluate.ranking)")
    p.add_argument("--qb-beta", type=float, help="qbnorm inverse temperature (default evaluate.qb_beta)")
    p.add_argument("--qb-bank", type=int, help="qbnorm: training images in the bank, 0 = all (evaluate.qb_bank)")
    p.add_argument("--protocol", default="standard", choices=["standard", "seed"],
                   help="seed: also top-1 accuracy over every item (training ones included) and for "
                        "held-out items ranked among all, as the seed reports counted")
    p.add_argument("--label-column", metavar="COLUMN",
                   help="also the label agreement of the rankings by this label column (e.g. genre; several "
                        "classes joined by '|'): precision@K, R-precision, MAP@R and Jaccard@K beside chance, "
                        "per class too")
    p.add_argument("--pair-weights", default="", metavar="FILE_OR_TAG",
                   help="the weights of an open_clip:NAME pair (a file or a pretrained tag)")
    p.add_argument("--wise", metavar="A,B,...",
                   help="a pretrained pair's run: evaluate the WiSE-FT weight ensembles (1 - a) * zero-shot "
                        "+ a * fine-tuned for each a (0 = the checkpoint as it was, 1 = the run), one table")
    p.add_argument("--wise-data", metavar="DIR",
                   help="with --wise: also a second data set the run never trained on (all its items), "
                        "to see what the fine-tune kept of the checkpoint's generality")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _fmt_rank(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def format_table(metrics: dict, ks: list[int]) -> str:
    """Metrics as a small text table: one row per direction, the chance level under each."""
    head = ["direction"] + [f"R@{k}" for k in ks] + ["median rank", "mean rank", "MRR"]
    chance = metrics.get("chance", {})
    rows = []
    for d, label in (("t2i", "text->image"), ("i2t", "image->text")):
        for name, src in ((label, metrics), ("  chance", chance)):
            if not src:
                continue
            rows.append([name] + [f"{src[f'{d}_R@{k}']:.2f}" for k in ks]
                        + [_fmt_rank(src[f"{d}_median_rank"]), f"{src[f'{d}_mean_rank']:.1f}",
                           f"{src[f'{d}_mrr']:.3f}"])
    widths = [max(len(str(r[c])) for r in [head] + rows) for c in range(len(head))]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    tail = f" (chance {chance['rsum']:.1f})" if chance else ""
    out.append(f"{metrics['n_images']} images, {metrics['n_captions']} captions ({metrics['split']} split); "
               f"rsum {metrics['rsum']:.1f}{tail}")
    return "\n".join(out)


def format_ranking(info: dict) -> str:
    """One line naming how the scores were ranked."""
    if info["name"] != "qbnorm":
        return "ranking: plain cosine" + (f" ({info['note']})" if "note" in info else "")
    bank = info["bank"]
    return (f"ranking: qbnorm (beta {info['beta']:g}, k {info['k']}; bank of {bank['images']} train images "
            f"and {bank['captions']} captions)")


def format_seed(proto: dict) -> str:
    """The seed protocol's top-1 accuracies beside chance."""
    out = ["\nseed protocol (plain cosine, every query ranked among all items):"]
    for part, label in (("all", "all items"), ("held_out", "held-out items")):
        if part in proto:
            m = proto[part]
            out.append(f"  {label} ({m['n_images']} images, {m['n_captions']} captions): top-1 text->image "
                       f"{m['t2i_top1']:.2f} (chance {m['chance']['t2i_top1']:.2f}), image->text "
                       f"{m['i2t_top1']:.2f} (chance {m['chance']['i2t_top1']:.2f})")
    return "\n".join(out)


def format_labels(labels: dict, ks: list[int], per_class: int = 10) -> str:
    """Label agreement beside chance, both directions, and the largest classes."""
    head = ["direction"] + [f"P@{k}" for k in ks] + ["R-prec", "MAP@R"]
    rows = []
    for d, label in (("t2i", "text->image"), ("i2t", "image->text")):
        m = labels[d]
        keys = [f"precision@{k}" for k in ks] + ["r_precision", "map@r"]
        rows.append([label] + [f"{m[k]:.3f}" for k in keys])
        rows.append(["  chance"] + [f"{m['chance'][k]:.3f}" for k in keys])
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    line = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    t2i = labels["t2i"]
    out = [f"\nlabel agreement by {labels['column']!r} ({t2i['classes']} classes; relevant = shares a class; "
           f"{t2i['queries_unlabelled']} captions and {labels['i2t']['queries_unlabelled']} images without a label "
           f"left out as queries):", line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    k = ks[-1]
    biggest = sorted(t2i["per_class"].items(), key=lambda kv: -kv[1]["queries"])[:per_class]
    if biggest:
        out.append(f"per class, text->image P@{k} (chance): " + ", ".join(
            f"{name} {m[f'precision@{k}']:.2f} ({m['chance_precision']:.2f})" for name, m in biggest))
    return "\n".join(out)


def format_gap(metrics: dict, ks: list[int]) -> str:
    """The seen and unseen tables and the gap in R@K points."""
    proto = metrics["gap_protocol"]
    out = [f"\nseen (trained on): {proto['seen_images_used']} of {proto['seen_images_available']} train images "
           f"(sampling {proto['sampling']}, seed {proto['seed']})", format_table(metrics["seen"], ks),
           "\nunseen (held out):", format_table(metrics["unseen"], ks)]
    gap = metrics["gap"]
    parts = [f"{d} R@{k} {gap[f'{d}_R@{k}']:+.1f}" for d in ("t2i", "i2t") for k in ks]
    out.append("\ngeneralization gap (seen - unseen, points): " + ", ".join(parts))
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from crossalign._io import atomic_write_json
    from crossalign.evaluate.run import evaluate

    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if args.float16 and not args.matrix:
        raise ConfigError("--float16 applies to --matrix; give --matrix FILE.npy too")
    if args.wise_data and not args.wise:
        raise ConfigError("--wise-data goes with --wise A,B,...")
    if args.wise:
        return _run_wise(args, ks)
    metrics = evaluate(args.run, args.data, args.split, ks, args.checkpoint, args.device,
                       progress=not args.quiet, gap=args.gap, seen=args.seen, seed=args.seed,
                       matrix=args.matrix, float16=args.float16, lists=args.lists, lists_k=args.lists_k,
                       pair_weights=args.pair_weights,
                       ranking=args.ranking, qb_beta=args.qb_beta, qb_bank=args.qb_bank,
                       protocol=args.protocol, label_column=args.label_column)
    ks = sorted(set(ks))
    print(format_table(metrics, ks))
    print(format_ranking(metrics["ranking"]))
    if "labels" in metrics:
        print(format_labels(metrics["labels"], ks))
    if args.gap:
        print(format_gap(metrics, ks))
    if "seed_protocol" in metrics:
        print(format_seed(metrics["seed_protocol"]))
    if args.json:
        atomic_write_json(args.json, metrics)
    return 0


def _wise_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        alphas = []
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
        raise ConfigError(f"--wise must be comma-separated numbers in [0, 1], got {text!r}")
    return alphas


def format_wise(sweep: dict[str, dict], ks: list[int], title: str) -> str:
    """One row per alpha: R@K both ways and the R-sum."""
    head = ["alpha"] + [f"t2i R@{x}" for x in ks] + [f"i2t R@{x}" for x in ks] + ["rsum"]
    rows = [[name] + [f"{m[f't2i_R@{x}']:.2f}" for x in ks] + [f"{m[f'i2t_R@{x}']:.2f}" for x in ks]
            + [f"{sum(m[f't2i_R@{x}'] + m[f'i2t_R@{x}'] for x in ks):.1f}"] for name, m in sweep.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + rows]
    return "\n".join([title] + lines)


def _run_wise(args: argparse.Namespace, ks: list[int]) -> int:
    """``--wise``: the same evaluation for each alpha (WiSE-FT, 0 = zero-shot, 1 = fine-tuned) on
    the run's split, and with ``--wise-data`` on all of a second data set; one table each."""
    from crossalign._io import atomic_write_json
    from crossalign.evaluate.run import evaluate

    alphas = _wise_alphas(args.wise)
    ks = sorted(set(ks))
    pools = [("data", args.data, args.split)] + ([("second", args.wise_data, "all")] if args.wise_data else [])
    out: dict[str, dict] = {}
    for key, data, split in pools:
        sweep = {f"{a:g}": evaluate(args.run, data, split, ks, args.checkpoint, args.device,
                                    progress=not args.quiet, ranking=args.ranking, qb_beta=args.qb_beta,
                                    qb_bank=args.qb_bank, wise=a)
                 for a in alphas}
        where = f"{split} split" if key == "data" else f"all of {data} (a second data set)"
        print(format_wise(sweep, ks, f"WiSE-FT over alpha (0 = zero-shot, 1 = fine-tuned), {where}"))
        out[key] = {"data": str(data) if data else None, "split": split, "alphas": sweep}
    if args.json:
        atomic_write_json(args.json, {"wise": out["data"]["alphas"], "wise_pools": out})
    return 0
