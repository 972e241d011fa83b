"""The Flickr8k ablation grid: one row per configuration, every test metric and the wall time.

Each row trains one run (rows that differ only in ranking share it) and evaluates its best
checkpoint on the test split. Rows that are too slow for a 2-core CPU are listed and skipped
unless ``--all`` (or ``--gpu``, which also trains on CUDA). Writes a Markdown table
(``--md``, default ``bench/flickr8k.md``) and the full metrics as JSON beside it.

    python bench/flickr8k.py --data ../shared/data/flickr8k --out runs/grid --cache-dir CACHE
    python bench/flickr8k.py --data ../shared/data/flickr8k --out runs/grid --rows lite0,qbnorm
    python bench/flickr8k.py --data ../shared/data/flickr8k --out runs/grid --rows best,best_plain --merge
    python bench/flickr8k.py --data ../shared/data/flickr8k --out /tmp/g --limit 120 --epochs 1 --md /tmp/g.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crossalign._io import atomic_write_text  # a table is written whole or not at all

__all__ = ["Row", "ROWS", "main", "merge"]


@dataclass(frozen=True)
class Row:
    """One configuration: a config file and ``--set`` overrides, the ranking evaluate uses, and
    whether it is slow on 2 cores."""

    name: str
    what: str
    sets: tuple[str, ...] = ()
    ranking: str = "plain"
    slow: bool = False  # too slow for two CPU cores: run with --all or --gpu
    config: str = ""  # a run config (YAML) under the sets; empty = crossalign's defaults


# every row starts from crossalign's defaults (cosine schedule, feature dropout) or its config file
_BIG = ("train.batch_size=4096", "train.lr=2e-3", "train.warmup_steps=10", "train.weight_decay=0.1",
        "train.patience=6")  # big batches over cached features
_NODROP = ("model.image.dropout=0", "model.text.dropout=0")
_BOTH = ("model.image.tower=efficientnet_lite0+efficientnet_lite2",)
BEST = "configs/flickr8k-best.yaml"
ROWS = (
    Row("lite0_minilm", "Lite0 frozen + MiniLM frozen, linear heads, InfoNCE: the defaults (batch 256, "
        "lr 2e-4, cosine, feature dropout 0.5 / 0.1)"),
    Row("qbnorm", "the same run ranked with query-bank normalisation (evaluate's default)", ranking="qbnorm"),
    Row("no_dropout", "the defaults without feature dropout", _NODROP),
    Row("no_dropout_qbnorm", "the defaults without feature dropout, qbnorm", _NODROP, "qbnorm"),
    Row("mlp", "MLP heads", ("model.head=mlp",)),
    Row("siglip", "SigLIP loss instead of InfoNCE", ("loss.name=siglip",)),
    Row("batch4k", "batch 4096, lr 2e-3", _BIG),
    Row("batch4k_qbnorm", "batch 4096, lr 2e-3, ranked with query-bank normalisation", _BIG, "qbnorm"),
    Row("batch4k_no_dropout_qbnorm", "batch 4096, lr 2e-3, no feature dropout, qbnorm", _BIG + _NODROP,
        "qbnorm"),
    Row("mirror_qbnorm", "batch 4096 + mirror as a cached training view, flip-averaged embeddings, qbnorm",
        _BIG + ("augment.mirror=true", "model.image.tta_flip=true"), "qbnorm"),
    Row("augment", "image augmentation (4 cached views) + text augmentation",
        ("augment.image=true", "augment.text=true")),
    Row("lite2", "Lite2 frozen instead of Lite0", ("model.image.tower=efficientnet_lite2",)),
    Row("lite0_lite2_qbnorm", "Lite0 and Lite2 features concatenated, batch 4096, qbnorm",
        _BIG + _BOTH, "qbnorm"),
    Row("best_heads", f"{BEST}, its first stage alone: heads over concatenated towers at 340 px, dropout, "
        "mirror and two cropped views, flip averaging, qbnorm", ("then=[]",), ranking="qbnorm", config=BEST),
    Row("best_heads_own_size", "the same at each tower's own input size (Lite0 224 px, Lite2 260 px)",
        ("then=[]", "model.image.image_size=0"), ranking="qbnorm", config=BEST),
    Row("best_heads_300px", "the same at 300 px", ("then=[]", "model.image.image_size=300"), ranking="qbnorm",
        config=BEST),
    Row("best_heads_no_crops", "the same at 340 px without the cropped views (the mirror only)",
        ("then=[]", "augment.image=false"), ranking="qbnorm", config=BEST),
    Row("best", f"{BEST}: its first stage, then all six of MiniLM's layers from its heads, qbnorm",
        ranking="qbnorm", config=BEST),
    Row("best_text_last2", "the same with MiniLM's last two layers in the second stage",
        ("then=[{model.text.freeze: 'last:2', train: {lr: 1.0e-4, backbone_lr: 5.0e-5, batch_size: 1024, "
         "epochs: 8, keep: best}}]",), ranking="qbnorm", config=BEST),
    Row("best_plain", f"{BEST} ranked by plain cosine", ranking="plain", config=BEST),
    Row("lstm", "LSTM text tower from scratch", ("model.text.tower=lstm", "train.lr=1e-3")),
    Row("transformer", "small Transformer text tower from scratch",
        ("model.text.tower=transformer", "train.lr=1e-3")),
    Row("minilm_last2", "MiniLM last 2 layers trained (LiT)",
        ("model.text.freeze=last:2", "train.backbone_lr=5e-5", "train.epochs=4")),
    Row("minilm_all", "all of MiniLM trained", ("model.text.freeze=trainable", "train.backbone_lr=3e-5",
                                               "train.epochs=3"), slow=True),
    Row("lite0_last2", "Lite0 last 2 blocks trained over a cached prefix, augmentation",
        ("model.image.freeze=last:2", "train.backbone_lr=1e-4", "augment.image=true", "train.epochs=5"),
        slow=True),
    Row("small_cnn", "small CNN image tower from scratch", ("model.image.tower=small_cnn", "train.lr=1e-3",
                                                            "train.epochs=15"), slow=True),
)


def _subset(data: Path, out: Path, limit: int) -> Path:
    """A canonical data folder with the first ``limit`` images of the standard split (3:1:1 kept)."""
    import csv

    sub = out / f"data-{limit}"
    if sub.exists():
        return sub
    (sub / "splits").mkdir(parents=True)
    counts = {"train": limit * 3 // 5, "val": limit // 5, "test": limit - limit * 3 // 5 - limit // 5}
    keep: set[str] = set()
    for split, n in counts.items():
        names = (data / "splits" / f"{split}.txt").read_text().split()[:n]
        (sub / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
        keep.update(names)
    (sub / "images").symlink_to((data / "images").resolve())
    with open(data / "captions.txt", newline="", encoding="utf-8") as f, \
            open(sub / "captions.txt", "w", newline="", encoding="utf-8") as g:
        rows = csv.reader(f)
        w = csv.writer(g)
        w.writerow(next(rows))
        w.writerows(r for r in rows if r and r[0] in keep)
    return sub


# a quick check's caps (--limit, --epochs): set on every stage of a staged config too, whose later
# stages would otherwise set their own batch size and epoch count
_CAPS = ("train.batch_size", "train.epochs")


def _train(row: Row, data: Path, run: Path, common: list[str]) -> dict:
    import crossalign.api
    from crossalign.config import load_config

    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    config = str(Path(__file__).resolve().parents[1] / row.config) if row.config else None
    cfg = load_config(config, [*common, *row.sets])
    caps = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in [*common, *row.sets])
            if k in _CAPS}
    cfg.then = [{**stage, **caps} for stage in cfg.then]
    res = crossalign.api.train(data, run, config=cfg, progress=False)
    return {"train_seconds": round(time.perf_counter() - t0, 1), "best_epoch": res.best_epoch,
            "epochs_run": len(res.history)}


def _evaluate(row: Row, data: Path, run: Path, device: str) -> dict:
    from crossalign.evaluate.run import evaluate

    t0 = time.perf_counter()
    m = evaluate(run, data, "test", device=device, ranking=row.ranking, progress=False)
    m["evaluate_seconds"] = round(time.perf_counter() - t0, 1)
    return m


def _select(names: str, run_all: bool) -> list[Row]:
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else [r.name for r in ROWS]
    unknown = sorted(set(wanted) - {r.name for r in ROWS})
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; rows: {', '.join(r.name for r in ROWS)}")
    return [r for r in ROWS if r.name in wanted and (run_all or not r.slow or names)]


_COLS = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "rsum", "t2i_median_rank",
         "i2t_median_rank", "t2i_mean_rank", "i2t_mean_rank", "t2i_mrr", "i2t_mrr")


def merge(old: list[dict], new: list[dict], command: str) -> list[dict]:
    """The rows of an earlier grid (``old``, its JSON's rows) with this run's rows (``new``) put in:
    a row measured now replaces the earlier row of its name; the others stay as measured, each with
    the command that measured it. Rows come out in the grid's order (``ROWS``), unknown names last."""
    now = {r["row"]: {**r, "command": command} for r in new}
    kept = {r["row"]: r for r in old if r["row"] not in now}
    order = {r.name: i for i, r in enumerate(ROWS)}
    rows = [*kept.values(), *now.values()]
    return sorted(rows, key=lambda r: order.get(r["row"], len(order)))


def _markdown(results: list[dict], skipped: list[Row], command: str) -> str:
    head = ["row", "what", "ranking", *_COLS, "train s", "evaluate s", "wall s"]
    # every row carries the command that measured it (``merge``); numbered when there are several
    number = {c: i for i, c in enumerate(dict.fromkeys(r["command"] for r in results), 1)}
    commands = list(number) or [command]
    if len(commands) == 1:
        said = f"Command: `{commands[0]}`\n"
    else:  # a merged grid: each row says which command measured it
        said = "Commands (a row's number in the last column):\n\n" + "\n".join(
            f"{i}. `{c}`" for i, c in enumerate(commands, 1)) + "\n"
        head.append("command")
    lines = [f"# Flickr8k ablation grid (test split)\n\n{said}",
             f"Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, "
             f"Python {platform.python_version()}; wall s = train + evaluate of the row "
             f"(a ranking row reuses its run: train time 0).\n",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        m = r["metrics"]
        cells = [r["row"], r["what"], r["ranking"]] + [
            f"{m[c]:.3f}" if c.endswith("mrr") else f"{m[c]:.2f}" for c in _COLS]
        cells += [f"{r['train_seconds']:.0f}", f"{m['evaluate_seconds']:.0f}", f"{r['wall_seconds']:.0f}"]
        if len(commands) > 1:
            cells.append(str(number[r["command"]]))
        lines.append("| " + " | ".join(cells) + " |")
    slow = [r for r in skipped if r.slow]
    if slow:
        lines.append("\nToo slow for two CPU cores, not run (`--all` or `--gpu` runs them): "
                     + ", ".join(f"`{r.name}` ({r.what})" for r in slow) + ".")
    left = [r for r in skipped if not r.slow]
    if left:
        lines.append("\nNot asked for in `--rows`, not run: " + ", ".join(f"`{r.name}`" for r in left) + ".")
    return "\n".join(lines) + "\n"


def _run_rows(rows: list[Row], data: Path, out: Path, common: list[str], device: str) -> list[dict]:
    results, trained, runs = [], {}, {}
    for row in rows:
        key = (row.config, row.sets)
        run = runs.setdefault(key, out / f"run-{row.name}")  # rows with the same setup share a run
        fresh = key not in trained
        if fresh:
            print(f"[{row.name}] training: {row.config} {' '.join(row.sets) or '(defaults)'}",
                  file=sys.stderr, flush=True)
            trained[key] = _train(row, data, run, common)
        info = trained[key] if fresh else {**trained[key], "train_seconds": 0.0}
        m = _evaluate(row, data, run, device)
        results.append({"row": row.name, "what": row.what, "ranking": row.ranking, "config": row.config,
                        "sets": list(row.sets), **info, "metrics": m,
                        "wall_seconds": round(info["train_seconds"] + m["evaluate_seconds"], 1)})
        print(f"[{row.name}] t2i R@1 {m['t2i_R@1']:.2f}  i2t R@1 {m['i2t_R@1']:.2f}  rsum {m['rsum']:.1f}",
              file=sys.stderr, flush=True)
    return results


def _earlier(path: Path) -> list[dict]:
    """The rows of an earlier grid's JSON, each with the command that measured it."""
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        return [{"command": old["command"], **r} for r in old["rows"]]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--merge: {path} is not a grid's JSON ({e})") from e


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="Flickr8k folder (images/, captions.txt, splits/)")
    p.add_argument("--out", required=True, help="folder for the run folders")
    p.add_argument("--rows", default="", help="comma-separated row names (default: every row not slow)")
    p.add_argument("--cache-dir", default="", help="feature cache folder (default: crossalign's usual one)")
    p.add_argument("--limit", type=int, default=0, help="use only this many images (a quick check)")
    p.add_argument("--epochs", type=int, default=0, help="cap every row's epochs (a quick check)")
    p.add_argument("--md", default="bench/flickr8k.md", help="Markdown table to write (JSON beside it)")
    p.add_argument("--all", action="store_true", help="also run the rows too slow for two CPU cores")
    p.add_argument("--merge", action="store_true",
                   help="keep the other rows of the existing table (its JSON); the rows run now replace theirs")
    p.add_argument("--gpu", action="store_true", help="train and evaluate on CUDA; runs every row")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if args.gpu else "cpu"
    common = ["train.checkpoint_every=0", f"runtime.device={device}"]
    if args.limit:  # a quick check: small batches, so that a few images still make steps
        data = _subset(data, out, args.limit)
        common.append("train.batch_size=16")
    common += [f"cache.dir={args.cache_dir}"] if args.cache_dir else []
    rows = _select(args.rows, args.all or args.gpu)
    if args.epochs:
        rows = [Row(r.name, r.what, (*r.sets, f"train.epochs={args.epochs}"), r.ranking, r.slow, r.config)
                for r in rows]
    md = Path(args.md)
    earlier = _earlier(md.with_suffix(".json")) if args.merge else []
    results = _run_rows(rows, data, out, common, device)
    command = "python bench/flickr8k.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = merge(earlier, results, command)
    skipped = [r for r in ROWS if r.name not in {x["row"] for x in results}]
    md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md, _markdown(results, skipped, command))
    atomic_write_text(md.with_suffix(".json"), json.dumps({"command": command, "rows": results}, indent=1) + "\n")
    print(f"wrote {md} and {md.with_suffix('.json')}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
