"""``crossalign.train`` and ``crossalign.tune``: the decisions of ``crossalign train`` and
``crossalign tune``, made here so that Python and the terminal train alike."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from crossalign.api._settings import as_overrides
from crossalign.config import RunConfig
from crossalign.errors import ConfigError

__all__ = ["train", "tune", "tune_config", "recipe_config"]

log = logging.getLogger("crossalign.train")


def recipe_config(config: str | Path | RunConfig | None, overrides: Sequence[str] = ()) -> RunConfig:
    """The run config: a YAML path or a :class:`RunConfig` (defaults otherwise), then ``overrides``."""
    from crossalign.config import apply_overrides, load_config

    if isinstance(config, RunConfig):
        return apply_overrides(config, list(overrides))
    return load_config(config, list(overrides))


def tune_config(trials: int | None = None, budget: str | float | None = None, towers: Sequence[str] = (),
                folds: int = 5, min_val_images: int = 1000, objective: str = "rsum", max_epochs: int = 40,
                search_seed: int = 0, prune: bool = True, fix: Sequence[str] = (), refit: bool = True,
                count_extraction: bool = True):
    """The :class:`~crossalign.train.tune.TuneConfig` the recipe-tuning parameters describe."""
    from crossalign.train.tune import TuneConfig, parse_budget

    return TuneConfig(trials=trials or 0, budget=parse_budget(budget) if budget else 0.0,
                      towers=tuple(_names(towers)), seed=search_seed, folds=folds,
                      min_val_images=min_val_images, objective=objective, max_epochs=max_epochs,
                      prune=prune, count_extraction=count_extraction, refit=refit,
                      fix=tuple(_names(fix)))


def _names(value: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s and s.strip()]


def _quiet_optuna() -> None:
    """Optuna logs every trial at INFO; crossalign writes its own line per trial."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)


def _default_tunes(data, config, overrides: Sequence[str], progress: bool) -> bool:
    """Whether ``train`` given no recipe tunes one (see ``default_tune_reason``)."""
    from crossalign.data.prepare import prepare_table
    from crossalign.train.tune import DEFAULT_BUDGET, default_tune_reason

    cfg = recipe_config(config, overrides)
    table, _ = prepare_table(data, cfg.data, quiet=True)
    named = config if not isinstance(config, RunConfig) else "the RunConfig given"
    reason = default_tune_reason(cfg, named, overrides, len(table.select(["train", "val"]).caption))
    if reason is not None:
        log.info("training %s, no recipe search", reason)
        return False
    if progress:
        print(f"no recipe given: searching one on your training data for {DEFAULT_BUDGET / 60:g} minutes once "
              f"the features are cached, then training it (`fixed` trains the fixed defaults; `budget` sets "
              f"the time, extraction included)")
    return True


def _tunes(data, resume, config, overrides, nproc: int, auto: bool, fixed: bool, asked: bool,
           progress: bool) -> bool:
    """Whether this call searches the recipe: ``auto`` or a tuning parameter, else the default
    (a search when no recipe is named and the towers are frozen)."""
    if asked and fixed:
        raise ConfigError("`fixed` trains the recipe as given; it does not combine with `auto` or the "
                          "tuning parameters (`trials`, `budget`, `towers`)")
    if resume and not fixed and (Path(resume) / "search.json").is_file():
        return True  # a run that searched (by default or auto) continues its search, then its fit
    if auto or asked or fixed or resume or nproc > 1 or "WORLD_SIZE" in os.environ:
        return auto or asked
    return _default_tunes(data, config, overrides, progress)


def _torchrun(command: str, argv: list[str], nproc: int) -> None:
    """Run ``crossalign COMMAND ARGV`` under torchrun with ``nproc`` processes on this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "crossalign", command, *argv]
    code = subprocess.call(cmd)
    if code:
        raise ConfigError(f"the {nproc} processes of `{command}` stopped with exit status {code} (see above)")


def _train_argv(data, out, resume, config, overrides: Sequence[str]) -> list[str]:
    if isinstance(config, RunConfig):
        raise ConfigError("`nproc` starts new processes: give `config` as a YAML file, not a RunConfig")
    argv = ["--resume", str(resume)] if resume else ["--data", str(data), "--out", str(out)]
    argv += ["--config", str(config)] if config else []
    for o in overrides:
        argv += ["--set", o]
    return argv


def _finished(run: Path):
    """The TrainResult of a run another process trained (its summary.json)."""
    from crossalign.runs import read_json
    from crossalign.train.loop import TrainResult

    s = read_json(run / "summary.json")
    return TrainResult(run, s["best_epoch"], s["best_val"], [], s["train_seconds"],
                       s["config"]["train"]["fit_on"])


def train(data: str | Path | None = None, out: str | Path | None = None, *, resume: str | Path | None = None,
          config: str | Path | RunConfig | None = None, overrides: Sequence[str] = (), nproc: int = 0,
          auto: bool = False, fixed: bool = False, trials: int | None = None, budget: str | float | None = None,
          towers: str | Sequence[str] = (), folds: int = 5, min_val_images: int = 1000, objective: str = "rsum",
          max_epochs: int = 40, search_seed: int = 0, prune: bool = True, fix: str | Sequence[str] = (),
          refit: bool = True, progress: bool = True, dist=None, **settings):
    """Train an aligner on ``data`` into the run folder ``out`` (``crossalign train``).

    Given no recipe (no ``config``, no searched setting among ``overrides`` or ``settings``) and
    frozen towers, it first searches one on held-out training data for 5 minutes once the
    features are cached, as :func:`tune` does, then trains the chosen recipe; ``fixed=True``
    trains the fixed defaults instead, and ``auto=True`` or any tuning parameter searches anyway.

    Args:
        data: a data folder (any layout the readers know).
        out: the run folder to write.
        resume: continue this stopped run instead (its search first, if it searched).
        config: a YAML file or a :class:`~crossalign.config.RunConfig`.
        overrides: ``"key=value"`` strings, as ``--set`` takes them.
        nproc: start this many processes on this machine through torchrun (DDP).
        auto: search the recipe first, even when one is given (it is then the search's base).
        fixed: train the recipe as given, never search.
        trials: see :func:`tune`, as for every parameter below that sets how the search runs.
        budget: the search's time.
        towers: frozen image towers to choose among.
        folds: K of the cross-validation.
        min_val_images: below this many val images, score by K-fold.
        objective: ``rsum`` or ``r1``.
        max_epochs: the most epochs a trial may train.
        search_seed: seed of the sampler and the folds.
        prune: stop trials that fall behind early.
        fix: searched settings held at the given recipe's value.
        refit: the chosen recipe learns from train + val.
        progress: progress bars and per-epoch lines.
        dist: the process group (``crossalign.distributed.init_distributed()``) under torchrun.
        **settings: settings by keyword, e.g. ``epochs=10, image_tower="lite2"``
            (``crossalign.api.keywords()`` lists them).

    Returns:
        A :class:`~crossalign.train.loop.TrainResult`.
    """
    from crossalign.distributed import dist_info_from_env

    if not resume and not (data and out):
        raise ConfigError("give `data` and `out` (or `resume`)")
    overrides = list(overrides) + as_overrides(settings)
    asked = trials is not None or budget is not None or bool(_names(towers))
    tunes = _tunes(data, resume, config, overrides, nproc, auto, fixed, asked, progress)
    default = tunes and not (auto or asked or resume)
    if tunes and (nproc > 1 or (dist or dist_info_from_env()).world_size > 1):
        raise ConfigError("the recipe search runs in one process; leave out `nproc` (or torchrun)")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _torchrun("train", _train_argv(data, out, resume, config, overrides), nproc)
        return _finished(Path(resume or out))
    if tunes:
        from crossalign.train.tune import DEFAULT_BUDGET, auto_train

        _quiet_optuna()
        how = tune_config(trials, f"{DEFAULT_BUDGET:g}s" if default else budget, towers, folds, min_val_images,
                          objective, max_epochs, search_seed, prune, fix, refit, count_extraction=not default)
        base = None if resume else recipe_config(config, overrides)
        found, result = auto_train(data, resume or out, base, how, progress, resume=bool(resume))
        result.tuned = found
        return result
    return _train_plain(data, out, resume, config, overrides, progress, dist)


def _train_plain(data, out, resume, config, overrides, progress: bool, dist):
    from crossalign.distributed import cleanup_distributed, init_distributed
    from crossalign.train import loop

    own = dist is None
    dist = init_distributed() if own else dist
    try:
        if resume:
            return loop.resume(resume, progress=progress, dist=dist)
        return loop.train(data, out, recipe_config(config, overrides), progress=progress, dist=dist)
    finally:
        if own:
            cleanup_distributed()


def tune(data: str | Path | None = None, out: str | Path | None = None, *, resume: str | Path | None = None,
         config: str | Path | RunConfig | None = None, overrides: Sequence[str] = (),
         trials: int | None = None, budget: str | float | None = None, towers: str | Sequence[str] = (),
         folds: int = 5, min_val_images: int = 1000, objective: str = "rsum", max_epochs: int = 40,
         search_seed: int = 0, prune: bool = True, fix: str | Sequence[str] = (), refit: bool = True,
         progress: bool = True, **settings):
    """Search the recipe for ``data`` into ``out`` without the final fit (``crossalign tune``).

    Frozen towers' features are extracted once; each trial trains only the heads. Trials are
    scored on the val split, or by K-fold cross-validation over train + val when the val split
    is small; never on test. The folder holds ``study.journal``, ``trials.csv``,
    ``search.json`` and the chosen ``config.yaml``.

    Args:
        data: a data folder.
        out: the folder of the search.
        resume: continue the search stored in this folder (``trials`` and ``budget`` may be new).
        config: the base recipe, a YAML file or a :class:`~crossalign.config.RunConfig`.
        overrides: ``"key=value"`` strings for the base recipe.
        trials: trials in the study in all, resumes included (30 without a budget).
        budget: time for the whole search, feature extraction included: ``"90s"``, ``"10m"``, ``1.5h``.
        towers: frozen image towers to choose among, each extracted once: ``"lite0,lite0+lite2"``.
        folds: K of the cross-validation.
        min_val_images: below this many val images, score by K-fold over train + val.
        objective: ``rsum`` (validation R-sum) or ``r1`` (mean R@1 of both directions).
        max_epochs: the most epochs a trial may train.
        search_seed: seed of the sampler and the folds.
        prune: stop trials that fall behind early.
        fix: searched settings to hold at the base recipe's value, e.g. ``"ranking,loss"``.
        refit: the chosen recipe learns from train + val at the chosen epoch count (else train alone).
        progress: progress bars and a line per trial.
        **settings: settings of the base recipe by keyword, as :func:`train` takes them.

    Returns:
        A :class:`~crossalign.train.tune.TuneResult`.
    """
    from crossalign.train import tune as _tune

    if not resume and not (data and out):
        raise ConfigError("give `data` and `out` (or `resume`)")
    _quiet_optuna()
    if resume:
        return _tune.resume_tune(resume, trials, _tune.parse_budget(budget) if budget else None, progress)
    how = tune_config(trials, budget, towers, folds, min_val_images, objective, max_epochs, search_seed,
                      prune, fix, refit)
    base = recipe_config(config, list(overrides) + as_overrides(settings))
    return _tune.tune(data, out, base, how, progress)
