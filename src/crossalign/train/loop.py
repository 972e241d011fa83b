"""``train`` and ``resume``: epochs, validation, best checkpoint, early stopping.

The run folder is the whole state: ``config.yaml``, ``run.json`` (where the data is),
``splits/``, logs, checkpoints and the resume point. ``resume(RUN)`` continues a stopped
run and ends with exactly the metrics the uninterrupted run reaches.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from crossalign.errors import RunError
from crossalign._io import atomic_write_json
from crossalign.config import RunConfig, load_config, save_config, stage_configs, to_dict
from crossalign.data.prepare import prepare_table
from crossalign.errors import DataError
from crossalign.data.splits import write_split_files
from crossalign.data.validate import report_problems
from crossalign.runs import is_run_folder, recorded_data
from crossalign.train.checkpoint import save_model
from crossalign.distributed import DistInfo
from crossalign.train.engine import Engine, run_engine, seed_everything
from crossalign.train.logs import RunLogger
from crossalign.train.state import has_resume_point, load_resume_point

__all__ = ["train", "resume", "TrainResult", "seed_everything"]

log = logging.getLogger("crossalign.train")


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    fit_on: str = "train"  # train.fit_on: with "train+val" the val figures are of data it trained on
    tuned: object = None  # the TuneResult of the recipe search that chose the recipe, if one did

    @property
    def refit(self) -> bool:
        """Whether the weights learned from the val split too (its figures are then not held out)."""
        return self.fit_on != "train"

    def _val_table(self) -> tuple[list[str], list[list[str]]]:
        """The best epoch's validation figures: R@K, median rank and MRR, a row per direction."""
        m = {k.removeprefix("val_"): v for k, v in self.best_metrics.items() if k.startswith("val_")}
        ks = sorted(int(k[6:]) for k in m if k.startswith("t2i_R@") and k[6:].isdigit())
        cols = [(f"R@{k}", f"R@{k}", ".2f") for k in ks] + [("median rank", "median_rank", ".2f"),
                                                            ("MRR", "mrr", ".3f")]
        cols = [c for c in cols if f"t2i_{c[1]}" in m and f"i2t_{c[1]}" in m]
        rows = [[label] + [format(m[f"{d}_{key}"], fmt) for _, key, fmt in cols]
                for d, label in (("t2i", "text->image"), ("i2t", "image->text"))]
        return [title for title, _, _ in cols], rows if cols else []

    def _val_note(self) -> str:
        return " (val trained on: not held out)" if self.refit else ""

    def __str__(self) -> str:
        m = self.best_metrics
        figures = ", ".join(f"{name} {m[f'val_{key}']:.2f}" for name, key in (
            ("t2i R@1", "t2i_R@1"), ("i2t R@1", "i2t_R@1"), ("rsum", "rsum")) if f"val_{key}" in m)
        return (f"run {self.run_dir}: best epoch {self.best_epoch} of {len(self.history)}, "
                f"{self.train_seconds:.1f} s; val{self._val_note()}: {figures or 'none'}")

    def _repr_pretty_(self, p, cycle: bool) -> None:  # IPython's plain-text display
        p.text(str(self))

    def _best_html(self, cell: str) -> str:
        import html

        head, rows = self._val_table()
        rsum = self.best_metrics.get("val_rsum")
        rsum = f"; rsum {rsum:.1f}" if isinstance(rsum, (int, float)) else ""
        ths = "".join(f"<th {cell}>{html.escape(h)}</th>" for h in head)
        trs = "".join(f"<tr><td>{html.escape(r[0])}</td>" + "".join(f"<td {cell}>{v}</td>" for v in r[1:])
                      + "</tr>" for r in rows)
        return (f"<table><caption style='text-align:left'>validation at the best epoch"
                f"{html.escape(self._val_note())}{rsum}</caption><tr><th></th>{ths}</tr>{trs}</table>")

    def _history_html(self, cell: str) -> str:
        import html

        def fmt(value) -> str:  # floats to four significant digits; a missing value empty
            if isinstance(value, float):
                return f"{value:.4g}"
            return "" if value is None else html.escape(str(value))

        columns = [c for c in ("epoch", "train_loss", "val_t2i_R@1", "val_i2t_R@1", "val_rsum", "lr",
                               "epoch_seconds") if any(c in row for row in self.history)]
        ths = "".join(f"<th {cell}>{html.escape(c)}</th>" for c in columns)
        trs = "".join("<tr>" + "".join(f"<td {cell}>{fmt(row.get(c))}</td>" for c in columns) + "</tr>"
                      for row in self.history)
        return f"<table><caption style='text-align:left'>per epoch</caption><tr>{ths}</tr>{trs}</table>"

    def _repr_html_(self) -> str:
        """The run folder, the best epoch's validation figures and the per-epoch history."""
        import html

        cell = 'style="padding:1px 8px;text-align:right"'
        tuned = "; recipe chosen by a recipe search" if self.tuned is not None else ""
        refit = ("<p><b>Note:</b> the weights learned from the val split too (train.fit_on "
                 f"{html.escape(self.fit_on)}), so these val figures are of data it trained on, "
                 "not held out.</p>") if self.refit else ""
        return (f'<div class="crossalign-train"><p>run <code>{html.escape(str(self.run_dir))}</code>: '
                f"best epoch {self.best_epoch} of {len(self.history)}, {self.train_seconds:.1f} s"
                f"{tuned}</p>{refit}{self._best_html(cell)}{self._history_html(cell)}</div>")


def _barrier(dist: DistInfo) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def _prepare(data: str | Path, run: Path, cfg: RunConfig, dist: DistInfo, fresh: bool):
    """Read and split the data; the main process writes config, run.json and splits."""
    if fresh and dist.is_main:  # the first write creates the folder (or names it, if it cannot)
        save_config(cfg, run / "config.yaml")
        atomic_write_json(run / "run.json", {"data": str(Path(data).resolve()), "world_size": dist.world_size})
    _barrier(dist)
    table, problems = prepare_table(data, cfg.data, run_dir=None if fresh else run, quiet=True)
    for split in ("train", "val"):
        if not table.select(split).caption:
            raise DataError(f"{data}: the {split} split is empty; give more images or change data.split_ratios")
    if fresh and dist.is_main:
        write_split_files(table, run / "splits")
    return table, problems


def _finish_epoch(engine: Engine, logger: RunLogger, train_loss: float, t_epoch: float) -> bool:
    """Validate, log, checkpoint; returns True when training should stop early."""
    cfg, pos = engine.cfg.train, engine.pos
    val = engine.validate()
    engine.sched.after_epoch(val[cfg.monitor])
    row = {"epoch": pos.epoch, "step": pos.global_step, "train_loss": train_loss,
           "lr": engine.opt.param_groups[0]["lr"], "temperature": 1 / engine.model.scale().item(),
           "samples_per_s": getattr(engine, "samples_per_s", 0.0),
           "epoch_seconds": time.perf_counter() - t_epoch, **{f"val_{k}": v for k, v in val.items()}}
    logger.epoch(row)
    improved = val[cfg.monitor] > pos.best or cfg.keep == "last"
    if improved:
        pos.best, pos.best_epoch, pos.bad_epochs = val[cfg.monitor], pos.epoch, 0
    else:
        pos.bad_epochs += 1
    if engine.dist.is_main:
        save_model(engine.model, engine.run / "model_last.safetensors", {"epoch": pos.epoch, "val": val})
        if improved:
            save_model(engine.model, engine.run / "model_best.safetensors", {"epoch": pos.epoch, "val": val})
    if cfg.fit_on == "train":
        log.info("epoch %d loss %.4f val t2i R@1 %.2f i2t R@1 %.2f %s %.2f%s", pos.epoch, train_loss,
                 val["t2i_R@1"], val["i2t_R@1"], cfg.monitor, val[cfg.monitor], " *" if improved else "")
    else:  # val is trained on: its figures say how well it is learned, not how well it generalises
        log.info("epoch %d loss %.4f (val trained on: t2i R@1 %.2f i2t R@1 %.2f)", pos.epoch, train_loss,
                 val["t2i_R@1"], val["i2t_R@1"])
    stop = cfg.early_stopping and pos.bad_epochs >= cfg.patience
    if stop:
        log.info("early stop: %s did not improve for %d epochs", cfg.monitor, pos.bad_epochs)
    return stop


def _fit(engine: Engine, logger: RunLogger, gen_state: torch.Tensor | None) -> None:
    cfg = engine.cfg.train
    if cfg.epochs == 0 and not logger.epochs:  # the weights as loaded, measured: a zero-shot run
        engine.pos.epoch = 0
        _finish_epoch(engine, logger, float("nan"), time.perf_counter())
        engine.pos.epoch = 1
        return
    stopped = engine.pos.bad_epochs >= cfg.patience and cfg.early_stopping
    while engine.pos.epoch <= cfg.epochs and not stopped:
        t_epoch = time.perf_counter()
        if gen_state is None:  # a new epoch: remember the order generator's state for resume
            gen_state = engine.gen.get_state()
        train_loss = engine.train_epoch(logger, gen_state)
        stopped = _finish_epoch(engine, logger, train_loss, t_epoch)
        engine.pos.epoch += 1
        engine.pos.step = 0
        gen_state = None
        engine.save_resume(logger, engine.gen.get_state())


def _apply_wise(run: Path, alpha: float) -> None:
    """``train.wise_alpha``: ``model_best`` becomes the WiSE-FT ensemble of the checkpoint's
    zero-shot weights and the best fine-tuned ones; those stay as ``model_finetuned``."""
    from crossalign.models.wise import apply_wise
    from crossalign.runs import load_model

    model, _ = load_model(run, "best")
    meta = json.loads((run / "model_best.json").read_text())
    if "wise_alpha" in meta:  # a finished run resumed: model_best is the ensemble already
        return
    save_model(model, run / "model_finetuned.safetensors", meta)
    apply_wise(model, alpha)
    save_model(model, run / "model_best.safetensors", {**meta, "wise_alpha": float(alpha)})
    log.info("model_best: WiSE-FT ensemble, alpha %g (the fine-tuned weights are model_finetuned)", alpha)


def _run(data: str | Path, run: Path, cfg: RunConfig, dist: DistInfo, progress: bool, fresh: bool) -> TrainResult:
    t_start = time.perf_counter()
    cfg.validate()  # a config built in code is checked as one read from a file
    seed_everything(cfg.train.seed + dist.rank)
    table, problems = _prepare(data, run, cfg, dist, fresh)
    engine = run_engine(run, cfg, table, problems, dist, progress)
    gen_state = None
    if fresh:
        logger = RunLogger(run, dist.is_main, cfg.train.tensorboard)
    else:
        logger = engine.restore()
        gen_state = engine.resume_gen_state if engine.pos.step > 0 else None
        if gen_state is None:
            engine.gen.set_state(engine.resume_gen_state)
    if dist.is_main:  # every skipped row, unreadable images included, said once
        report_problems(engine.problems)
        atomic_write_json(run / "problems.json", [p.to_dict() for p in engine.problems])
    _fit(engine, logger, gen_state)
    if cfg.train.wise_alpha != 1.0 and dist.is_main:
        _apply_wise(run, cfg.train.wise_alpha)
    logger.close()
    elapsed = time.perf_counter() - t_start
    best_val = next((r for r in logger.epochs if r["epoch"] == engine.pos.best_epoch), {})
    summary = {"best_epoch": engine.pos.best_epoch, "monitor": cfg.train.monitor, "best_val": best_val,
               "epochs_run": len(logger.epochs), "train_seconds": elapsed, "resumed": not fresh,
               "skipped_rows": len(engine.problems), "splits": table.split_counts(),
               "world_size": dist.world_size, "device": engine.device, "config": to_dict(cfg)}
    if dist.is_main:
        atomic_write_json(run / "summary.json", summary)
    return TrainResult(run, engine.pos.best_epoch, best_val, logger.epochs, elapsed, cfg.train.fit_on)


# a staged run: its recipe as given (with ``then``), and the folders of the stages before the last
RECIPE = "recipe.yaml"
STAGES = "stages"


def _stages(data: str | Path, run: Path, cfg: RunConfig, dist: DistInfo, progress: bool,
            resuming: bool) -> TrainResult:
    """Train the stages of ``cfg.then`` in turn: stage k < last into ``run/stages/k``, the last into
    ``run`` itself, each from the model_best of the stage before. ``resuming``: a stage that
    finished (``summary.json``) is skipped and one that stopped is resumed, so a staged run resumes
    as a whole; otherwise every stage trains afresh."""
    configs = stage_configs(cfg)
    if dist.is_main and not resuming:
        save_config(cfg, run / RECIPE)
    done: list[dict] = []
    before: Path | None = None
    seconds = 0.0
    result = None
    for k, stage in enumerate(configs, start=1):
        folder = run if k == len(configs) else run / STAGES / str(k)
        if before is not None:
            stage.train.init_from = str(before.resolve())
        if resuming and k < len(configs) and (folder / "summary.json").is_file():
            log.info("stage %d of %d: finished before (%s)", k, len(configs), folder)
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        else:
            fresh = not (resuming and has_resume_point(folder))
            if not fresh:
                load_resume_point(folder)
            log.info("stage %d of %d: %s into %s", k, len(configs), "training" if fresh else "resuming", folder)
            result = _run(data, folder, stage, dist, progress, fresh=fresh)
            seconds += result.train_seconds
            _barrier(dist)  # the next stage starts from this one's model_best, which rank 0 wrote
            summary = {"best_epoch": result.best_epoch, "best_val": result.best_metrics,
                       "train_seconds": result.train_seconds}
        done.append({"stage": k, "run": str(folder.relative_to(run)) if folder != run else ".",
                     "best_epoch": summary["best_epoch"], "best_val": summary["best_val"],
                     "train_seconds": summary["train_seconds"]})
        before = folder
    if dist.is_main:  # the last stage's summary names every stage
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        atomic_write_json(run / "summary.json", {**summary, "stages": done})
    assert result is not None  # the last stage always runs (or resumes)
    result.train_seconds = seconds
    return result


def train(data: str | Path, out: str | Path, cfg: RunConfig, progress: bool = True,
          dist: DistInfo | None = None) -> TrainResult:
    """Train a dual encoder on ``data`` and write the run folder ``out``.

    Writes ``config.yaml``, ``run.json``, ``splits/``, ``metrics.csv``, ``steps.csv``,
    ``tensorboard/``, ``model_best.safetensors``, ``model_last.safetensors``, ``resume/``
    and ``summary.json``. A staged recipe (``cfg.then``) also writes ``recipe.yaml`` (the recipe
    as given, which ``--config`` repeats) and the earlier stages' run folders under ``stages/``.
    """
    if cfg.then:
        return _stages(data, Path(out), cfg, dist or DistInfo(), progress, resuming=False)
    return _run(data, Path(out), cfg, dist or DistInfo(), progress, fresh=True)


def resume(run: str | Path, progress: bool = True, dist: DistInfo | None = None) -> TrainResult:
    """Continue a stopped run from its latest resume point, with its own config and data.

    A run stopped before its first resume point (while extracting features, say) starts
    again from the beginning with its own config and data; features already cached are
    reused.
    """
    run = Path(run)
    if (run / RECIPE).is_file():  # a staged run: each stage finished, resumed or started in turn
        cfg = load_config(run / RECIPE)
        first = run / STAGES / "1"
        return _stages(recorded_data(first if (first / "run.json").is_file() else run), run, cfg,
                       dist or DistInfo(), progress, resuming=True)
    if not is_run_folder(run) or not (run / "run.json").is_file():
        raise RunError(f"{run}: not a run folder (config.yaml or run.json missing) - nothing to continue")
    cfg = load_config(run / "config.yaml")
    data = recorded_data(run)
    fresh = not has_resume_point(run)
    if fresh:
        log.warning("%s: stopped before its first resume point; starting it again from the beginning", run)
    else:
        load_resume_point(run)  # a damaged resume point is refused before any work is done
    return _run(data, run, cfg, dist or DistInfo(), progress, fresh=fresh)
