"""Recipe search: the user's own data chooses the recipe (``crossalign tune``, and ``crossalign train`` given no recipe).

With frozen towers the heads train in seconds from cached features, so many recipes can be
tried on the data at hand: :mod:`crossalign.train.space` says which settings, and
:mod:`crossalign.train.trial` scores one of them. Optuna drives the search: a seeded TPE sampler
proposes recipes, a median pruner stops those whose mean validation score after an epoch falls
below the median of earlier trials at that epoch, and the study lives in the run folder, so
``resume`` continues it (trial numbers go on; a trial cut off by a kill is marked failed and
tried again). The first trial is the base config itself, the next ones the anchors of
:mod:`crossalign.train.space` (the fixed recipes that won on some measured data set), so the
recipe chosen scores on the held-out data at least as well as each of them. A recipe with no
schedule is scored at its best epoch, which becomes its epoch count (see
:func:`~crossalign.train.trial.score_recipe`).

Trials are scored on held-out parts of the user's training data only, never the test split
(:mod:`crossalign.train.folds`: the val split when it has at least ``min_val_images`` images,
else K-fold cross-validation over train + val). The objective is validation R-sum (R@1 + R@5 +
R@10 both ways) or, with ``objective="r1"``, the mean R@1 of the two directions, ranked the way
the recipe ranks (plain cosine or qbnorm), after the recipe's last epoch.

The run folder gains:

- ``study.journal``: optuna's journal storage, every trial of the study;
- ``trials.csv``: one row per trial: number, state, score, each fold's score, epochs run, the
  epoch the score is from, seconds, and every parameter;
- ``search.json``: the data, the base config, the search settings, how trials were scored
  (holdout or K-fold, in words too), the chosen trial and its score, the time spent;
- ``config.yaml``: the chosen recipe, so ``crossalign train --config RUN/config.yaml`` repeats
  it without a search.

The final fit (``auto_train``) then learns from train + val (``train.fit_on``; ``refit=False``
keeps it on train): once the recipe and its epoch count are chosen, the held-out images have
done their job, and on small data they are a large share of what there is to learn from.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from crossalign._io import atomic_path, atomic_write_json
from crossalign.config import RunConfig, from_dict, load_config, save_config, to_dict
from crossalign.data.prepare import prepare_table
from crossalign.errors import ConfigError, DataError, RunError
from crossalign.runs import read_json
from crossalign.train.folds import plan_folds
from crossalign.train.space import PARAMS, anchor_params, base_params, params_named, recipe, suggest
from crossalign.train.trial import OBJECTIVES, FeatureSet, RecipeScore, score_recipe

__all__ = ["TuneConfig", "TuneResult", "tune", "resume_tune", "auto_train", "rescore",
           "parse_budget", "expand_tower", "default_tune_reason", "DEFAULT_TRIALS", "DEFAULT_BUDGET",
           "DEFAULT_SEARCH_MAX_CAPTIONS"]

log = logging.getLogger("crossalign.train")

DEFAULT_TRIALS = 30  # when neither a trial count nor a time budget is given
STUDY, TRIALS, SEARCH = "study.journal", "trials.csv", "search.json"


@dataclass
class TuneConfig:
    """How a recipe search runs; none of it is part of the recipe it chooses."""

    trials: int = 0  # trials in the study in all (resumes included); 0 = DEFAULT_TRIALS without a budget
    budget: float = 0.0  # seconds for the whole search, extraction and resumes included; 0 = none
    towers: tuple[str, ...] = ()  # frozen image towers to choose among; empty = the config's
    seed: int = 0  # seed of the sampler and of the folds
    folds: int = 5  # K of the cross-validation
    min_val_images: int = 1000  # a smaller val split is not trusted alone: K-fold over train + val
    objective: str = "rsum"  # rsum | r1 (mean R@1 of both directions)
    min_epochs: int = 2
    max_epochs: int = 40
    prune: bool = True
    fix: tuple[str, ...] = ()  # parameters of the space not searched: held at the base recipe's value
    count_extraction: bool = True  # False: the budget starts once the first tower's features are cached
    # the chosen recipe learns from train + val (train.fit_on): every held-out image the search
    # scored on joins the final fit, at the epoch count the search chose
    refit: bool = True


@dataclass
class TuneResult:
    """What a search chose and how it scored."""

    run_dir: Path
    config: RunConfig  # the chosen recipe (RUN/config.yaml)
    best_trial: int
    best_score: float
    validation: dict  # how trials were scored (FoldPlan.to_dict())
    trials: list[dict] = field(default_factory=list)  # the rows of trials.csv
    seconds: float = 0.0  # spent searching, resumes included


# ``crossalign train`` given no recipe searches one: this long once the features are cached, on data
# up to this many train + val captions (a trial's cost grows with them; above it, the fixed
# defaults, which the searches on Flickr8k-sized data came close to: bench/RESULTS.md)
DEFAULT_BUDGET = 300.0
DEFAULT_SEARCH_MAX_CAPTIONS = 100_000


def default_tune_reason(cfg: RunConfig, config_file: str | Path | None, overrides: Sequence[str],
                          pool_captions: int) -> str | None:
    """Why ``crossalign train`` trains the recipe as given rather than searching one; None: search.

    The command searches by default when the user named no recipe: no config file and no
    ``--set`` of a searched setting (``data.*``, ``cache.*``, ``runtime.device`` and the like do not
    count), both towers frozen and the data no larger than DEFAULT_SEARCH_MAX_CAPTIONS.
    """
    from crossalign.models.registry import resolve_freeze

    if config_file:
        return f"the recipe of {config_file}"
    if cfg.train.init_from:
        return f"a run started from {cfg.train.init_from} (train.init_from)"
    named = params_named(overrides)
    if named:
        return f"the recipe as set ({', '.join(named)} given)"
    for side in ("image", "text"):
        t = getattr(cfg.model, side)
        if resolve_freeze(t.tower, t.freeze) != "frozen":
            return f"the {side} tower trains (model.{side}.freeze), so trials would not be cheap"
    if pool_captions > DEFAULT_SEARCH_MAX_CAPTIONS:
        return (f"{pool_captions} train + val captions, more than the {DEFAULT_SEARCH_MAX_CAPTIONS} a "
                f"default search covers (`auto` searches anyway)")
    return None


def parse_budget(text: str | float | int) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``1.5h``."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(text).lower())
        if not m:
            raise ConfigError(f"`budget` expects a time such as 90s, 10m or 1.5h, got {text!r}")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds < 0:
        raise ConfigError(f"`budget` must not be negative, got {text!r}")
    return seconds


def expand_tower(name: str) -> str:
    """A registered image tower name; ``lite0`` is short for ``efficientnet_lite0`` (also in ``a+b``)."""
    from crossalign.models.registry import list_models, model_info

    known = set(list_models("image"))
    parts = [p.strip() for p in name.split("+")]
    full = "+".join(p if p in known or ":" in p or f"efficientnet_{p}" not in known
                    else f"efficientnet_{p}" for p in parts)
    if model_info(full).modality != "image":
        raise ConfigError(f"`towers` lists image towers; {name!r} is a {model_info(full).modality} tower")
    return full


def _check(search: TuneConfig) -> TuneConfig:
    if search.objective not in OBJECTIVES:
        raise ConfigError(f"search objective must be one of {', '.join(OBJECTIVES)}, got {search.objective!r}")
    if search.trials < 0 or search.budget < 0:
        raise ConfigError("`trials` and `budget` must not be negative")
    if search.folds < 2:
        raise ConfigError(f"`folds` must be at least 2, got {search.folds}")
    if not 1 <= search.min_epochs <= search.max_epochs:
        raise ConfigError(f"search epochs: need 1 <= min_epochs <= max_epochs, got "
                          f"{search.min_epochs} and {search.max_epochs}")
    unknown = sorted(set(search.fix) - set(PARAMS[1:]))
    if unknown:
        raise ConfigError(f"`fix`: unknown parameter(s) {unknown}; the space has {', '.join(PARAMS[1:])}")
    return dataclasses.replace(search, towers=tuple(expand_tower(t) for t in search.towers),
                               fix=tuple(search.fix))


class _Search:
    """The data, the fold plan and the feature sets of one search (each tower extracted once)."""

    def __init__(self, data: str | Path, base: RunConfig, search: TuneConfig, progress: bool) -> None:
        self.base, self.search, self.progress = base, search, progress
        self.towers = list(search.towers) or [base.model.image.tower]
        table, self.problems = prepare_table(data, base.data, quiet=True)
        pool = table.select(["train", "val"])  # the test split never enters the search
        for split in ("train", "val"):
            if not pool.select(split).caption:
                raise DataError(f"{data}: the {split} split is empty; the search holds out part of "
                                f"train + val and never looks at test")
        self.features: dict[str, FeatureSet] = {}
        first = self.feature_set(self.towers[0], pool)
        self.pool = first.pool  # rows whose image every tower read so far
        self.plan = plan_folds(self.pool, search.folds, search.min_val_images, search.seed,
                               base.data.group_column)

    def feature_set(self, tower: str, pool=None) -> FeatureSet:
        if tower not in self.features:
            cfg = copy.deepcopy(self.base)
            cfg.model.image.tower = tower
            self.features[tower] = FeatureSet(cfg, self.pool if pool is None else pool, self.progress)
        return self.features[tower]

    def objective(self, trial) -> float:
        import optuna

        t0 = time.perf_counter()
        s = self.search
        cfg = recipe(self.base, suggest(trial, self.base, self.towers, s.min_epochs, s.max_epochs, s.fix))
        fs = self.feature_set(cfg.model.image.tower)

        def on_epoch(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return s.prune and trial.should_prune()

        res = score_recipe(cfg, fs, self.plan, s.objective, on_epoch)
        trial.set_user_attr("fold_scores", res.fold_scores)
        trial.set_user_attr("epochs_run", res.epochs_run)
        trial.set_user_attr("score_epoch", res.epochs)
        trial.set_user_attr("curve", res.curve)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        if res.stopped:
            raise optuna.TrialPruned(f"pruned after epoch {res.epochs_run}")
        return res.score


def _open_study(run: Path, search: TuneConfig):
    """The study in ``run`` (created if new), its sampler seeded by the trials it already holds."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(run / STUDY)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2) if search.prune \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name="crossalign", storage=storage, direction="maximize",
                                pruner=pruner, load_if_exists=True)
    # a resumed search is as repeatable as a fresh one: its seed follows from the history
    study.sampler = optuna.samplers.TPESampler(seed=search.seed + len(study.trials), n_startup_trials=8)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # cut off by a kill
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params)
        log.warning("trial %d was cut off; marked failed, and its recipe is tried again", t.number)
    return study


def chosen_params(trial) -> dict:
    """A finished trial's point with the epoch count its score belongs to (the best epoch of an
    unscheduled recipe; else the epochs it was given)."""
    params = dict(trial.params)
    if trial.user_attrs.get("score_epoch"):
        params["epochs"] = int(trial.user_attrs["score_epoch"])
    return params


def _rows(study, folds: int, tower: str) -> list[dict]:
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.state.name in ("WAITING", "RUNNING"):
            continue
        a = t.user_attrs
        row = {"trial": t.number, "state": t.state.name.lower(), "score": t.value if t.value is not None else ""}
        scores = a.get("fold_scores", [])
        row.update({f"fold_{k + 1}": scores[k] if k < len(scores) else "" for k in range(folds)})
        row.update({"epochs_run": a.get("epochs_run", ""), "score_epoch": a.get("score_epoch", ""),
                    "seconds": a.get("seconds", "")})
        row.update({p: t.params.get(p, tower if p == "tower" else "") for p in PARAMS})
        rows.append(row)
    return rows


def _write_trials(path: Path, rows: list[dict], folds: int) -> None:
    names = ["trial", "state", "score", *[f"fold_{k + 1}" for k in range(folds)], "epochs_run", "score_epoch",
             "seconds",
             *PARAMS]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)


def _settings(search: TuneConfig) -> dict:
    return {**dataclasses.asdict(search), "towers": list(search.towers), "fix": list(search.fix)}


def _finished(study) -> int:
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)


def _log_trial(study, trial) -> None:
    a = trial.user_attrs
    folds = " ".join(f"{s:.1f}" for s in a.get("fold_scores", []))
    value = f"{trial.value:.2f}" if trial.value is not None else "-"
    best = study.best_trial.number if any(t.state.name == "COMPLETE" for t in study.trials) else None
    ran, at = a.get("epochs_run", "?"), a.get("score_epoch")
    epochs = f"{ran} epochs" + (f" (scored at epoch {at})" if at and at != ran else "")
    log.info("trial %d %s: %s (folds %s), %s, %.1f s%s", trial.number, trial.state.name.lower(), value,
             folds, epochs, a.get("seconds", 0.0), " *" if best == trial.number else "")


def _search(run: Path, data: str, base: RunConfig, search: TuneConfig, progress: bool,
            prior_seconds: float) -> TuneResult:
    """Extract, then run trials until the study holds ``search.trials`` or the budget is spent."""
    t_start = time.perf_counter()
    info = {"data": data, "objective": search.objective, "search": _settings(search), "base": to_dict(base)}
    s = _Search(data, base, search, progress)
    t_trials = time.perf_counter()
    info["extraction_seconds"] = round(t_trials - t_start, 1)
    info["validation"] = s.plan.to_dict()
    log.info("search: scoring trials by %s", s.plan.describe())
    study = _open_study(run, search)
    if not study.trials:  # the base recipe first, then the anchors, then the sampler's own
        for point in [base_params(base, s.towers, search.min_epochs, search.max_epochs, search.fix),
                      *anchor_params(base, s.towers, search.min_epochs, search.max_epochs, search.fix)]:
            study.enqueue_trial(point, skip_if_exists=True)
    start = t_start if search.count_extraction else t_trials
    spent = lambda: prior_seconds + time.perf_counter() - start  # noqa: E731

    def after_trial(study, trial) -> None:
        _log_trial(study, trial)
        _write_trials(run / TRIALS, _rows(study, len(s.plan.folds), s.towers[0]), len(s.plan.folds))
        atomic_write_json(run / SEARCH, {**info, "seconds": spent()})

    target = search.trials or (0 if search.budget else DEFAULT_TRIALS)
    n_trials = max(0, target - _finished(study)) if target else None
    timeout = None
    if search.budget:
        none_yet = not any(t.state.name == "COMPLETE" for t in study.trials)
        timeout = max(search.budget - spent(), 1.0 if none_yet else 0.0)  # at least one trial ends
    if n_trials != 0 and (timeout is None or timeout > 0):
        study.optimize(s.objective, n_trials=n_trials, timeout=timeout, callbacks=[after_trial])
    return _conclude(run, study, s, info, spent())


def _conclude(run: Path, study, s: _Search, info: dict, seconds: float) -> TuneResult:
    """Write the chosen recipe, trials.csv and search.json."""
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise DataError(f"{run}: the search finished no trial (every trial was pruned or cut off); "
                        f"give more `trials` or `budget`")
    best = study.best_trial
    chosen = recipe(s.base, chosen_params(best))
    if s.search.refit:
        chosen.train.fit_on = "train+val"
    save_config(chosen, run / "config.yaml")
    rows = _rows(study, len(s.plan.folds), s.towers[0])
    _write_trials(run / TRIALS, rows, len(s.plan.folds))
    info = {**info, "seconds": seconds, "trials_finished": _finished(study),
            "best": {"trial": best.number, "score": best.value, "fold_scores": best.user_attrs.get("fold_scores"),
                     "params": best.params, "epochs": chosen.train.epochs}}
    atomic_write_json(run / SEARCH, info)
    log.info("search: chose trial %d, %s %.2f by %s", best.number, s.search.objective, best.value,
             s.plan.describe())
    return TuneResult(run, chosen, best.number, float(best.value), info["validation"], rows, seconds)


def tune(data: str | Path, out: str | Path, base: RunConfig, search: TuneConfig | None = None,
         progress: bool = True) -> TuneResult:
    """Search recipes for ``data`` into the folder ``out`` (no final fit); see the module docstring."""
    run = Path(out)
    search = _check(search or TuneConfig())
    if base.then:
        raise ConfigError("a staged recipe (then) is not searched: search its first stage (crossalign tune, "
                          "without then), then train the stages from the chosen config.yaml with then added")
    if (run / STUDY).exists():
        raise RunError(f"{run}: already holds a search ({STUDY}); continue it with `resume`, or give "
                       f"another `out`")
    data = str(Path(data).resolve())
    if len(search.towers) == 1:  # one tower listed: no choice, but that tower
        base = copy.deepcopy(base)
        base.model.image.tower = search.towers[0]
    atomic_write_json(run / SEARCH, {"data": data, "search": _settings(search), "base": to_dict(base)})
    return _search(run, data, base, search, progress, 0.0)


def _stored(run: Path) -> tuple[str, RunConfig, TuneConfig, float]:
    path = run / SEARCH
    if not path.is_file():
        raise RunError(f"{run}: not a search folder ({SEARCH} missing) - nothing to continue")
    info = read_json(path)
    settings = dict(info["search"])
    settings["towers"] = tuple(settings.get("towers", ()))
    settings["fix"] = tuple(settings.get("fix", ()))
    return info["data"], from_dict(RunConfig, info["base"]), TuneConfig(**settings), float(info.get("seconds", 0))


def resume_tune(run: str | Path, trials: int | None = None, budget: float | None = None,
                  progress: bool = True) -> TuneResult:
    """Continue the search in ``run`` (the same study), optionally to a new trial count or budget."""
    run = Path(run)
    data, base, search, seconds = _stored(run)
    given = {k: v for k, v in {"trials": trials, "budget": budget}.items() if v is not None}
    search = _check(dataclasses.replace(search, **given))
    return _search(run, data, base, search, progress, seconds)


def auto_train(data: str | Path | None, out: str | Path, base: RunConfig | None,
               search: TuneConfig | None = None, progress: bool = True, resume: bool = False):
    """Search, then train the chosen recipe into the same folder; returns (TuneResult, TrainResult).

    With ``resume`` the search in ``out`` continues first (``search.trials`` and ``search.budget``,
    when set, replace the stored ones); then a fit that had begun is resumed, else started.
    """
    from crossalign.train import loop
    from crossalign.train.state import has_resume_point

    run = Path(out)
    if resume:
        s = search or TuneConfig()
        found = resume_tune(run, s.trials or None, s.budget or None, progress)
        if has_resume_point(run):
            return found, loop.resume(run, progress=progress)
        data = _stored(run)[0]
    else:
        found = tune(data, run, base or RunConfig(), search, progress)
    return found, loop.train(data, run, found.config, progress=progress)


def rescore(run: str | Path, config: RunConfig | None = None, progress: bool = False) -> RecipeScore:
    """Score ``config`` (default: the run's chosen ``config.yaml``) again on the search's own folds."""
    run = Path(run)
    data, base, search, _ = _stored(run)
    cfg = config if config is not None else load_config(run / "config.yaml")
    s = _Search(data, base, _check(search), progress)
    return score_recipe(cfg, s.feature_set(cfg.model.image.tower), s.plan, search.objective)
