"""``crossalign.report``: one self-contained HTML page (plus PNGs) for one or more runs."""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from crossalign._io import atomic_write_text
from crossalign.data.validate import count_skipped, report_problems
from crossalign.errors import ConfigError
from crossalign.report import plots
from crossalign.report.collect import RunReport, collect_run, describe_config
from crossalign.report.samples import Thumbnails, draw_samples, image_queries, shorten, text_queries
from crossalign.report.trials import trials_section

__all__ = ["report", "ReportResult", "metric_columns"]

log = logging.getLogger("crossalign.report")

# shown first, in this order; any other numeric metric the library adds follows them
_KNOWN = [f"{d}_{m}" for d in ("t2i", "i2t") for m in ("R@1", "R@5", "R@10", "median_rank", "mean_rank", "mrr")]
_LOWER_IS_BETTER = ("median_rank", "mean_rank", "seconds")


@dataclass
class ReportResult:
    """Where the report went."""

    html: Path
    plots: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)  # run name -> retrieval metrics on the split
    skipped: dict[str, dict] = field(default_factory=dict)  # run name -> rows skipped, by kind
    seconds: float = 0.0


def metric_columns(metrics: Sequence[dict]) -> list[str]:
    """Metric names for the comparison table: the usual ones, then any others, then R-sum."""
    seen = [k for m in metrics for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    # top1 repeats R@1 and the counts are not scores
    extra = [k for k in dict.fromkeys(seen) if k not in _KNOWN and k != "rsum"
             and not k.endswith("_top1") and not k.startswith("n_") and k != "skipped_rows"]
    present = set(seen)
    return [k for k in _KNOWN if k in present] + extra + (["rsum"] if "rsum" in present else [])


def _unique_names(runs: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for r in runs:
        base = r.name or "run"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key.endswith("mrr"):
        return f"{value:.3f}"
    if key.endswith("seconds"):
        return f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict], columns: list[str]) -> list[list[dict]]:
    """Cells ``{text, best}``; the best value of a column is marked when there are several runs."""
    best: dict[str, float] = {}
    if len(rows) > 1:
        for c in columns:
            vals = [r[c] for r in rows if isinstance(r.get(c), (int, float))]
            if vals and len(set(vals)) > 1:
                best[c] = min(vals) if c.endswith(_LOWER_IS_BETTER) else max(vals)
    return [[{"text": _fmt(c, r.get(c)), "best": c in best and r.get(c) == best[c]} for c in columns] for r in rows]


_HEADS = {"median_rank": "med rank", "mean_rank": "mean rank", "mrr": "MRR", "rsum": "R-sum",
          "train_seconds": "train time"}


def _head(column: str) -> str:
    """Short column label; the direction goes in the spanning header above it."""
    name = column.removeprefix("t2i_").removeprefix("i2t_")
    return _HEADS.get(name, name.replace("_", " "))


def _comparison(data: list[RunReport]) -> dict:
    """The table up top: every metric and the training time, then each run's setup."""
    cols = metric_columns([d.metrics for d in data]) + ["train_seconds"]
    rows = [{**d.metrics, "train_seconds": d.summary.get("train_seconds")} for d in data]
    setup = [{"name": d.name, **describe_config(d.cfg), "epochs": d.summary.get("epochs_run", len(d.history)),
              "best epoch": d.summary.get("best_epoch", "–")} for d in data]
    return {
        "metric_heads": [_head(c) for c in cols],
        "direction_heads": _direction_heads(cols),
        "metric_rows": list(zip([d.name for d in data], _table(rows, cols))),
        "setup_heads": [k for k in setup[0] if k != "name"],
        "setup_rows": [(s["name"], [s[k] for k in s if k != "name"]) for s in setup],
    }


def _direction_heads(cols: list[str]) -> list[tuple[str, int]]:
    """Spanning headers over the metric columns: (label, number of columns)."""
    groups: list[tuple[str, int]] = []
    for c in cols:
        label = "text → image" if c.startswith("t2i_") else "image → text" if c.startswith("i2t_") else ""
        if groups and groups[-1][0] == label:
            groups[-1] = (label, groups[-1][1] + 1)
        else:
            groups.append((label, 1))
    return groups


def _galleries(d: RunReport, k: int, seed: int, top: int, thumbs: Thumbnails) -> dict:
    """Heatmap data and both galleries of one run, thumbnails embedded."""
    emb, samples = d.emb, draw_samples(d.emb, k, seed)
    _, paths = emb.table.images()
    t_q = text_queries(emb, samples.text_queries, d.ranks_t2i, top, d.ranking.t2i_scores)
    i_q = image_queries(emb, samples.image_queries, d.ranks_i2t, top, d.ranking.i2t_scores)
    for q in t_q + i_q:
        q["why"] = None  # filled in by explain_rows for the rows it explains
    for q in t_q:
        q["target_uri"], q["target_id"] = thumbs.uri(paths[q["target"]]), emb.image_ids[q["target"]]
        for h in q["hits"]:
            h["uri"], h["id"] = thumbs.uri(paths[h["image"]]), emb.image_ids[h["image"]]
    for q in i_q:
        q["uri"], q["id"] = thumbs.uri(paths[q["image"]]), emb.image_ids[q["image"]]
    return {"samples": samples, "text_queries": t_q, "image_queries": i_q, "top": top, "paths": paths}


def _heatmap(d: RunReport, gal: dict, thumbs: Thumbnails, path: Path) -> dict:
    s, emb = gal["samples"], d.emb
    dist = 1.0 - emb.text_emb[s.heat_captions] @ emb.image_emb[s.heat_images].T  # [k, k]
    captions = [emb.table.caption[r] for r in s.heat_captions]
    plots.distance_heatmap(dist, [shorten(c, 44) for c in captions],
                           [thumbs.image(gal["paths"][i]) for i in s.heat_images], path)
    return {"png": path, "captions": captions, "ids": [emb.image_ids[i] for i in s.heat_images]}


def _gap_table(seen: dict, unseen: dict, split: str) -> dict:
    """Seen, unseen and their difference, laid out like the metrics table."""
    cols = [k for k in metric_columns([seen]) if k in unseen]
    diff = {k: seen[k] - unseen[k] for k in cols}
    signed = [{"text": f"{diff[k]:+.{3 if k.endswith('mrr') else 1}f}", "best": False} for k in cols]
    plain = _table([seen, unseen], cols)
    for row in plain:
        for cell in row:
            cell["best"] = False  # two pools of one run: nothing to pick a winner from
    return {"heads": [_head(c) for c in cols], "direction_heads": _direction_heads(cols),
            "rows": [("seen (train sample)", plain[0]), (f"unseen ({split})", plain[1]), ("gap", signed)]}


def _labels_section(d: RunReport, png: Callable[[str], Path]) -> dict | None:
    """Label agreement: the per-class chart, and the overall figures beside chance (seen and
    unseen when there is a gap)."""
    labels = d.metrics.get("labels")
    if not labels:
        return None
    chart = plots.label_bars(labels, png("labels"))
    keys = [k for k in ("precision@1", "precision@5", "precision@10", "r_precision", "map@r")
            if k in labels["t2i"]]
    pools = [("unseen" if d.seen is not None and "labels" in d.seen else d.split, labels)]
    if d.seen is not None and "labels" in d.seen:
        pools.insert(0, ("seen (train sample)", d.seen["labels"]))
    rows = []
    for name, lab in pools:
        rows.append((name, [f"{100 * lab[dr][k]:.1f}" for dr in ("t2i", "i2t") for k in keys]))
    rows.append(("chance", [f"{100 * labels[dr]['chance'][k]:.1f}" for dr in ("t2i", "i2t") for k in keys]))
    return {"png": chart, "uri": _png_uri(chart), "column": labels["column"], "rule": labels.get("rule", ""),
            "heads": [k.replace("_", " ").replace("map@r", "MAP@R") for k in keys] * 2, "span": len(keys),
            "rows": rows}


def _run_section(d: RunReport, index: int, k: int, seed: int, top: int, thumbs: Thumbnails,
                 png: Callable[[str], Path], explain: int = -1) -> tuple[dict, list[Path]]:
    """Everything shown for one run; returns the template context and the PNGs written."""
    from crossalign.report.explained import explain_rows

    written = []
    refit = d.cfg.train.fit_on != "train"  # val trained on: its curve is not held out
    curves = plots.training_curves(d.history, png("curves"), d.summary.get("best_epoch"), refit) if d.history else None
    gal = _galleries(d, k, seed, top, thumbs)
    if explain and d.model is not None:
        explain_rows(d.model, gal, explain, max_pixels=d.cfg.data.max_pixels)
    heat = _heatmap(d, gal, thumbs, png("heatmap"))
    ranks = plots.rank_histograms(d.ranks_t2i, d.ranks_i2t, len(d.emb.image_ids), len(d.emb.text_to_image),
                                  png("ranks"))
    gap = None
    if d.seen is not None:
        gap_png = plots.gap_bars(d.seen, d.metrics, png("gap"))
        gap = {"uri": _png_uri(gap_png), "table": _gap_table(d.seen, d.metrics, d.split),
               "n_images": d.seen["n_images"], "n_captions": d.seen["n_captions"]}
        written.append(gap_png)
    written += [p for p in (curves, heat["png"], ranks) if p is not None]
    labels = _labels_section(d, png)
    if labels is not None:
        written.append(labels["png"])
    trials = trials_section(d.path, png("trials"))  # a run of train --auto: its recipe search
    if trials is not None:
        written.append(trials["png"])
        trials["uri"] = _png_uri(trials["png"])
    section = {
        "id": f"run-{index}", "name": d.name, "path": str(d.path), "split": d.split,
        "n_images": len(d.emb.image_ids), "n_captions": len(d.emb.text_to_image),
        "curves": _png_uri(curves) if curves else None, "heatmap": {**heat, "uri": _png_uri(heat["png"])},
        "text_queries": gal["text_queries"], "image_queries": gal["image_queries"], "top": top,
        "ranks": _png_uri(ranks), "gap": gap, "skipped": sum(p.level == "error" for p in d.problems),
        "trials": trials, "labels": labels,
    }
    return section, written


def _comparison_plots(data: list[RunReport], out: Path, ctx: dict) -> list[Path]:
    """Recall@K bars and validation R-sum curves of several runs, added to ``ctx``."""
    bars = plots.recall_bars({d.name: d.metrics for d in data}, out.with_name(f"{out.stem}_recall.png"))
    ctx["recall_bars"] = _png_uri(bars)
    if not any(d.history for d in data):
        return [bars]
    curves = plots.rsum_curves({d.name: d.history for d in data if d.history},
                               out.with_name(f"{out.stem}_rsum.png"))
    ctx["rsum_curves"] = _png_uri(curves)
    return [bars, curves]


def _fine_tuned_pair(d: RunReport) -> bool:
    """A pretrained model's run that trained: the report adds its zero-shot baseline."""
    return bool(d.cfg.model.pretrained_model) and any((row.get("epoch") or 0) > 0 for row in d.history)


def _earlier_stages(d: RunReport) -> list[tuple[int, Path]]:
    """A staged run's earlier stages (``RUN/stages/K``, see ``train.loop``), in order: the report
    puts each beside the last."""
    folder = d.path / "stages"
    if not folder.is_dir():
        return []
    return sorted((int(p.name), p) for p in folder.iterdir()
                  if p.name.isdigit() and (p / "model_best.safetensors").is_file())


def report(runs: str | Path | Sequence[str | Path], data: str | Path, out: str | Path, split: str = "test",
           k: int = 8, seed: int = 0, top: int = 5, device: str = "cpu", progress: bool = True,
           which: str = "best", label_column: str = "", explain: int = -1) -> ReportResult:
    """Write ``out`` (HTML, self-contained) and its plots as PNGs beside it.

    Args:
        runs: one run folder or several (several add a comparison table and bar chart); a
            fine-tuned pretrained model (``model.pretrained_model``) adds its zero-shot baseline to the table,
            and a staged run (``then``) its earlier stages.
        data: the data folder the runs were trained on.
        out: the HTML file to write; PNGs go next to it as ``<stem>_<run>_<plot>.png``.
        split: the split the heatmap, galleries and rank histograms use.
        k: items in the heatmap and queries per gallery.
        seed: fixes every sample, so the same seed gives the same page.
        top: neighbours shown per gallery query.
        label_column: also show label agreement by this column (a per-class chart and table).
        explain: gallery rows explained per gallery (why the first hit came first); -1 all, 0 none.
    """
    from crossalign.report.html import render

    t0 = time.perf_counter()
    runs = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    if not runs:
        raise ConfigError("report: give at least one run folder")
    if k < 1 or top < 1:
        raise ConfigError(f"report: `gallery` and `top` must be at least 1 (got {k} and {top})")
    out = Path(out)
    names = _unique_names(runs)
    data_runs = [collect_run(r, data, split, n, seed, device, progress, which, label_column)
                 for r, n in zip(runs, names)]
    report_problems(data_runs[0].problems)  # the same data and rules for every run: said once
    baselines = [collect_run(path, data, split, f"{d.name} (stage {k})", seed, device, progress, which,
                             label_column) for d in data_runs for k, path in _earlier_stages(d)]
    baselines += [collect_run(d.path, data, split, f"{d.name} (zero-shot)", seed, device, progress, which,
                              label_column, zero_shot=True) for d in data_runs if _fine_tuned_pair(d)]
    thumbs, written, sections = Thumbnails(), [], []
    for i, d in enumerate(data_runs):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", d.name)
        png = lambda what, name=safe: out.with_name(f"{out.stem}_{name}_{what}.png")
        section, pngs = _run_section(d, i, k, seed, top, thumbs, png, explain)
        sections.append(section)
        written += pngs
    compared = data_runs + baselines
    ctx = {"comparison": _comparison(compared), "runs": sections, "data": str(data), "split": split,
           "seed": seed, "k": k, "top": top, "generated": time.strftime("%Y-%m-%d %H:%M")}
    if len(compared) > 1:
        written += _comparison_plots(compared, out, ctx)
    atomic_write_text(out, render(ctx))
    seconds = time.perf_counter() - t0
    log.info("wrote %s and %d plots in %.1f s", out, len(written), seconds)
    return ReportResult(out, written, names, {d.name: d.metrics for d in compared},
                        {d.name: count_skipped(d.problems) for d in data_runs}, seconds)
