"""Training's decoding runs in DataLoader workers and changes nothing: 0 or N workers, or a resume."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from safetensors.numpy import load_file

from crossalign.api import train
from crossalign.embed.towers import DecodeImages
from crossalign.train import engine as engine_mod

TINY = ["model.image.tower=small_cnn", "model.image.width=32", "model.image.pretrained=false",
        "model.text.tower=lstm", "model.text.width=32", "model.text.pretrained=false",
        "model.text.freeze=trainable", "model.head=mlp", "model.head_dropout=0.2",
        "augment.image=true", "augment.cached_views=2", "train.batch_size=16",
        "train.early_stopping=false", "train.tensorboard=false", "train.checkpoint_every=0",
        "runtime.eval_batch_size=32", "cache.enabled=false"]
TIMING = {"samples_per_s", "epoch_seconds"}


def _metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _same_weights(a, b) -> None:
    wa, wb = load_file(a / "model_last.safetensors"), load_file(b / "model_last.safetensors")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert (wa[k] == wb[k]).all(), k


@pytest.mark.parametrize("freeze", ["trainable", "last:1"])
def test_workers_train_exactly_like_the_main_process(tmp_path, shapes_dir, freeze):
    runs = {}
    for workers in (0, 2):
        runs[workers] = tmp_path / f"w{workers}"
        train(shapes_dir, runs[workers], progress=False,
              overrides=TINY + [f"model.image.freeze={freeze}", "train.epochs=2",
                                f"runtime.num_workers={workers}"])
    assert _metrics(runs[0]) == _metrics(runs[2]) and len(_metrics(runs[0])) == 2
    _same_weights(runs[0], runs[2])


def test_training_steps_decode_in_the_workers(tmp_path, shapes_dir, monkeypatch):
    main_pid, here = os.getpid(), []
    real = DecodeImages.__getitem__

    def spy(self, key):
        if os.getpid() == main_pid:
            here.append(key)
        return real(self, key)

    monkeypatch.setattr(DecodeImages, "__getitem__", spy)
    train(shapes_dir, tmp_path / "run", progress=False,
          overrides=TINY + ["train.epochs=1", "runtime.num_workers=2"])
    assert here == []  # every training batch and every validation image came from a worker


def test_resume_with_workers_is_exact(tmp_path, shapes_dir, monkeypatch):
    sets = TINY + ["train.epochs=2", "runtime.num_workers=2", "train.checkpoint_every=2"]
    full = tmp_path / "full"
    train(shapes_dir, full, progress=False, overrides=sets)
    real_step, calls = engine_mod.Engine._optimizer_step, {"n": 0}

    def crashing_step(self):
        calls["n"] += 1
        if calls["n"] == 20:  # step 5 of epoch 2 (15 steps an epoch), after a resume point
            raise KeyboardInterrupt("simulated kill")
        return real_step(self)

    monkeypatch.setattr(engine_mod.Engine, "_optimizer_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(shapes_dir, tmp_path / "cut", progress=False, overrides=sets)
    monkeypatch.setattr(engine_mod.Engine, "_optimizer_step", real_step)
    latest = json.loads((tmp_path / "cut" / "resume" / "latest.json").read_text())["tag"]
    assert latest.startswith("0002-")  # the loader restarts mid-epoch
    train(resume=tmp_path / "cut", progress=False)
    assert _metrics(full) == _metrics(tmp_path / "cut")
    _same_weights(full, tmp_path / "cut")


def test_the_loader_stacks_batches_in_the_workers_in_the_towers_layout(tmp_path):
    from PIL import Image

    from crossalign.data.transforms import eval_transform
    from crossalign.embed.towers import decode_loader

    paths = []
    for k in range(5):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.new("RGB", (20 + k, 18), (40 * k, 90, 200 - 30 * k)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(2, str(tmp_path / "bad.jpg"))
    transform = eval_transform({"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0,
                                "mean": (0.5,) * 3, "std": (0.5,) * 3})
    data = DecodeImages(paths, transform, 10_000)
    plan = [[0, 1, 2], [3, 4, 5]]
    here = list(decode_loader(data, plan, 0))
    spread = list(decode_loader(data, plan, 2, channels_last=True))
    assert [b.keys for b in spread] == [[0, 1], [3, 4, 5]] and [b.size for b in spread] == [3, 3]
    assert spread[0].failed[0][0] == 2 and "bad.jpg" in spread[0].failed[0][1][0]
    for a, b in zip(here, spread):
        assert b.pixels.is_contiguous(memory_format=torch.channels_last)
        assert not a.pixels.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a.pixels, b.pixels)  # [n_ok, 3, 16, 16], the same values


@pytest.mark.parametrize("tower", ["small_cnn", "timm:resnet18"])
def test_channels_last_is_an_option_with_the_same_results(tower):
    from crossalign.config import ModelConfig
    from crossalign.models.dual import build_model

    from crossalign.errors import ConfigError

    cfg = ModelConfig()
    cfg.image.tower, cfg.image.pretrained, cfg.image.image_size = tower, False, 32
    cfg.text.tower, cfg.text.pretrained, cfg.text.width = "lstm", False, 32
    assert getattr(build_model(cfg).image_tower, "channels_last", False) is (tower != "small_cnn")  # auto
    cfg.image.channels_last = "sometimes"
    with pytest.raises(ConfigError, match="model.image.channels_last"):
        build_model(cfg)
    outs, grads = {}, {}
    for on in (True, False):
        cfg = ModelConfig()
        cfg.image.tower, cfg.image.pretrained, cfg.image.image_size = tower, False, 32
        cfg.image.freeze, cfg.image.channels_last, cfg.image.width = "trainable", str(on), 32
        cfg.text.tower, cfg.text.pretrained, cfg.text.width = "lstm", False, 32
        torch.manual_seed(0)
        model = build_model(cfg)
        assert model.image_tower.channels_last is on
        conv = next(m for m in model.image_tower.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is on
        pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        out = model.encode_image(pixels)  # [4, embed_dim]
        out.sum().backward()
        outs[on], grads[on] = out.detach(), conv.weight.grad.clone()
    torch.testing.assert_close(outs[True], outs[False], atol=1e-5, rtol=1e-4)
    # float sums run in another order: differences are rounding, small against the gradient
    scale = grads[False].abs().max().item()
    assert (grads[True] - grads[False]).abs().max().item() <= 1e-4 * scale, scale
