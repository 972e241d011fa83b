"""A caption far longer than the text tower reads: embedded (cut or chunked), reported by
``check``, and never answered by transformers' "Token indices sequence length" warning."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from crossalign.cli.main import main
from crossalign.models.registry import create

WARNING = "Token indices sequence length is longer than the specified maximum sequence length"
LONG = " ".join(f"a red circle number {i} beside a blue square" for i in range(240))  # > 10,000 chars
FLAG = "sequence-length-is-longer-than-the-specified-maximum"  # transformers warns once per tokenizer


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def hf_records():
    """Every record transformers logs, at its default verbosity (warnings on)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    handler, logger = _Records(), logging.getLogger("transformers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    hf_logging.set_verbosity(level)


def _too_long(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith(WARNING)]


def test_long_caption_embeds_without_the_warning(hf_records, capfd):
    assert len(LONG) >= 10_000
    tower = create("minilm")
    feats = {}
    for chunk in (False, True):
        tower.chunk_long = chunk
        tower.tokenizer.deprecation_warnings.pop(FLAG, None)
        with torch.no_grad():
            tok = tower.tokenize([LONG, "a red circle"])
            assert tok["input_ids"].shape[1] == tower.max_tokens  # cut to what the model reads
            feats[chunk] = tower(**tok)  # [2, 384]
    assert _too_long(hf_records) == [] and WARNING not in capfd.readouterr().err
    for f in feats.values():
        assert f.shape == (2, tower.width) and torch.isfinite(f).all()
    # chunking reads the whole text, so its feature differs from the cut one's
    assert not torch.allclose(feats[True][0], feats[False][0], atol=1e-4)
    assert torch.allclose(feats[True][1], feats[False][1], atol=1e-5)
    # the control: the same text untruncated through the bare tokenizer does warn
    tower.tokenizer.deprecation_warnings.pop(FLAG, None)
    tower.tokenizer(LONG, truncation=False)
    assert len(_too_long(hf_records)) == 1


def test_data_check_reports_a_long_caption_without_the_warning(hf_records, capfd, tmp_path, shapes_dir):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    first = (data / "captions.txt").read_text().splitlines()[1].split(",")[0]
    with open(data / "captions.txt", "a") as f:
        f.write(f"{first},{LONG}\n")
    assert main(["-q", "check", str(data), "--json", str(tmp_path / "check.json")]) == 0
    out = capfd.readouterr()
    assert "long_caption" in out.out + out.err
    assert WARNING not in out.out + out.err
    assert _too_long(hf_records) == []
    assert "long_caption" in (tmp_path / "check.json").read_text()


def test_training_reads_a_long_caption_quietly(hf_records, capfd, tmp_path, shapes_dir):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    first = (data / "captions.txt").read_text().splitlines()[1].split(",")[0]
    with open(data / "captions.txt", "a") as f:
        f.write(f"{first},{LONG}\n")
    from crossalign.api import load, train

    train(data, tmp_path / "run", progress=False,
          overrides=["train.epochs=1", "train.tensorboard=false", "model.image.tower=small_cnn",
                     "model.image.width=16", "model.image.image_size=32", "model.text.chunk_long=true"])
    vec = load(tmp_path / "run").encode_text([LONG])  # [1, embed_dim]
    assert vec.shape[0] == 1 and np.isfinite(vec).all()
    assert np.linalg.norm(vec, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert _too_long(hf_records) == [] and WARNING not in capfd.readouterr().err
