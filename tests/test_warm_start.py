"""train.init_from: a run starts from another run's model_best (the converged heads first)."""

import pytest
import torch

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
