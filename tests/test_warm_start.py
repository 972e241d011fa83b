"""train.init_from: a run starts from another run's model_best (the converged heads first)."""

import shutil

import pytest
import torch
from _resume import epoch_rows, killed_at_step

from crossalign.api import train
from crossalign.config import load_config
from crossalign.errors import ConfigError
from crossalign.models.dual import build_model
from crossalign.runs import load_model, warm_start

FAST = ["train.batch_size=32", "train.tensorboard=false", "train.checkpoint_every=0", "train.epochs=2"]


@pytest.fixture(scope="module")
def first(tmp_path_factory, shapes_dir):
    run = tmp_path_factory.mktemp("warm") / "first"
    train(shapes_dir, run, overrides=FAST + ["train.lr=3e-3"], progress=False)
    return run


def test_warm_start_copies_every_weight_of_the_source(first):
    src, cfg = load_model(first)
    model = build_model(load_config(None, FAST).model)
    names = warm_start(model, load_config(None, FAST), first)
    assert "logit_scale" in names and any(n.startswith("image_head.") for n in names)
    got, want = model.state_dict(), src.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_a_run_started_from_another_at_rate_zero_keeps_its_weights(first, shapes_dir, tmp_path):
    second = tmp_path / "second"
    train(shapes_dir, second, overrides=FAST + [f"train.init_from={first}", "train.lr=0", "train.epochs=1"],
          progress=False)
    a, _ = load_model(first)
    b, cfg = load_model(second)
    assert cfg.train.init_from == str(first)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_warm_start_refuses_another_model(first):
    for sets, match in ((["model.head=mlp"], "heads differ"), (["model.embed_dim=64"], "heads differ"),
                        (["model.image.tower=small_cnn"], "image tower")):
        cfg = load_config(None, FAST + sets)
        with pytest.raises(ConfigError, match=match):
            warm_start(build_model(cfg.model), cfg, first)


def test_a_warm_started_run_resumed_mid_epoch_freezes_the_tower_its_source_trained(tmp_path, shapes_dir, monkeypatch):
    """The source trains its image tower; this run freezes it and trains the heads over its
    features. Resumed after a kill, the run must warm-start again before it extracts them:
    otherwise they would come from the freshly built tower, and the resumed run would train on
    other features than the uninterrupted one."""
    tiny = ["model.image.tower=small_cnn", "model.image.pretrained=false", "model.image.width=8",
            "model.text.tower=lstm", "model.text.pretrained=false", "model.text.width=16",
            "train.tensorboard=false", "train.batch_size=32"]
    source = tmp_path / "source"
    train(shapes_dir, source, overrides=tiny + ["model.image.freeze=trainable", "train.epochs=1",
                                                "train.checkpoint_every=0", "train.lr=3e-3"], progress=False)
    sets = tiny + ["model.image.freeze=frozen", f"train.init_from={source}", "train.epochs=3",
                   "train.checkpoint_every=3", "train.early_stopping=false"]
    train(shapes_dir, tmp_path / "full", overrides=sets + [f"cache.dir={tmp_path / 'c1'}"], progress=False)
    with killed_at_step(monkeypatch, 12):
        train(shapes_dir, tmp_path / "cut", overrides=sets + [f"cache.dir={tmp_path / 'c2'}"], progress=False)
    assert (tmp_path / "cut" / "resume" / "latest.json").is_file()
    shutil.rmtree(tmp_path / "c2")  # the resumed run extracts its features again
    train(resume=tmp_path / "cut", progress=False)
    # every epoch, the ones after the resume included, saw the same features
    a, b = epoch_rows(tmp_path / "full"), epoch_rows(tmp_path / "cut")
    assert len(a) == len(b) == 3
    for key in ("train_loss", "val_rsum"):
        assert [float(r[key]) for r in b] == pytest.approx([float(r[key]) for r in a], abs=1e-6), key
    # the frozen tower of the finished run is the one its source trained
    src, _ = load_model(source)
    got, _ = load_model(tmp_path / "cut")
    for k, v in src.image_tower.state_dict().items():
        assert torch.equal(v, got.image_tower.state_dict()[k]), k
