"""The other kinds of pretrained model: a Hugging Face ``SiglipModel`` (``model.pretrained_model=hf:FOLDER``)
and an open_clip model (``model.pretrained_model=open_clip:NAME``, ``model.pretrained_weights=FILE``), each loaded
as it is against its library's own vectors, measured zero-shot, fine-tuned, exported and read
back by that library. No weights can be downloaded, so both are tiny random models
(tests/_tiny_clip.py)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.functional import normalize

from crossalign.config import logit_start
from crossalign.cli.main import main
from crossalign.errors import ConfigError
from crossalign.train.engine import loss_of

from _kill_runner import sets
from _tiny_clip import OPEN_CLIP_SCALE, SIGLIP_BIAS, SIGLIP_SCALE, make_tiny_open_clip, make_tiny_siglip

TEXTS = ["a red circle", "two blue squares on the left", "x"]


def _picture():
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory) -> Path:
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny_open_clip(tmp_path_factory.mktemp("tiny-open-clip"))


def _base(pair: list[str], tmp_path: Path) -> list[str]:
    return [*pair, "train.tensorboard=false", "train.batch_size=32", f"cache.dir={tmp_path / 'cache'}",
            "train.lr=1e-3"]


def _train(data: Path, out: Path, overrides: list[str]) -> None:
    assert main(["-q", "train", "--data", str(data), "--out", str(out), *sets(overrides)]) == 0


def _siglip_features(ref, pixels, tok) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return (normalize(ref.get_image_features(pixel_values=pixels).pooler_output, dim=-1),
                normalize(ref.get_text_features(**tok).pooler_output, dim=-1))


def test_a_siglip_pair_gives_the_librarys_vectors_scale_and_bias(siglip_folder):
    import crossalign
    from crossalign.config import load_config
    from crossalign.data.transforms import eval_transform
    from crossalign.models.dual import build_model
    from transformers import AutoTokenizer, SiglipImageProcessor, SiglipModel

    ref = SiglipModel.from_pretrained(siglip_folder).eval()
    # as the SigLIP docs say: padded to the model's length
    tok = AutoTokenizer.from_pretrained(siglip_folder)(TEXTS, padding="max_length", max_length=16,
                                                       truncation=True, return_tensors="pt")
    aligner = crossalign.load(f"hf:{siglip_folder}")
    model = aligner.model
    assert model.cfg.embed_dim == 32 and model.cfg.head == "none"
    assert model.image_tower.data_config["crop_mode"] == "squash"  # both sides to 32, no crop
    processor = SiglipImageProcessor.from_pretrained(siglip_folder)  # it resizes tensors: a grey level apart
    want = processor(_picture(), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(eval_transform(model.image_tower.data_config)(_picture()), want, rtol=0, atol=0.01)
    assert model.scale().item() == pytest.approx(SIGLIP_SCALE, rel=1e-6)
    assert float(model.logit_bias.detach()) == pytest.approx(SIGLIP_BIAS, rel=1e-6)
    ours = model.text_tower.tokenize(TEXTS)
    assert torch.equal(ours["input_ids"], tok["input_ids"]) and ours["input_ids"].shape == (3, 16)
    pixels = torch.randn(3, 3, 32, 32)
    want_i, want_t = _siglip_features(ref, pixels, tok)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), want_i, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(**ours), want_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aligner.encode_text(TEXTS), want_t.numpy(), rtol=1e-5, atol=1e-5)
    # the checkpoint's scale and bias win over the loss's, and loss=clip becomes siglip
    cfg = load_config(None, [f"model.pretrained_model=hf:{siglip_folder}", "loss.name=clip"])
    built = build_model(cfg.model, logit_start(cfg))
    assert float(built.logit_bias.detach()) == pytest.approx(SIGLIP_BIAS)
    assert loss_of(cfg.loss, built).name == "siglip"  # training settles the loss from the model
    assert built.scale().item() == pytest.approx(SIGLIP_SCALE, rel=1e-6)  # not siglip_scale_init
    with pytest.raises(ConfigError, match="pretrained_weights is for open_clip pairs"):
        crossalign.load(f"hf:{siglip_folder}", pretrained_weights="w.pt")


def test_a_siglip_pair_trains_with_its_bias_and_exports(siglip_folder, shapes_dir, tmp_path):
    from crossalign.runs import load_model
    from transformers import SiglipModel

    base = _base([f"model.pretrained_model=hf:{siglip_folder}"], tmp_path)
    zs, ft = tmp_path / "zs", tmp_path / "ft"
    _train(shapes_dir, zs, base + ["train.epochs=0"])
    (row,) = list(csv.DictReader(open(zs / "metrics.csv")))
    assert row["epoch"] == "0" and float(row["temperature"]) == pytest.approx(1 / SIGLIP_SCALE, rel=1e-5)
    assert float(load_model(zs)[0].logit_bias.detach()) == pytest.approx(SIGLIP_BIAS)  # the checkpoint's
    _train(shapes_dir, ft, base + ["train.epochs=1", "model.image.freeze=last:1", "model.text.freeze=frozen"])
    ref = SiglipModel.from_pretrained(siglip_folder)
    tuned, _ = load_model(ft)
    vm, was = tuned.image_tower.vision_model, ref.vision_model
    assert not torch.allclose(vm.encoder.layers[-1].mlp.fc1.weight, was.encoder.layers[-1].mlp.fc1.weight)
    assert not torch.allclose(vm.head.mlp.fc1.weight, was.head.mlp.fc1.weight)  # after the blocks
    torch.testing.assert_close(vm.encoder.layers[0].mlp.fc1.weight, was.encoder.layers[0].mlp.fc1.weight)
    for a, b in zip(tuned.text_tower.text_model.parameters(), ref.text_model.parameters()):
        torch.testing.assert_close(a, b)  # frozen: from the feature cache
    assert float(tuned.logit_bias.detach()) != pytest.approx(SIGLIP_BIAS, abs=1e-6)  # the sigmoid loss moved it
    assert any((tmp_path / "cache").rglob("*"))

    out = tmp_path / "exported"
    assert main(["-q", "export", str(ft), "--out", str(out)]) == 0
    back = SiglipModel.from_pretrained(out).eval()
    tok = tuned.text_tower.tokenize(TEXTS)
    pixels = torch.randn(2, 3, 32, 32)
    want_i, want_t = _siglip_features(back, pixels, tok)
    with torch.no_grad():
        torch.testing.assert_close(tuned.encode_image(pixels), want_i, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tuned.encode_text(**tok), want_t, rtol=1e-5, atol=1e-5)
    assert back.logit_scale.detach().exp().item() == pytest.approx(tuned.scale().detach().item(), rel=1e-6)
    assert float(back.logit_bias.detach()) == pytest.approx(float(tuned.logit_bias.detach()), rel=1e-6)


def _open_clip_ref(open_clip_files, weights=None):
    import open_clip

    config, default = open_clip_files
    open_clip.add_model_config(config)
    return open_clip.create_model(config.stem, pretrained=str(weights or default)).eval()


def _open_clip_features(ref, pixels, texts):
    import open_clip

    tok = open_clip.get_tokenizer("tiny-oc")(texts)
    with torch.no_grad():
        return ref.encode_image(pixels, normalize=True), ref.encode_text(tok, normalize=True)


def test_an_open_clip_pair_gives_the_librarys_vectors(open_clip_files):
    import crossalign
    import open_clip
    from crossalign.config import load_config
    from crossalign.data.transforms import eval_transform
    from crossalign.embed.onnx_text import onnx_supported
    from crossalign.explain.words import word_scores
    from crossalign.models.dual import build_model
    from crossalign.models.pretrained import PRETRAINED_KINDS, PRETRAINED_PREFIXES

    assert PRETRAINED_PREFIXES == ("hf", "open_clip") and set(PRETRAINED_KINDS) == set(PRETRAINED_PREFIXES)
    config, weights = open_clip_files
    aligner = crossalign.load(f"open_clip:{config}", pretrained_weights=str(weights))
    model = aligner.model
    assert model.cfg.embed_dim == 24 and model.logit_bias is None
    assert model.scale().item() == pytest.approx(OPEN_CLIP_SCALE, rel=1e-6)
    dc = model.image_tower.data_config
    assert dc["input_size"] == (3, 32, 32) and dc["crop_pct"] == 1.0 and "crop_mode" not in dc
    _lib, _train_tf, preprocess = open_clip.create_model_and_transforms(config.stem)
    assert torch.equal(eval_transform(dc)(_picture()), preprocess(_picture()))  # open_clip's own
    assert model.text_tower.tokenize(TEXTS)["text"].shape == (3, 16)  # the model's context length
    pixels = torch.randn(3, 3, 32, 32)
    want_i, want_t = _open_clip_features(_open_clip_ref(open_clip_files), pixels, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), want_i, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(**model.text_tower.tokenize(TEXTS)), want_t,
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aligner.encode_text(TEXTS), want_t.numpy(), rtol=1e-5, atol=1e-5)
    # last:N over the resblocks, the projection matrices (registered before them) included
    cfg = load_config(None, [f"model.pretrained_model=open_clip:{config}", f"model.pretrained_weights={weights}",
                             "model.image.freeze=last:1", "model.text.freeze=last:1"])
    built = build_model(cfg.model, logit_start(cfg))
    visual, text = built.image_tower.visual, built.text_tower.text
    assert visual.proj.requires_grad and text.text_projection.requires_grad
    assert all(p.requires_grad for p in visual.transformer.resblocks[-1].parameters())
    assert not any(p.requires_grad for p in visual.transformer.resblocks[0].parameters())
    assert not (visual.class_embedding.requires_grad or text.token_embedding.weight.requires_grad)
    # paths that need a transformers encoder's tokens say so
    assert "not a transformers encoder" in onnx_supported(model)
    with pytest.raises(ConfigError, match="no token embedding layer"):
        word_scores(model, "a red circle", want_i[0])
    with pytest.raises(ConfigError, match="pretrained_weights"):
        crossalign.load(f"open_clip:{config}")


def test_an_open_clip_pair_fine_tunes_mixes_and_exports(open_clip_files, shapes_dir, tmp_path):
    from crossalign.models.wise import wise, zero_shot_state
    from crossalign.runs import load_model

    config, weights = open_clip_files
    base = _base([f"model.pretrained_model=open_clip:{config}", f"model.pretrained_weights={weights}"], tmp_path)
    zs, ft = tmp_path / "zs", tmp_path / "ft"
    _train(shapes_dir, zs, base + ["train.epochs=0"])
    (row,) = list(csv.DictReader(open(zs / "metrics.csv")))
    assert row["epoch"] == "0" and float(row["temperature"]) == pytest.approx(1 / OPEN_CLIP_SCALE, rel=1e-5)
    _train(shapes_dir, ft, base + ["train.epochs=1", "model.image.freeze=frozen", "model.text.freeze=last:1"])
    ref = _open_clip_ref(open_clip_files)
    tuned, _ = load_model(ft)
    blocks, was = tuned.text_tower.text.transformer.resblocks, ref.transformer.resblocks
    assert not torch.allclose(blocks[-1].mlp.c_fc.weight, was[-1].mlp.c_fc.weight)
    assert not torch.allclose(tuned.text_tower.text.text_projection, ref.text_projection)  # a tail parameter
    torch.testing.assert_close(blocks[0].mlp.c_fc.weight, was[0].mlp.c_fc.weight)
    for a, b in zip(tuned.image_tower.visual.parameters(), ref.visual.parameters()):
        torch.testing.assert_close(a, b)  # frozen: from the feature cache

    zero, (zero_run, _) = zero_shot_state(tuned), load_model(zs)
    for k, v in zero_run.state_dict().items():
        assert torch.equal(zero[k], v), k  # the checkpoint as it was
    at0, at1 = wise(zero, tuned.state_dict(), 0.0), wise(zero, tuned.state_dict(), 1.0)
    for k, v in tuned.state_dict().items():
        assert torch.equal(at0[k], zero[k]) and torch.equal(at1[k], v), k

    out = tmp_path / "tuned.pt"
    assert main(["-q", "export", str(ft), "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert "text_projection" in saved and not any(k.startswith("text.") for k in saved)  # a plain CLIP's keys
    back = _open_clip_ref(open_clip_files, out)  # open_clip.create_model("tiny-oc", pretrained=out)
    pixels = torch.randn(2, 3, 32, 32)
    want_i, want_t = _open_clip_features(back, pixels, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(tuned.encode_image(pixels), want_i, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tuned.encode_text(**tuned.text_tower.tokenize(TEXTS)), want_t,
                                   rtol=1e-5, atol=1e-5)
    assert math.exp(back.logit_scale.item()) == pytest.approx(tuned.scale().item(), rel=1e-6)
    assert main(["-q", "export", str(ft), "--out", str(out)]) == 2  # an existing file is kept


def test_without_open_clip_a_pair_says_how_to_install_it(monkeypatch, open_clip_files):
    import crossalign

    config, weights = open_clip_files
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    with pytest.raises(ConfigError, match=r"pip install crossalign\[open_clip\]"):
        crossalign.load(f"open_clip:{config}", pretrained_weights=str(weights))
