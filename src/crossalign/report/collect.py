"""Everything a report shows about one run: its history, embeddings, ranks and gap.

The numbers come from the library (``embed_table``, ``ranks_t2i``, ``retrieval_metrics``), so
the report and ``crossalign evaluate`` can never disagree.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossalign.config import RunConfig, default_cache_dir, load_config, to_dict
from crossalign.data.table import PairTable
from crossalign.evaluate.retrieval import metrics_from_ranks, ranks_i2t, ranks_t2i, retrieval_metrics
from crossalign.evaluate.run import EmbeddedTable, embed_table, sample_images, select_split

__all__ = ["RunData", "collect_run", "read_history", "describe_config"]


@dataclass
class RunData:
    """One run as the report sees it."""

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
    seen: dict | None  # metrics on a train sample of the same size, when there is one


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


def _seen_metrics(model, cfg: RunConfig, table: PairTable, sub: PairTable, cache_root, device: str,
                  seed: int, progress: bool) -> dict | None:
    """Metrics on training images, as many as ``sub`` has, so both pools are equally hard.

    The sample is ``sample_images`` with the same seed as ``crossalign evaluate --gap``, so the
    two report the same seen numbers. No gap when ``sub`` itself holds training items.
    """
    train = table.select("train")
    if "train" in set(sub.split) or len(train) == 0:
        return None
    emb = embed_table(model, sample_images(train, len(set(sub.image_id)), seed), cache_root, device,
                      cfg.train.eval_batch_size, progress)
    if len(emb.image_ids) == 0:
        return None
    return retrieval_metrics(emb.image_emb, emb.text_emb, emb.text_to_image)


def collect_run(run: str | Path, data: str | Path, split: str = "test", name: str = "",
                seed: int = 0, device: str = "cpu", progress: bool = True,
                which: str = "best") -> RunData:
    """Load ``run``, embed ``split`` of ``data`` with it and compute ranks, metrics and the gap."""
    from crossalign.data.prepare import prepare_table
    from crossalign.train.checkpoint import load_model

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"{run}: not a run folder (config.yaml missing)")
    # read the data before building the model, so a wrong split fails at once
    table, _ = prepare_table(data, load_config(run / "config.yaml").data, run_dir=run, quiet=not progress)
    sub = select_split(table, split)
    model, cfg = load_model(run, which, device)
    cache_root = default_cache_dir(cfg.cache) if cfg.cache.enabled else None
    emb = embed_table(model, sub, cache_root, device, cfg.train.eval_batch_size, progress)
    if len(emb.image_ids) == 0:
        raise ValueError(f"{data}: no readable image in the {split!r} split of run {run}")
    t2i = ranks_t2i(emb.image_emb, emb.text_emb, emb.text_to_image)  # [n_captions]
    i2t = ranks_i2t(emb.image_emb, emb.text_emb, emb.text_to_image)  # [n_images]
    seen = _seen_metrics(model, cfg, table, sub, cache_root, device, seed, progress)
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return RunData(
        name=name or run.name, path=run, cfg=cfg, history=read_history(run / "metrics.csv"),
        summary=summary, split=split, emb=emb, metrics=metrics_from_ranks(t2i, i2t), ranks_t2i=t2i,
        ranks_i2t=i2t, seen=seen,
    )
