"""A staged recipe (``then``): each stage trains from the model_best of the stage before."""

import json
import shutil

import pytest
import torch
import yaml

from crossalign.api import train
from crossalign.cli.main import main
from crossalign.config import load_config, stage_configs
from crossalign.errors import ConfigError
from crossalign.models.dual import build_model
from crossalign.runs import load_model

FAST = {"train": {"batch_size": 32, "tensorboard": False, "checkpoint_every": 0, "epochs": 2, "lr": 3e-3}}


def _write(path, data):
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_stage_changes_resolve_in_order_dotted_or_nested(tmp_path):
    nested = _write(tmp_path / "a.yaml", {**FAST, "then": [{"train": {"lr": 1e-4, "epochs": 1}},
                                                           {"model": {"text": {"freeze": "last:1"}}}]})
    dotted = _write(tmp_path / "b.yaml", {**FAST, "then": [{"train.lr": 1e-4, "train.epochs": 1},
                                                           {"model.text.freeze": "last:1"}]})
    for path in (nested, dotted):
        one, two, three = stage_configs(load_config(path))
        assert (one.train.lr, one.train.epochs, one.model.text.freeze) == (3e-3, 2, "auto")
        assert (two.train.lr, two.train.epochs, two.model.text.freeze) == (1e-4, 1, "auto")
        assert (three.train.lr, three.train.epochs, three.model.text.freeze) == (1e-4, 1, "last:1")
        assert one.then == two.then == three.then == []
    single = _write(tmp_path / "c.yaml", {**FAST, "then": {"train.lr": 1e-4}})  # one stage, no list
    assert load_config(single).then == [{"train.lr": 1e-4}]
    assert len(stage_configs(load_config(None))) == 1


@pytest.mark.parametrize("stage, match", [
    ({"train.lrr": 1e-4}, "then: stage 2: unknown key"),
    ({"train": {"epochs": "many"}}, "then: stage 2.train.epochs expects int"),
    ({"data.split_seed": 3}, "data.split_seed cannot change"),
    ({"train.init_from": "elsewhere"}, "train.init_from cannot change"),
    ("train.lr=1e-4", "then: stage 2 must be a mapping"),
])
def test_a_bad_stage_fails_when_the_config_loads(tmp_path, stage, match):
    path = _write(tmp_path / "bad.yaml", {**FAST, "then": [stage]})
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_a_staged_recipe_is_not_searched(tmp_path, shapes_dir):
    path = _write(tmp_path / "staged.yaml", {**FAST, "then": [{"train.lr": 1e-4}]})
    assert main(["-q", "tune", "--data", str(shapes_dir), "--out", str(tmp_path / "t"), "--config", str(path),
                 "--trials", "1"]) == 2


@pytest.fixture(scope="module")
def staged(tmp_path_factory, shapes_dir):
    """Two stages: the heads at 3e-3, then two epochs at a tenth of the rate."""
    root = tmp_path_factory.mktemp("staged")
    recipe = _write(root / "recipe.yaml", {**FAST, "then": [{"train.lr": 3e-4}]})
    run = root / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(run), "--config", str(recipe)]) == 0
    return run


def test_each_stage_starts_from_the_one_before(staged, shapes_dir, tmp_path):
    first = staged / "stages" / "1"
    one, two = load_config(first / "config.yaml"), load_config(staged / "config.yaml")
    assert (one.train.lr, one.train.init_from, one.then) == (3e-3, "", [])
    assert (two.train.lr, two.train.init_from) == (3e-4, str(first.resolve()))
    assert load_config(staged / "recipe.yaml").then == [{"train.lr": 3e-4}]  # the recipe as given
    summary = json.loads((staged / "summary.json").read_text())
    assert [s["run"] for s in summary["stages"]] == ["stages/1", "."]
    assert summary["stages"][0]["best_val"] == json.loads((first / "summary.json").read_text())["best_val"]
    # the same split for both stages
    for name in ("train", "val", "test"):
        assert (first / "splits" / f"{name}.txt").read_text() == (staged / "splits" / f"{name}.txt").read_text()
    # a second stage at rate 0 keeps the weights it started from: stage 1's
    zero = tmp_path / "zero"
    recipe = _write(tmp_path / "zero.yaml", {**FAST, "then": [{"train.lr": 0.0, "train.epochs": 1}]})
    train(shapes_dir, zero, config=recipe, progress=False)
    a, _ = load_model(zero / "stages" / "1")
    b, _ = load_model(zero)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_a_staged_run_resumes_the_stage_it_stopped_in(staged, tmp_path):
    # stopped after stage 1 finished, before the last stage wrote anything
    run = tmp_path / "run"
    shutil.copytree(staged / "stages", run / "stages")
    shutil.copy(staged / "recipe.yaml", run / "recipe.yaml")
    assert main(["-q", "train", "--resume", str(run)]) == 0
    want = json.loads((staged / "summary.json").read_text())
    got = json.loads((run / "summary.json").read_text())
    assert [s["run"] for s in got["stages"]] == ["stages/1", "."]
    assert got["best_epoch"] == want["best_epoch"]
    for key, value in want["best_val"].items():
        if key.startswith("val_"):  # the figures, not the timings
            assert got["best_val"][key] == pytest.approx(value, abs=1e-6), key
    # a finished staged run resumed: nothing trains again, the summary still names both stages
    assert main(["-q", "train", "--resume", str(run)]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert [s["run"] for s in again["stages"]] == ["stages/1", "."]
    assert again["best_val"] == got["best_val"]


def test_the_report_puts_the_earlier_stages_beside_the_last(staged, shapes_dir, tmp_path):
    from crossalign.report.build import report

    res = report([staged], shapes_dir, tmp_path / "report.html", k=4, explain=0, progress=False)
    assert list(res.metrics) == ["run", "run (stage 1)"]
    assert res.metrics["run"] != res.metrics["run (stage 1)"]
    assert "run (stage 1)" in (tmp_path / "report.html").read_text()


def test_a_tower_trained_in_one_stage_and_frozen_in_the_next_keeps_its_training(tmp_path, shapes_dir):
    # stage 1 trains MiniLM's last layer; stage 2 freezes it again: stage 2's features and
    # checkpoints must hold the trained weights, not MiniLM's as it ships
    recipe = _write(tmp_path / "recipe.yaml", {
        **FAST, "model": {"text": {"freeze": "last:1"}},
        "then": [{"model.text.freeze": "frozen", "train.epochs": 1}]})
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(run), "--config", str(recipe)]) == 0
    meta = json.loads((run / "model_best.json").read_text())
    assert "text_tower." not in meta["skipped"]
    first, _ = load_model(run / "stages" / "1")
    last, cfg = load_model(run)  # before the fix: a fingerprint mismatch with MiniLM's own weights
    assert cfg.model.text.freeze == "frozen"
    trained = first.text_tower.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in last.text_tower.state_dict().items())
    shipped = build_model(load_config(None).model).text_tower.state_dict()  # MiniLM as it ships
    assert any(not torch.equal(v, shipped[k]) for k, v in trained.items())
    assert main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--split", "test"]) == 0
