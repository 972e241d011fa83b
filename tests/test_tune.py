"""Recipe search (``crossalign tune``, ``train --auto``): folds, test split untouched, resume, repeats."""

import csv
import json
import shutil

import numpy as np
import pytest

from crossalign.config import DataConfig, load_config
from crossalign.data.prepare import prepare_table
from crossalign.data.table import PairTable
from crossalign.train import tune as tune_mod
from crossalign.train.folds import fold_of_images, kfold, plan_folds
from crossalign.train.tune import TuneConfig, expand_tower, parse_budget, rescore, resume_tune, tune
from crossalign.train.space import ANCHORS, anchor_params, base_params
from crossalign.train.trial import FeatureSet, score_recipe
from tests._ties import assert_recalls_within, assert_same_retrieval, recall_slack, recorded_validation

FAST = ["train.batch_size=32", "train.tensorboard=false", "train.checkpoint_every=0"]
TOL = 1e-5  # two computations of the same heads agree to float rounding


def _search(**kw) -> TuneConfig:
    return TuneConfig(**{"trials": 3, "max_epochs": 3, **kw})


def _rows(run):
    with open(run / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _table(images: int, groups: dict[int, str] | None = None) -> PairTable:
    t = PairTable()
    for i in range(images):
        for c in range(3):
            t.append(f"img{i}", f"/x/img{i}.png", f"caption {c} of {i}", "train" if i % 5 else "val",
                     f"captions.txt:{3 * i + c}", album=(groups or {}).get(i, ""))
    return t


def test_kfold_keeps_an_images_captions_and_a_group_in_one_fold():
    groups = {0: "a", 7: "a", 13: "a", 2: "b", 3: "b"}  # images 0, 7, 13 share album a; 2 and 3 album b
    table = _table(40, groups)
    fold = fold_of_images(table, 4, seed=3, group_column="album")
    assert fold["img0"] == fold["img7"] == fold["img13"] and fold["img2"] == fold["img3"]
    sizes = np.bincount(list(fold.values()), minlength=4)
    assert sizes.sum() == 40 and sizes.max() - sizes.min() <= 3  # balanced up to the largest group
    folds = kfold(table, 4, seed=3, group_column="album")
    seen = []
    for f in folds:
        val_images, train_images = set(f.val.image_id), set(f.train.image_id)
        assert not val_images & train_images  # no image on both sides, so none of its captions either
        assert len(f.val) + len(f.train) == len(table)
        assert len(f.val) == 3 * len(val_images)  # every caption of a scored image is scored
        seen += sorted(val_images)
    assert sorted(seen) == sorted(set(table.image_id))  # each image is scored in exactly one fold
    # without a group column only images hold together; the same seed gives the same folds
    assert fold_of_images(table, 4, seed=3) == fold_of_images(table.take(reversed(range(len(table)))), 4, seed=3)


def test_plan_uses_the_val_split_when_large_enough_and_folds_below():
    table = _table(50)  # 10 val images
    holdout = plan_folds(table, k=5, min_val_images=10)
    assert holdout.kind == "holdout" and len(holdout.folds) == 1
    assert set(holdout.folds[0].val.split) == {"val"} and set(holdout.folds[0].train.split) == {"train"}
    folds = plan_folds(table, k=5, min_val_images=11)
    assert folds.kind == "kfold" and len(folds.folds) == 5 and "5-fold cross-validation" in folds.describe()
    assert folds.to_dict()["fold_images"] == [10] * 5


def test_budget_and_tower_names():
    assert [parse_budget(b) for b in ("90", "90s", "10m", "1.5h")] == [90, 90, 600, 5400]
    assert expand_tower("lite0+lite2") == "efficientnet_lite0+efficientnet_lite2"
    assert expand_tower("efficientnet_lite1") == "efficientnet_lite1"
    with pytest.raises(Exception, match="budget"):
        parse_budget("ten minutes")


def test_holdout_trial_trains_as_the_training_loop(tmp_path, shapes_dir):
    """A trial's heads train as ``crossalign train`` trains them: same embeddings at every epoch."""
    from crossalign.api import train

    sets = FAST + ["train.epochs=3", "train.early_stopping=false", "evaluate.ranking=plain", "train.lr=1e-3"]
    cfg = load_config(None, sets)
    table, _ = prepare_table(shapes_dir, cfg.data, quiet=True)
    fs = FeatureSet(cfg, table.select(["train", "val"]), progress=False)
    plan = plan_folds(fs.pool, min_val_images=1)
    with recorded_validation() as trial_val:
        got = score_recipe(load_config(None, sets), fs, plan, "rsum")
    with recorded_validation() as loop_val:
        train(shapes_dir, tmp_path / "run", overrides=sets, progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))
    assert len(trial_val) == len(loop_val) == len(epochs) == 3 == len(got.curve)
    for (t_img, t_txt, t2i), (l_img, l_txt, l_t2i), row, score in zip(trial_val, loop_val, epochs, got.curve):
        assert (t2i == l_t2i).all()
        assert_same_retrieval((t_img, t_txt), (l_img, l_txt), t2i, TOL)
        slack = recall_slack((l_img, l_txt), t2i, TOL, prefix="val_")
        assert_recalls_within({"val_rsum": score}, row, {"val_rsum": slack["val_rsum"]}, "trial vs loop")


def test_anchors_follow_the_base_and_respect_keep():
    base = load_config(None, FAST)
    first = base_params(base, ["efficientnet_lite0"], 2, 30)
    points = anchor_params(base, ["efficientnet_lite0"], 2, 30)
    assert len(points) == len(ANCHORS) == 2
    assert points[0] == {**first, "image_dropout": 0.0, "text_dropout": 0.0, "scheduler": "none", "epochs": 30}
    assert points[1] == {**first, "batch_size": 4096, "lr": 2e-3, "weight_decay": 0.1, "scheduler": "cosine"}
    kept = anchor_params(base, ["efficientnet_lite0"], 2, 30, fix=("scheduler", "batch_size", "lr"))
    assert all("scheduler" not in p and "batch_size" not in p for p in kept)
    assert kept[0]["image_dropout"] == 0.0 and kept[1]["weight_decay"] == 0.1
    # an anchor equal to the base is not tried twice
    same = load_config(None, FAST + ["train.batch_size=4096", "train.lr=2e-3", "train.weight_decay=0.1"])
    assert len(anchor_params(same, ["efficientnet_lite0"], 2, 30)) == 1


def test_unscheduled_recipe_is_scored_at_its_best_epoch(shapes_dir):
    """With no schedule the first e epochs are a run of e epochs: the score is the best epoch's,
    and that recipe trained for that many epochs scores it again."""
    sets = FAST + ["train.scheduler=none", "train.epochs=5", "evaluate.ranking=plain", "train.lr=3e-3",
                   "model.image.dropout=0", "model.text.dropout=0"]
    cfg = load_config(None, sets)
    table, _ = prepare_table(shapes_dir, cfg.data, quiet=True)
    fs = FeatureSet(cfg, table.select(["train", "val"]), progress=False)
    plan = plan_folds(fs.pool, min_val_images=1)
    got = score_recipe(cfg, fs, plan, "rsum")
    assert got.epochs_run == 5 and len(got.curve) == 5
    assert got.score == max(got.curve) == got.curve[got.epochs - 1]
    assert got.epochs == got.curve.index(max(got.curve)) + 1  # the earliest of equal epochs
    short = score_recipe(load_config(None, sets + [f"train.epochs={got.epochs}"]), fs, plan, "rsum")
    assert np.allclose(short.curve, got.curve[:got.epochs], atol=1e-9) and short.epochs == got.epochs
    cosine = score_recipe(load_config(None, sets + ["train.scheduler=cosine", "train.epochs=3"]), fs, plan)
    assert cosine.epochs == 3 and cosine.score == cosine.curve[-1]  # a schedule: the last epoch


def _poisoned_copy(shapes_dir, tmp_path):
    """The shapes data with every test caption marked and every test image replaced by junk bytes."""
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    table, _ = prepare_table(data, DataConfig(), quiet=True)
    test_ids = set(table.select("test").image_id)
    assert test_ids
    with open(data / "captions.txt", newline="") as f:
        rows = list(csv.reader(f))
    rows = [rows[0]] + [[r[0], f"TESTSPLIT {r[1]}" if r[0] in test_ids else r[1]] for r in rows[1:]]
    with open(data / "captions.txt", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    for name in test_ids:
        (data / "images" / name).write_bytes(b"junk, not an image")
    return data, test_ids


def test_the_search_never_reads_the_test_split(tmp_path, shapes_dir, monkeypatch):
    from crossalign.train import sides

    data, test_ids = _poisoned_copy(shapes_dir, tmp_path)
    table, _ = prepare_table(data, DataConfig(), quiet=True)
    split_of = dict(zip(table.image_id, table.split))
    assert {split_of[i] for i in test_ids} == {"test"}  # changing the test rows moved no image's split
    embedded_paths, embedded_texts, scored = [], [], []
    real_img, real_txt = sides.image_features, sides.text_features

    def spy_images(tower, paths, *a, **kw):
        embedded_paths.extend(paths)
        return real_img(tower, paths, *a, **kw)

    def spy_texts(tower, texts, *a, **kw):
        embedded_texts.extend(texts)
        return real_txt(tower, texts, *a, **kw)

    monkeypatch.setattr(sides, "image_features", spy_images)
    monkeypatch.setattr(sides, "text_features", spy_texts)
    real_plan = tune_mod.plan_folds

    def spy_plan(pool, *a, **kw):
        plan = real_plan(pool, *a, **kw)
        scored.extend(i for f in plan.folds for i in (*f.val.image_id, *f.train.image_id))
        return plan

    monkeypatch.setattr(tune_mod, "plan_folds", spy_plan)
    res = tune(data, tmp_path / "search", load_config(None, FAST), _search(trials=2), progress=False)
    assert embedded_paths and embedded_texts and scored
    assert not {p.rsplit("/", 1)[-1] for p in embedded_paths} & test_ids
    assert not [t for t in embedded_texts if "TESTSPLIT" in t]
    assert not set(scored) & test_ids
    info = json.loads((tmp_path / "search" / "search.json").read_text())
    assert info["validation"]["kind"] == "kfold" and res.validation["pool_images"] == len(split_of) - len(test_ids)


def test_resumed_search_continues_the_same_study(tmp_path, shapes_dir, caplog):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from crossalign.train.space import suggest

    run = tmp_path / "search"
    base = load_config(None, FAST)
    tune(shapes_dir, run, base, _search(trials=3), progress=False)
    first = _rows(run)
    assert [r["trial"] for r in first] == ["0", "1", "2"]  # the base and the two anchors
    assert first[0]["lr"] == "0.0002" and first[0]["batch_size"] == "32"  # trial 0 is the base recipe
    # trial 1 the first anchor: no feature dropout, no schedule, scored at its best epoch
    assert (first[1]["image_dropout"], first[1]["scheduler"], first[1]["epochs"]) == ("0.0", "none", "3")
    assert 1 <= int(first[1]["score_epoch"]) <= int(first[1]["epochs_run"])
    # a trial cut off by a kill stays RUNNING in the study: make one, with trial 1's recipe
    study = optuna.load_study(study_name="crossalign",
                              storage=JournalStorage(JournalFileBackend(str(run / "study.journal"))))
    params = study.trials[1].params
    study.enqueue_trial(params)
    cut = study.ask()
    suggest(cut, base, [base.model.image.tower], 2, 3)
    assert cut.params == params
    with pytest.raises(Exception, match="already holds a search"):
        tune(shapes_dir, run, base, _search(trials=2), progress=False)
    res = resume_tune(run, trials=5, progress=False)
    rows = _rows(run)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert rows[:3] == first  # earlier trials kept as they were
    assert rows[3]["state"] == "fail" and "cut off" in caplog.text
    assert {k: rows[4][k] for k in params} == {k: first[1][k] for k in params}  # the cut-off recipe again
    assert sum(r["state"] in ("complete", "pruned") for r in rows) == 5 and len(res.trials) == 6


def test_trials_csv_and_saved_config_repeat_the_chosen_score(tmp_path, shapes_dir):
    run = tmp_path / "search"
    base = load_config(None, FAST + ["evaluate.ranking=plain"])
    res = tune(shapes_dir, run, base, _search(trials=3, fix=("ranking",)), progress=False)
    row = next(r for r in _rows(run) if r["trial"] == str(res.best_trial))
    assert float(row["score"]) == res.best_score
    cfg = load_config(run / "config.yaml")
    assert cfg.train.epochs == int(row["score_epoch"]) and cfg.train.early_stopping is False
    assert cfg.train.keep == "last"
    assert cfg.train.lr == float(row["lr"]) and cfg.evaluate.ranking == "plain"
    with recorded_validation() as seen:
        again = rescore(run)
    folds = len(res.validation["fold_images"])
    last = seen[-folds:]  # each fold's validation after the last epoch
    slacks = [recall_slack(emb[:2], emb[2], TOL)["rsum"] for emb in last]
    for k in range(folds):
        assert abs(again.fold_scores[k] - float(row[f"fold_{k + 1}"])) <= slacks[k] + 1e-9
    assert abs(again.score - float(row["score"])) <= float(np.mean(slacks)) + 1e-9


def test_a_seeded_search_proposes_the_same_recipes(tmp_path, shapes_dir):
    base = load_config(None, FAST)
    a = tune(shapes_dir, tmp_path / "a", base, _search(trials=3, max_epochs=2), progress=False)
    b = tune(shapes_dir, tmp_path / "b", base, _search(trials=3, max_epochs=2), progress=False)
    # the epoch an unscheduled trial scored best at may fall on a near-tie: left out
    params = [k for k in a.trials[0] if k not in ("score", "seconds", "state", "epochs_run", "score_epoch")
              and not k.startswith("fold_")]
    # trials before the sampler's startup count are drawn from its seed alone
    assert [{k: r[k] for k in params} for r in a.trials] == [{k: r[k] for k in params} for r in b.trials]
    c = tune(shapes_dir, tmp_path / "c", base, _search(trials=4, max_epochs=2, seed=1), progress=False)
    n = 1 + len(anchor_params(base, [base.model.image.tower], 2, 2))  # the base and the anchors come first
    assert n == 3 and len(a.trials) == 3
    a4 = resume_tune(tmp_path / "a", trials=4, progress=False)
    assert [r["lr"] for r in c.trials[n:]] != [r["lr"] for r in a4.trials[n:]]


def test_each_listed_tower_is_extracted_once(tmp_path, shapes_dir, monkeypatch):
    from crossalign.train import trial as trial_mod

    built = []
    real = trial_mod.FeatureSet.__init__

    def count(self, cfg, pool, progress=True):
        built.append(cfg.model.image.tower)
        real(self, cfg, pool, progress)

    monkeypatch.setattr(tune_mod.FeatureSet, "__init__", count)
    base = load_config(None, FAST + ["model.image.freeze=frozen"])
    res = tune(shapes_dir, tmp_path / "s", base, _search(trials=5, max_epochs=2, towers=("lite0", "small_cnn")),
               progress=False)
    used = {r["tower"] for r in res.trials}
    assert used == {"efficientnet_lite0", "small_cnn"}
    assert sorted(built) == sorted(used)  # each tower's features extracted once, whatever the trial count


def test_train_auto_fits_the_chosen_recipe_and_reports_its_trials(tmp_path, shapes_dir, capsys):
    from crossalign.cli.main import main

    run = tmp_path / "run"
    assert main(["-q", "train", "--auto", "--data", str(shapes_dir), "--out", str(run), "--trials", "2",
                 "--max-epochs", "2", *sum((["--set", s] for s in FAST), [])]) == 0
    out = capsys.readouterr().out
    assert "5-fold cross-validation over train + val" in out and "chosen: trial" in out
    for name in ("study.journal", "trials.csv", "search.json", "config.yaml", "model_best.safetensors"):
        assert (run / name).is_file(), name
    info = json.loads((run / "search.json").read_text())
    assert info["search"]["count_extraction"] is True  # --auto's budget counts extraction
    cfg = load_config(run / "config.yaml")
    assert cfg.train.epochs == info["best"]["epochs"]
    with open(run / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == cfg.train.epochs  # the chosen epoch count, no early stop
    summary = json.loads((run / "summary.json").read_text())
    assert cfg.train.keep == "last" and summary["best_epoch"] == cfg.train.epochs  # model_best is that epoch
    assert cfg.train.fit_on == "train+val"  # the final fit learns from every image the search held out
    from crossalign.report.build import report

    html = report(run, shapes_dir, tmp_path / "report.html", k=4).html.read_text()
    assert "Recipe search" in html and "trials" in html and "cross-validation" in html
    assert (tmp_path / "report_run_trials.png").is_file()


def test_train_searches_by_default_only_when_no_recipe_is_named(tmp_path):
    from crossalign.train.tune import DEFAULT_SEARCH_MAX_CAPTIONS, default_tune_reason

    cfg = load_config(None, [])
    assert default_tune_reason(cfg, None, [], 3000) is None
    # settings that are not the recipe leave the default search on
    plain = ["data.strict=true", "cache.dir=/x", "runtime.device=cpu", "train.tensorboard=false"]
    assert default_tune_reason(load_config(None, plain), None, plain, 3000) is None
    assert "lr" in default_tune_reason(load_config(None, ["train.lr=1e-3"]), None, ["train.lr=1e-3"], 3000)
    assert "epochs" in default_tune_reason(cfg, None, ["train.patience=2"], 3000)
    assert "ranking" in default_tune_reason(cfg, None, ["evaluate.ranking=plain"], 3000)
    (tmp_path / "c.yaml").write_text("train:\n  seed: 1\n")
    assert "c.yaml" in default_tune_reason(cfg, tmp_path / "c.yaml", [], 3000)
    scratch = load_config(None, ["model.image.tower=small_cnn"])
    assert "image tower trains" in default_tune_reason(scratch, None, [], 3000)
    trains = load_config(None, ["model.text.freeze=last:2"])
    assert "text tower trains" in default_tune_reason(trains, None, [], 3000)
    assert "`auto` searches anyway" in default_tune_reason(cfg, None, [], DEFAULT_SEARCH_MAX_CAPTIONS + 1)
    warm = load_config(None, ["train.init_from=runs/heads"])
    assert "init_from" in default_tune_reason(warm, None, ["train.init_from=runs/heads"], 3000)


def test_train_with_fixed_does_not_search(tmp_path, shapes_dir, capsys):
    from crossalign.cli.main import main

    fixed = tmp_path / "fixed"
    assert main(["-q", "train", "--fixed", "--data", str(shapes_dir), "--out", str(fixed),
                 *sum((["--set", s] for s in FAST + ["train.epochs=1"]), [])]) == 0
    assert not (fixed / "search.json").exists() and (fixed / "model_best.safetensors").is_file()
    capsys.readouterr()
    assert main(["-q", "train", "--fixed", "--budget", "1m", "--data", str(shapes_dir), "--out",
                 str(tmp_path / "x")]) == 2
    assert "--fixed" in capsys.readouterr().err


def test_a_refit_learns_from_train_and_val_at_the_chosen_epoch_count(tmp_path, shapes_dir):
    """``train.fit_on=train+val`` (what a search's final fit uses) steps over the captions of
    both splits; val can then neither pick the epoch nor stop the run."""
    from crossalign.api import train
    from crossalign.cli.main import main
    from crossalign.errors import ConfigError

    cfg = load_config(None, FAST)
    table, _ = prepare_table(shapes_dir, cfg.data, quiet=True)
    n_train, n_val = len(table.select("train")), len(table.select("val"))
    assert n_val >= 8  # a refit takes at least one more batch
    steps = {}
    for fit_on in ("train", "train+val"):
        run = tmp_path / fit_on
        train(shapes_dir, run, overrides=FAST + ["train.batch_size=8", "train.epochs=1", "train.keep=last",
                                                 "train.early_stopping=false", f"train.fit_on={fit_on}"],
              progress=False)
        with open(run / "metrics.csv") as f:
            steps[fit_on] = int(float(next(csv.DictReader(f))["step"]))
    assert steps == {"train": n_train // 8, "train+val": (n_train + n_val) // 8}
    with pytest.raises(ConfigError, match="keep=last"):
        train(shapes_dir, tmp_path / "bad", overrides=FAST + ["train.fit_on=train+val"], progress=False)
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(tmp_path / "bad2"),
                 "--set", "train.fit_on=everything", *sum((["--set", s] for s in FAST), [])]) == 2


def test_python_and_the_command_train_alike_given_no_recipe(tmp_path, shapes_dir, monkeypatch, capsys):
    """``crossalign.train(data, out)`` decides as ``crossalign train --data --out`` does: the same
    default search (held to two short trials here, so its length does not depend on the clock), the
    same chosen recipe, the same trained figures."""
    import dataclasses

    import crossalign
    from crossalign.cli.main import main

    check = tune_mod._check
    monkeypatch.setattr(tune_mod, "DEFAULT_BUDGET", 600.0)  # never reached by two trials
    monkeypatch.setattr(tune_mod, "_check", lambda s: check(dataclasses.replace(s, trials=2, max_epochs=3)))
    sets = ["train.tensorboard=false"]
    assert main(["train", "--data", str(shapes_dir), "--out", str(tmp_path / "cli"), "--set", sets[0]]) == 0
    out = capsys.readouterr().out
    assert "no recipe given: searching one" in out and "chosen: trial" in out
    assert "trained on" in out and "crossalign evaluate" in out  # the refit's val figures are not held out
    info = json.loads((tmp_path / "cli" / "search.json").read_text())
    # the default search's budget starts once the features are cached; --auto --budget counts extraction
    assert info["search"]["budget"] == 600.0 and info["search"]["count_extraction"] is False
    assert info["trials_finished"] == 2 and load_config(tmp_path / "cli" / "config.yaml").train.keep == "last"
    lib = crossalign.train(shapes_dir, tmp_path / "lib", overrides=sets, progress=False)
    assert lib.tuned is not None and lib.refit  # it searched, then refit on train + val
    for name in ("config.yaml", "search.json"):
        assert (tmp_path / "cli" / name).is_file() and (tmp_path / "lib" / name).is_file()
    assert load_config(tmp_path / "cli" / "config.yaml") == load_config(tmp_path / "lib" / "config.yaml")
    cli_trials = list(csv.DictReader(open(tmp_path / "cli" / "trials.csv")))
    lib_trials = list(csv.DictReader(open(tmp_path / "lib" / "trials.csv")))
    # one process, the same seeds and the same code: the scores agree to float printing
    assert [float(r["score"]) for r in cli_trials] == pytest.approx([float(r["score"]) for r in lib_trials], abs=1e-6)
    a = crossalign.evaluate(tmp_path / "cli", shapes_dir, progress=False)
    b = crossalign.evaluate(tmp_path / "lib", shapes_dir, progress=False)
    assert a["rsum"] == pytest.approx(b["rsum"], abs=1e-6)
