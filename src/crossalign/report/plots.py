"""The report's pictures, drawn with matplotlib (Agg, no display) and saved as PNG files.

Every function takes plain numbers and a path, writes one PNG and returns the path, so a
notebook can call them without building a whole report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from matplotlib.patches import Rectangle

from crossalign._io import atomic_path

__all__ = ["training_curves", "rsum_curves", "distance_heatmap", "rank_histograms", "recall_bars",
           "gap_bars", "DIRECTION_COLOURS"]

DIRECTION_COLOURS = {"t2i": "#2563eb", "i2t": "#ea580c"}
_RUN_COLOURS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]
_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.color": "#e5e7eb", "grid.linewidth": 0.8,
    "axes.edgecolor": "#9ca3af", "legend.frameon": False, "figure.dpi": 110, "savefig.dpi": 110,
}
_RECALL = re.compile(r"^val_(t2i|i2t)_R@(\d+)$")


def _plain(text: str) -> str:
    """User text drawn as written: a ``$`` would otherwise start matplotlib's maths mode."""
    return text.replace("$", r"\$")


def _subplots(rows: int = 1, cols: int = 1, **figure):
    """A figure outside pyplot (nothing global, no window, no backend switch) and its axes."""
    fig = Figure(**figure)
    return fig, fig.subplots(rows, cols)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", facecolor="white")
    return path


def _series(history: Sequence[Mapping], column: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one column, skipping rows where it is missing."""
    pts = [(r.get("epoch") or i + 1, r.get(column)) for i, r in enumerate(history)]
    pts = [(e, v) for e, v in pts if v is not None]
    return [e for e, _ in pts], [v for _, v in pts]


def _missing(ax: "matplotlib.axes.Axes", what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot recorded", ha="center", va="center", color="#6b7280", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _line_panel(ax, history, columns: Sequence[str], title: str, ylabel: str, best_epoch) -> None:
    drawn = False
    for col in columns:
        x, y = _series(history, col)
        if x:
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.6, label=col)
            drawn = True
    ax.set_title(title)
    if not drawn:
        return _missing(ax, title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if best_epoch:
        ax.axvline(best_epoch, color="#9ca3af", linestyle=":", linewidth=1.2, label="best epoch")
    if len(columns) > 1 or best_epoch:
        ax.legend(fontsize=8)


def _recall_panel(ax, history, best_epoch, title: str = "validation Recall@K") -> None:
    cols = sorted({c for r in history for c in r if _RECALL.match(c)},
                  key=lambda c: (_RECALL.match(c).group(1) != "t2i", int(_RECALL.match(c).group(2))))
    ax.set_title(title)
    if not cols:
        return _missing(ax, title)
    for col in cols:
        direction, k = _RECALL.match(col).groups()
        x, y = _series(history, col)
        style = ["-", "--", ":", "-."][min(3, sorted({int(_RECALL.match(c).group(2)) for c in cols}).index(int(k)))]
        ax.plot(x, y, style, color=DIRECTION_COLOURS[direction], linewidth=1.6, label=f"{direction} R@{k}")
    if best_epoch:
        ax.axvline(best_epoch, color="#9ca3af", linestyle=":", linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.legend(fontsize=8, ncol=2, loc="best")


def training_curves(history: Sequence[Mapping], path: str | Path, best_epoch: int | None = None,
                    val_trained_on: bool = False) -> Path:
    """Loss, validation Recall@K, learning rate and temperature per epoch (2 x 2 panels).

    ``val_trained_on``: the run learned from the val split too (a refit), so its curve is of
    data the weights saw, drawn under that title and with no best epoch marked."""
    if val_trained_on:
        best_epoch = None
    title = "Recall@K on val (trained on: not held out)" if val_trained_on else "validation Recall@K"
    with matplotlib.rc_context(_STYLE):
        fig, axes = _subplots(2, 2, figsize=(10, 6.4))
        losses = ["train_loss"] + sorted({c for r in history for c in r if c.endswith("_loss") and c != "train_loss"})
        _line_panel(axes[0, 0], history, losses, "loss", "loss", best_epoch)
        _recall_panel(axes[0, 1], history, best_epoch, title)
        _line_panel(axes[1, 0], history, ["lr"], "learning rate", "lr", None)
        _line_panel(axes[1, 1], history, ["temperature"], "temperature", "1 / logit scale", None)
        _, lr = _series(history, "lr")
        if lr and min(lr) > 0 and max(lr) / min(lr) > 20:
            axes[1, 0].set_yscale("log")
        elif lr:
            axes[1, 0].ticklabel_format(axis="y", style="sci", scilimits=(0, 0), useOffset=False)
        fig.tight_layout()
        return _save(fig, path)


def rsum_curves(histories: Mapping[str, Sequence[Mapping]], path: str | Path, column: str = "val_rsum") -> Path:
    """One line per run: the validation R-sum per epoch."""
    with matplotlib.rc_context(_STYLE):
        fig, ax = _subplots(figsize=(10, 3.6))
        for n, (name, history) in enumerate(histories.items()):
            x, y = _series(history, column)
            ax.plot(x, y, marker="o", markersize=3, color=_RUN_COLOURS[n % len(_RUN_COLOURS)], label=_plain(name))
        ax.set_title(f"{column} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("R-sum")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _save(fig, path)


def distance_heatmap(dist: np.ndarray, row_labels: Sequence[str], thumbs: Sequence, path: str | Path) -> Path:
    """Cosine distance ``[k_captions, k_images]``; rows are captions, columns carry thumbnails.

    Matching pairs sit on the diagonal, outlined, so a good model shows a dark diagonal.
    """
    k_rows, k_cols = dist.shape
    with matplotlib.rc_context({**_STYLE, "axes.grid": False}):
        fig, ax = _subplots(figsize=(2.4 + 0.95 * k_cols, 1.4 + 0.62 * k_rows))
        im = ax.imshow(dist, cmap="viridis", vmin=min(0.0, float(dist.min())), vmax=max(1.0, float(dist.max())))
        for r in range(k_rows):
            for c in range(k_cols):
                ax.text(c, r, f"{dist[r, c]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dist[r, c] < 0.6 * max(1.0, float(dist.max())) else "#111827")
        for d in range(min(k_rows, k_cols)):
            ax.add_patch(Rectangle((d - 0.5, d - 0.5), 1, 1, fill=False, edgecolor="#f43f5e", linewidth=2))
        ax.set_yticks(range(k_rows), [f"{r + 1}. {_plain(lab)}" for r, lab in enumerate(row_labels)])
        ax.set_xticks(range(k_cols), [str(c + 1) for c in range(k_cols)])
        ax.xaxis.tick_top()
        ax.tick_params(axis="x", pad=44, length=0)
        for c, thumb in enumerate(thumbs):
            arr = np.asarray(thumb)
            box = OffsetImage(arr, zoom=40 / max(arr.shape[:2]))
            ax.add_artist(AnnotationBbox(box, (c, -0.5), xybox=(0, 24), xycoords="data",
                                         boxcoords="offset points", frameon=False, annotation_clip=False))
        fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label="cosine distance (1 - cos)")
        fig.tight_layout()
        return _save(fig, path)


def _rank_bins(n: int) -> np.ndarray:
    """Integer bins while ranks are few, then log-spaced ones that each hold at least one integer."""
    if n <= 30:
        return np.arange(0.5, n + 1.5)
    edges = np.unique(np.round(np.geomspace(1, n + 1, 32)))  # integer edges: no empty sliver bins
    return np.unique(np.concatenate([[1, 2, 3, 4], edges])) - 0.5


_RANK_TICKS = (1, 2, 5, 10, 20, 50, 100, 300, 1000, 3000, 10000, 30000, 100000, 300000)


def _rank_panel(ax, ranks: np.ndarray, pool: int, direction: str, title: str) -> None:
    bins = _rank_bins(pool)
    # bins widen with rank, so each bar is the mean count per rank inside it: no false bumps
    width = np.diff(bins)[np.clip(np.searchsorted(bins, ranks) - 1, 0, len(bins) - 2)]
    ax.hist(ranks, bins=bins, weights=1.0 / width, color=DIRECTION_COLOURS[direction], alpha=0.85,
            edgecolor="white")
    if pool > 30:
        ax.set_xscale("log")
        ticks = [t for t in _RANK_TICKS if t <= pool]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(0.5, pool + 0.5)
    med = float(np.median(ranks)) if len(ranks) else 0.0
    ax.axvline(med, color="#6b7280", linestyle="--", linewidth=1.2, label=f"median rank {med:g}")
    cum = ax.twinx()  # the share of queries at or above each rank is Recall@K read off the curve
    ks = np.arange(1, pool + 1)
    cum.plot(ks, 100.0 * np.searchsorted(np.sort(ranks), ks, side="right") / max(1, len(ranks)),
             color="#111827", linewidth=1.4, label="Recall@K (right axis)")
    cum.set_ylim(0, 102)
    cum.set_ylabel("Recall@K, %")
    cum.grid(False)
    cum.spines["right"].set_visible(True)
    ax.set_title(title)
    ax.set_xlabel(f"rank of the correct item (1 = best, pool of {pool})")
    ax.set_ylabel("queries per rank")
    lines = ax.get_legend_handles_labels()[0] + cum.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="center right")


def rank_histograms(ranks_t2i: np.ndarray, ranks_i2t: np.ndarray, n_images: int, n_captions: int,
                    path: str | Path) -> Path:
    """Where the correct item ranks, for caption queries (left) and image queries (right)."""
    with matplotlib.rc_context(_STYLE):
        fig, axes = _subplots(1, 2, figsize=(10, 3.4))
        _rank_panel(axes[0], ranks_t2i, n_images, "t2i", f"text → image ({len(ranks_t2i)} caption queries)")
        _rank_panel(axes[1], ranks_i2t, n_captions, "i2t", f"image → text ({len(ranks_i2t)} image queries)")
        fig.tight_layout()
        return _save(fig, path)


def _grouped_bars(ax, groups: Mapping[str, Mapping], keys: Sequence[str], colours: Sequence[str]) -> None:
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(keys))
    for n, (name, values) in enumerate(groups.items()):
        heights = [values.get(k) or 0.0 for k in keys]
        bars = ax.bar(x + (n - (len(groups) - 1) / 2) * width, heights, width * 0.92, label=_plain(name),
                      color=colours[n % len(colours)])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, [k.replace("_", " ") for k in keys])
    ax.set_ylabel("%")
    ax.set_ylim(0, 119)  # headroom for the bar labels and a legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=8, loc="upper center", ncol=min(4, len(groups)))


def recall_bars(metrics: Mapping[str, Mapping], path: str | Path, ks: Sequence[int] = (1, 5, 10)) -> Path:
    """Recall@K in both directions, one bar per run."""
    keys = [f"{d}_R@{k}" for d in ("t2i", "i2t") for k in ks]
    with matplotlib.rc_context(_STYLE):
        fig, ax = _subplots(figsize=(10, 3.6))
        _grouped_bars(ax, metrics, keys, _RUN_COLOURS)
        ax.set_title("Recall@K by run")
        fig.tight_layout()
        return _save(fig, path)


def gap_bars(seen: Mapping, unseen: Mapping, path: str | Path, ks: Sequence[int] = (1, 5, 10)) -> Path:
    """Recall@K on seen (training) items next to unseen ones: the width of the gap is overfitting."""
    keys = [f"{d}_R@{k}" for d in ("t2i", "i2t") for k in ks]
    with matplotlib.rc_context(_STYLE):
        fig, ax = _subplots(figsize=(10, 3.2))
        _grouped_bars(ax, {"seen (train sample)": seen, "unseen": unseen}, keys, ["#94a3b8", "#2563eb"])
        ax.set_title("seen vs unseen items, equal pool sizes")
        fig.tight_layout()
        return _save(fig, path)


MAX_CLASSES_SHOWN = 30  # the classes with most queries; the JSON of evaluate has them all


def _class_panel(ax, per_class: Mapping[str, Mapping], key: str, title: str) -> None:
    names = sorted(per_class, key=lambda c: (-per_class[c]["queries"], c))[:MAX_CLASSES_SHOWN][::-1]
    if not names:
        return _missing(ax, "no labelled queries")
    y = np.arange(len(names))
    ax.barh(y, [100 * per_class[c][key] for c in names], 0.7, color="#2563eb", label=key.replace("@", " at "))
    ax.scatter([100 * per_class[c]["chance_precision"] for c in names], y, marker="|", s=120, color="#dc2626",
               zorder=3, label="chance")
    ax.set_yticks(y, [f"{_plain(c)} ({per_class[c]['queries']})" for c in names], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")


def label_bars(labels: Mapping, path: str | Path, key: str = "precision@5") -> Path:
    """Per-class label agreement (the share of the top K that share a class with the query),
    both directions, each class beside its chance level; classes by their number of queries."""
    n = min(MAX_CLASSES_SHOWN, max(len(labels["t2i"]["per_class"]), len(labels["i2t"]["per_class"]), 1))
    with matplotlib.rc_context(_STYLE):
        fig, axes = _subplots(1, 2, figsize=(10, 1.2 + 0.28 * n))
        for ax, d, title in zip(axes, ("t2i", "i2t"), ("text → image", "image → text")):
            _class_panel(ax, labels[d]["per_class"], key, f"{title}: {key} by {labels['column']!r}")
        fig.tight_layout()
        return _save(fig, path)
