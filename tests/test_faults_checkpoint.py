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
from crossalign.config import ImageTowerConfig, ModelConfig, RunConfig, TextTowerConfig, save_config
from crossalign.models.dual import build_model
from crossalign.train.checkpoint import CheckpointError, load_model, save_model


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
