"""Everything a report shows about one run: its history, embeddings, ranks and gap.

The run is opened with :func:`~crossalign.evaluate.run.open_run` and scored with the same
functions as ``crossalign evaluate`` (``score``, ``seen_unseen``), so the two can never
disagree: not on the numbers, nor on which rows were skipped.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossalign.config import RunConfig, to_dict, trained_splits
from crossalign.errors import DataError
from crossalign.data.validate import Problem
from crossalign.embed.collection import EmbeddedTable
from crossalign.evaluate.retrieval import Retrieval
from crossalign.evaluate.run import require_label_column, score, seen_unseen
from crossalign.runs import RunData, open_run, select_split

__all__ = ["RunReport", "collect_run", "read_history", "describe_config"]


@dataclass
class RunReport:
    """One run as the report shows it."""

    name: str  # unique label in this report
    path: Path
    cfg: RunConfig
    history: list[dict]  # metrics.csv rows, numbers as float, missing cells as None
    summary: dict  # summary.json (empty when absent)
    split: str
    emb: EmbeddedTable  # embeddings of the split
    metrics: dict  # retrieval_metrics on the split
    ranks_t2i: np.ndarray  # [n_captions] 1-based rank of each caption's image
    ranks_i2t: np.ndarray  # [n_images] 1-based rank of each image's best caption
    ranking: Retrieval  # evaluate's ranking of the split: ranks and the scores that ordered them
    seen: dict | None  # metrics on a train sample of the same size, when there is one
    problems: list[Problem]  # rows skipped: by the data rules, and images that could not be read
    model: object = None  # the run's DualEncoder, for the explained gallery rows
    label_column: str = ""  # the label whose agreement metrics["labels"] holds ("" for none)


def _number(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def read_history(path: str | Path) -> list[dict]:
    """Rows of ``metrics.csv`` as dicts of floats, by column name (absent file: no rows)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _number(v) for k, v in row.items() if k} for row in csv.DictReader(f)]


def _augmentation(d: dict) -> str:
    """Which augmentations were on: the switches of the ``augment`` section, when it exists."""
    section = d.get("augment")
    if not isinstance(section, dict):
        return "none"
    return ", ".join(k for k, v in section.items() if v is True) or "none"


def describe_config(cfg: RunConfig) -> dict[str, str]:
    """The settings a comparison table shows, read by name so new fields do not break it."""
    d = to_dict(cfg)
    model, image, text = d.get("model", {}), d.get("model", {}).get("image", {}), d.get("model", {}).get("text", {})
    return {
        "image tower": f"{image.get('tower', '?')} ({image.get('freeze', '?')})",
        "text tower": f"{text.get('tower', '?')} ({text.get('freeze', '?')})",
        "head": f"{model.get('head', '?')}, {model.get('embed_dim', '?')}-d",
        "augmentation": _augmentation(d),
        "loss": str(d.get("loss", {}).get("name", "?")),
    }


def _seen_metrics(rd: RunData, sub, seed: int, progress: bool, label_column: str = "") -> dict | None:
    """Metrics on images the run trained on, as many as ``sub`` has, so both pools are equally hard.

    The sample is ``seen_unseen`` with the same seed as ``crossalign evaluate --gap``, so the
    two report the same seen numbers. No gap when ``sub`` itself holds items trained on.
    """
    trained = trained_splits(rd.cfg)
    seen_tab, _ = seen_unseen(rd.table, sub, seed, trained=trained)
    if set(trained) & set(sub.split) or len(seen_tab) == 0:
        return None
    try:
        return score(rd, seen_tab, progress=progress, label_column=label_column or None)[0]
    except DataError:  # not one readable training image: the report shows no gap
        return None


def collect_run(run: str | Path, data: str | Path, split: str = "test", name: str = "",
                seed: int = 0, device: str = "cpu", progress: bool = True,
                which: str = "best", label_column: str = "", zero_shot: bool = False) -> RunReport:
    """Open ``run``, embed ``split`` of ``data`` with it and compute ranks, metrics and the gap
    (and with ``label_column``, the label agreement of the same rankings, seen and unseen).

    ``zero_shot`` (a pretrained model's run): its checkpoint as it was before any training, on
    the run's split, with no history of its own; the baseline a fine-tune is compared with.
    """
    run = Path(run)
    rd = open_run(run, data, which, device, quiet=True, wise=0.0 if zero_shot else None)
    sub = select_split(rd.table, split)
    if label_column:
        require_label_column(sub, label_column)
    metrics, emb, res = score(rd, sub, progress=progress, label_column=label_column or None)
    seen = _seen_metrics(rd, sub, seed, progress, label_column)
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    history = read_history(run / "metrics.csv")
    if zero_shot:
        summary, history = {"epochs_run": 0}, []
    return RunReport(
        name=name or run.name, path=run, cfg=rd.cfg, history=history,
        summary=summary, split=split, emb=emb, metrics=metrics, ranks_t2i=res.t2i_ranks,
        ranks_i2t=res.i2t_ranks, ranking=res, seen=seen, problems=rd.problems + emb.problems,
        model=rd.model, label_column=label_column,
    )
