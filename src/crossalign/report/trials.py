"""The recipe search in a report: every trial of ``trials.csv`` as a table, and its score per trial.

A run made by ``crossalign train --auto`` (or a folder of ``crossalign tune``) holds
``trials.csv`` and ``search.json`` (see :mod:`crossalign.train.tune`); other runs show nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

from crossalign.report.plots import _STYLE, _save, _subplots

__all__ = ["trial_scores", "trials_section"]

_STATE_STYLE = {  # state -> (colour, filled)
    "complete": ("#2563eb", True),
    "pruned": ("#9ca3af", False),
}
# parameter columns, shortened for the table
_SHORT = {"image_dropout": "img drop", "text_dropout": "txt drop", "weight_decay": "wd",
          "batch_size": "batch", "scheduler": "schedule", "scale_init": "1/T init",
          "learn_scale": "learn T", "qb_beta": "qb β", "epochs_run": "epochs run",
          "score_epoch": "scored at"}


def _float(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def trial_scores(rows: Sequence[Mapping], path: str | Path, chosen: int | None = None,
                 objective: str = "rsum") -> Path:
    """The score of every trial by trial number (pruned ones hollow, at their last epoch), the best
    complete score so far as a step line, the chosen trial starred."""
    with matplotlib.rc_context(_STYLE):
        fig, ax = _subplots(figsize=(10, 3.4))
        for state, (colour, filled) in _STATE_STYLE.items():
            pts = [(int(r["trial"]), _float(r["score"])) for r in rows if r["state"] == state]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], s=22, label=state, zorder=3,
                           facecolors=colour if filled else "none", edgecolors=colour)
        best, xs, ys = None, [], []
        for r in sorted(rows, key=lambda r: int(r["trial"])):
            y = _float(r["score"])
            if r["state"] == "complete" and y is not None:
                best = y if best is None else max(best, y)
            if best is not None:
                xs.append(int(r["trial"]))
                ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", color="#16a34a", linewidth=1.4, label="best so far")
        pick = [r for r in rows if chosen is not None and int(r["trial"]) == chosen]
        if pick and _float(pick[0]["score"]) is not None:
            ax.scatter([chosen], [_float(pick[0]["score"])], marker="*", s=160, color="#ea580c", zorder=4,
                       label=f"chosen (trial {chosen})")
        ax.set_title(f"validation {'R-sum' if objective == 'rsum' else 'mean R@1'} per trial")
        ax.set_xlabel("trial")
        ax.set_ylabel("score")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return _save(fig, path)


def _cell(column: str, value: str) -> str:
    x = _float(value)
    if x is None or column in ("trial", "epochs", "epochs_run", "score_epoch", "batch_size"):
        return value
    if column == "seconds":
        return f"{x:.1f}"
    if column in ("lr", "weight_decay"):
        return f"{x:.2g}"
    return f"{x:.2f}" if abs(x) >= 1 or column.endswith("dropout") else f"{x:.3g}"


def trials_section(run: str | Path, png: Path) -> dict | None:
    """The template context of the search section of ``run`` (None when the run made no search)."""
    run = Path(run)
    if not (run / "trials.csv").is_file():
        return None
    with open(run / "trials.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    try:
        info = json.loads((run / "search.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    best = info.get("best", {}).get("trial")
    objective = info.get("objective", "rsum")
    columns = [c for c in (rows[0].keys() if rows else []) if any(r.get(c) not in ("", None) for r in rows)]
    return {
        "png": trial_scores(rows, png, best, objective),
        "description": info.get("validation", {}).get("description", ""),
        "objective": objective, "chosen": best, "n": len(rows),
        "heads": [_SHORT.get(c, c.replace("_", " ")) for c in columns],
        "rows": [{"chosen": best is not None and r["trial"] == str(best),
                  "cells": [_cell(c, r.get(c, "")) for c in columns]} for r in rows],
    }
