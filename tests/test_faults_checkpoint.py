"""Run folders under faults: changed frozen weights, damaged or replaced files, pickles.

A checkpoint or resume file is loaded only when its bytes match the SHA-256 recorded
when it was written; otherwise loading stops with a CheckpointError naming the file.
Nothing is ever unpickled: a pickle put in a checkpoint's place is refused unread.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import crossalign
from crossalign.api import train
from crossalign.config import ImageTowerConfig, ModelConfig, RunConfig, TextTowerConfig, save_config
from crossalign.models.dual import build_model
from crossalign.runs import load_model
from crossalign.train.checkpoint import save_model
from crossalign.errors import CheckpointError


def frozen_timm_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run whose frozen image tower is loaded from a local weights file (not copied in)."""
    import timm

    torch.manual_seed(0)
    weights = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(weights))
    cfg = ModelConfig(image=ImageTowerConfig(tower="timm:test_resnet", checkpoint=str(weights),
                                             freeze="frozen", image_size=32),
                      text=TextTowerConfig(tower="lstm", vocab_size=32, width=16), embed_dim=16)
    model = build_model(cfg)
    model.text_tower.fit_vocabulary(["a red circle", "two blue squares"])
    run = tmp_path / "run"
    save_config(RunConfig(model=cfg), run / "config.yaml")
    save_model(model, run / "model_best.safetensors")
    return run, weights


def test_run_with_changed_frozen_weights_is_refused(tmp_path):
    import timm

    run, weights = frozen_timm_run(tmp_path)
    meta = json.loads((run / "model_best.json").read_text())
    assert set(meta["fingerprints"]) == {"image"}  # the frozen tower was left out, and hashed
    load_model(run)  # the same weights: loads
    torch.manual_seed(1)  # other weights under the same file name
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(weights))
    with pytest.raises(CheckpointError, match="frozen image tower's weights differ") as err:
        load_model(run)
    assert str(run / "model_best.safetensors") in str(err.value) and str(weights) in str(err.value)


class Trap:
    """Unpickling this creates ``path``: the proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shapes_dir) -> Path:
    """A finished tiny run with model_best, model_last and a resume point (read-only: copy it)."""
    from _kill_runner import TINY

    root = tmp_path_factory.mktemp("faults")
    train(shapes_dir, root / "run", overrides=TINY + ["train.epochs=2", f"cache.dir={root}/cache"],
                     progress=False)
    return root / "run"


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def resume_file(run: Path, kind: str) -> Path:
    tag = json.loads((run / "resume" / "latest.json").read_text())["tag"]
    return run / "resume" / kind.replace("TAG", tag)


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01  # one bit, in the middle (tensor bytes or JSON text)
    elif how == "truncate":
        data = data[:len(data) // 2]
    path.write_bytes(bytes(data))


FILES = ["model_best.safetensors", "resume/model-TAG.safetensors", "resume/state-TAG.safetensors",
         "resume/state-TAG.json"]


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("name", FILES)
def test_damaged_checkpoint_is_refused_with_a_message(trained_run, tmp_path, name, how, capsys):
    from crossalign.cli.main import main

    run = copy_run(trained_run, tmp_path / "run")
    target = resume_file(run, name.split("/")[1]) if name.startswith("resume/") else run / name
    damage(target, how)
    if name.startswith("model_"):
        with pytest.raises(CheckpointError, match="checksum") as err:
            crossalign.load(run)
        assert str(target) in str(err.value)
        return
    with pytest.raises(CheckpointError, match="checksum") as err:
        train(resume=run, progress=False)
    assert str(target) in str(err.value)
    assert main(["-q", "train", "--resume", str(run)]) == 2  # the command line: one line, exit 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("WARNING")]
    assert len(lines) == 1 and str(target) in lines[0] and "refusing" in lines[0]
    assert lines[0].startswith("crossalign train: error: ")


@pytest.mark.parametrize("name", ["model_best.safetensors", "resume/model-TAG.safetensors",
                                  "resume/state-TAG.safetensors"])
@pytest.mark.parametrize("with_json", [True, False])
def test_pickle_in_place_of_a_checkpoint_is_refused_unread(trained_run, tmp_path, name, with_json):
    run = copy_run(trained_run, tmp_path / "run")
    target = resume_file(run, name.split("/")[1]) if name.startswith("resume/") else run / name
    marker = tmp_path / "pickle-was-executed"
    target.write_bytes(pickle.dumps(Trap(marker)))
    if not with_json:  # no checksum to compare with: refused for that, before the file is read
        (run / "model_best.json").unlink()
        for meta in (run / "resume").glob("state-*.json"):
            info = json.loads(meta.read_text())
            info.pop("sha256")
            meta.write_text(json.dumps(info))
        latest = run / "resume" / "latest.json"
        latest.write_text(json.dumps({"tag": json.loads(latest.read_text())["tag"]}))
    with pytest.raises(CheckpointError, match="refusing to (load|resume)") as err:
        if name.startswith("model_"):
            crossalign.load(run)
        else:
            train(resume=run, progress=False)
    assert (str(target) if with_json else "checksum" if name.startswith("resume/") else target.name) \
        in str(err.value)
    assert not marker.exists() and not os.path.exists(marker)
