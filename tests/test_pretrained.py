"""A pretrained CLIP pair (``model.pretrained_model=hf:FOLDER``): loaded as it is, measured zero-shot,
fine-tuned with the engine. No CLIP weights ship on PyPI, so the pair here is a tiny random
``CLIPModel`` saved with ``save_pretrained``, with a byte-level tokenizer of its own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossalign.cli.main import main

from _kill_runner import sets
from _tiny_clip import make_tiny_clip


def assert_same_figures(got: dict, want: dict, n_images: int = 60, n_captions: int = 300) -> None:
    """One model scored by two paths (cached features and a live tower, another batch): the
    scores agree to the last bits, so a near-tied query of these tiny random towers may rank
    either way; allow two such queries per figure (see tests/_ties.py)."""
    for key, n in (("t2i_R@1", n_captions), ("t2i_R@5", n_captions), ("i2t_R@1", n_images), ("i2t_R@5", n_images)):
        assert got[key] == pytest.approx(want[key], abs=200 / n + 1e-9), key
    for key, n in (("t2i_mean_rank", n_captions), ("i2t_mean_rank", n_images)):
        assert got[key] == pytest.approx(want[key], abs=2 * n_images / n + 1e-9), key


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_a_pair_gives_the_librarys_own_vectors(clip_folder):
    import crossalign
    from transformers import CLIPModel

    ref = CLIPModel.from_pretrained(clip_folder).eval()
    aligner = crossalign.load(f"hf:{clip_folder}")
    model = aligner.model
    assert model.cfg.embed_dim == 24 and model.cfg.head == "none"
    assert model.image_tower.data_config["input_size"] == (3, 32, 32)
    assert model.image_tower.data_config["crop_pct"] == pytest.approx(32 / 36)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(float(ref.logit_scale.detach().exp()), rel=1e-6)
    pixels = torch.randn(3, 3, 32, 32)
    texts = ["a red circle", "two blue squares on the left", "x"]
    tok = model.text_tower.tokenize(texts)
    def features(out):  # a tensor, or (transformers 5) an output whose pooler_output is projected
        return getattr(out, "pooler_output", out)

    with torch.no_grad():
        want_i = torch.nn.functional.normalize(features(ref.get_image_features(pixel_values=pixels)), dim=-1)
        want_t = torch.nn.functional.normalize(features(ref.get_text_features(**tok)), dim=-1)
        got_i = model.encode_image(pixels)
        got_t = model.encode_text(**tok)
    torch.testing.assert_close(got_i, want_i, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_t, want_t, rtol=1e-5, atol=1e-6)
    # the Aligner's text path tokenizes with the checkpoint's own tokenizer
    np.testing.assert_allclose(aligner.encode_text(texts), want_t.numpy(), rtol=1e-5, atol=1e-6)


def test_a_pair_is_measured_zero_shot_then_fine_tuned(clip_folder, shapes_dir, tmp_path):
    base = [f"model.pretrained_model=hf:{clip_folder}", "train.tensorboard=false", "train.batch_size=32",
            f"cache.dir={tmp_path / 'cache'}", "train.lr=1e-3"]
    zs, ft = tmp_path / "zero-shot", tmp_path / "fine-tuned"
    # zero-shot: no step, the checkpoint measured as it is (epoch 0), the baseline of a fine-tune
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(zs), *sets(base + ["train.epochs=0"])]) == 0
    assert main(["-q", "evaluate", str(zs), "--split", "test", "--json", str(tmp_path / "zs.json")]) == 0
    # the pair itself, no run folder: the same figures on the data's own split
    assert main(["-q", "evaluate", f"hf:{clip_folder}", "--data", str(shapes_dir), "--split", "test",
                 "--json", str(tmp_path / "pair.json")]) == 0
    by_run, by_pair = (json.loads((tmp_path / f).read_text()) for f in ("zs.json", "pair.json"))
    for key in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5", "t2i_mean_rank", "i2t_mrr"):
        assert by_pair[key] == pytest.approx(by_run[key], abs=1e-9), key
    assert main(["-q", "evaluate", f"hf:{clip_folder}", "--split", "test"]) == 2  # no data of its own
    (row,) = list(csv.DictReader(open(zs / "metrics.csv")))
    assert row["epoch"] == "0" and float(row["temperature"]) == pytest.approx(np.exp(-3.0), rel=1e-5)
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(ft),
                 *sets(base + ["train.epochs=2", "model.image.freeze=last:1", "model.text.freeze=frozen"])]) == 0
    assert main(["-q", "evaluate", str(ft), "--split", "test", "--json", str(tmp_path / "ft.json")]) == 0
    tuned_m, zero_m = (json.loads((tmp_path / f).read_text()) for f in ("ft.json", "zs.json"))
    assert set(tuned_m) == set(zero_m)  # the same figures, side by side
    assert f"pretrained_model: hf:{clip_folder}" in (ft / "config.yaml").read_text()  # resolved when built
    from crossalign.runs import load_model
    from transformers import CLIPModel

    ref = CLIPModel.from_pretrained(clip_folder)
    model, _ = load_model(ft)
    assert model.cfg.image.tower == f"clip_image:{clip_folder}" and model.cfg.head == "none"
    assert model.cfg.image.dropout == model.cfg.text.dropout == 0.0  # no head to regularise
    tuned = model.image_tower.vision_model.encoder.layers[-1].mlp.fc1.weight
    first = model.image_tower.vision_model.encoder.layers[0].mlp.fc1.weight
    assert not torch.allclose(tuned, ref.vision_model.encoder.layers[-1].mlp.fc1.weight)  # it trained
    torch.testing.assert_close(first, ref.vision_model.encoder.layers[0].mlp.fc1.weight)  # it stayed
    torch.testing.assert_close(model.text_tower.projection.weight, ref.text_projection.weight)
    zero, _ = load_model(zs)
    for a, b in zip(zero.image_tower.parameters(), ref.vision_model.parameters()):
        torch.testing.assert_close(a, b)  # nothing trained


def test_zeroshot_classifies_with_a_pair_as_it_is(clip_folder, shapes_dir, labelled_shapes, tmp_path):
    from crossalign.evaluate.zeroshot import zeroshot

    zs = tmp_path / "zs"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(zs),
                 *sets([f"model.pretrained_model=hf:{clip_folder}", "train.epochs=0", "train.tensorboard=false",
                        f"cache.dir={tmp_path / 'cache'}"])]) == 0
    by_run = zeroshot(zs, labelled_shapes, "colour", split="all", progress=False)
    by_pair = zeroshot(f"hf:{clip_folder}", labelled_shapes, "colour", split="all", progress=False)
    assert by_pair["n_items"] == by_run["n_items"] == 60 and by_pair["n_classes"] >= 2
    assert by_pair["accuracy"] == pytest.approx(by_run["accuracy"], abs=1e-9)
    assert by_pair["confusion"] == by_run["confusion"]
    out = tmp_path / "zs.json"
    assert main(["-q", "zeroshot", f"hf:{clip_folder}", "--data", str(labelled_shapes), "--label-column",
                 "colour", "--split", "all", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(by_pair["accuracy"], abs=1e-9)


def test_wise_ends_are_the_two_weights_and_a_fine_tune_exports(clip_folder, shapes_dir, labelled_shapes,
                                                               tmp_path):
    from crossalign.models.wise import wise, zero_shot_state
    from crossalign.runs import load_model
    from transformers import CLIPModel

    base = [f"model.pretrained_model=hf:{clip_folder}", "train.tensorboard=false", "train.batch_size=32",
            f"cache.dir={tmp_path / 'cache'}", "train.lr=1e-3"]
    zs, ft = tmp_path / "zs", tmp_path / "ft"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(zs), *sets(base + ["train.epochs=0"])]) == 0
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(ft),
                 *sets(base + ["train.epochs=1", "model.image.freeze=last:1", "model.text.freeze=last:1"])]) == 0
    tuned, _ = load_model(ft)
    zero = zero_shot_state(tuned)
    ref, _ = load_model(zs)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(zero[k], v, rtol=0, atol=0)  # the checkpoint as it was
    at0, at1 = wise(zero, tuned.state_dict(), 0.0), wise(zero, tuned.state_dict(), 1.0)
    half = wise(zero, tuned.state_dict(), 0.5)
    for k, v in tuned.state_dict().items():
        assert torch.equal(at0[k], zero[k]) and torch.equal(at1[k], v)
        torch.testing.assert_close(half[k], (zero[k] + v) / 2) if v.is_floating_point() else None
    # train.wise_alpha: model_best is the ensemble, model_finetuned the fine-tune; a resume of the
    # finished run leaves the ensemble as it is
    ens = tmp_path / "ens"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(ens),
                 *sets(base + ["train.epochs=1", "model.image.freeze=last:1", "model.text.freeze=last:1",
                               "train.wise_alpha=0.5"])]) == 0
    fine, _ = load_model(ens, "finetuned")
    mixed, _ = load_model(ens)
    for k, v in fine.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, tuned.state_dict()[k], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(mixed.state_dict()[k], (zero[k] + v) / 2)
    assert main(["-q", "train", "--resume", str(ens)]) == 0
    for k, v in load_model(ens)[0].state_dict().items():
        assert torch.equal(v, mixed.state_dict()[k]), k
    # evaluate --wise: alpha 0 scores as the zero-shot run, alpha 1 as the fine-tune
    for run, name in ((zs, "zs"), (ft, "ft")):
        assert main(["-q", "evaluate", str(run), "--split", "test", "--json", str(tmp_path / f"{name}.json")]) == 0
    assert main(["-q", "evaluate", str(ft), "--split", "test", "--wise", "0,0.5,1",
                 "--json", str(tmp_path / "wise.json")]) == 0
    sweep = json.loads((tmp_path / "wise.json").read_text())["wise"]
    assert list(sweep) == ["0", "0.5", "1"]
    for alpha, name in (("0", "zs"), ("1", "ft")):
        assert_same_figures(sweep[alpha], json.loads((tmp_path / f"{name}.json").read_text()))
    # a second data set the run never trained on: all of it, alpha 0 is the pair as it is
    assert main(["-q", "evaluate", str(ft), "--split", "test", "--wise", "0,1", "--wise-data",
                 str(labelled_shapes), "--json", str(tmp_path / "wise2.json")]) == 0
    second = json.loads((tmp_path / "wise2.json").read_text())["wise_pools"]["second"]
    assert second["split"] == "all" and list(second["alphas"]) == ["0", "1"]
    assert main(["-q", "evaluate", f"hf:{clip_folder}", "--data", str(labelled_shapes), "--split", "all",
                 "--json", str(tmp_path / "pair2.json")]) == 0
    assert_same_figures(second["alphas"]["0"], json.loads((tmp_path / "pair2.json").read_text()))
    assert main(["-q", "evaluate", str(ft), "--wise-data", str(labelled_shapes)]) == 2  # needs --wise
    # the report puts the fine-tune's zero-shot baseline beside it, scored on the run's split
    from crossalign.report.build import report

    res = report([ft], shapes_dir, tmp_path / "report.html", k=4, explain=0, progress=False)
    assert list(res.metrics) == ["ft", "ft (zero-shot)"]
    assert_same_figures(res.metrics["ft (zero-shot)"], json.loads((tmp_path / "zs.json").read_text()))
    assert res.metrics["ft (zero-shot)"] != res.metrics["ft"]
    assert "ft (zero-shot)" in (tmp_path / "report.html").read_text()
    # export: transformers loads the fine-tune back and embeds as the run does
    out = tmp_path / "exported"
    assert main(["-q", "export", str(ft), "--out", str(out)]) == 0
    back = CLIPModel.from_pretrained(out).eval()
    pixels = torch.randn(2, 3, 32, 32)
    tok = tuned.text_tower.tokenize(["a red circle", "two blue squares"])
    tuned.eval()

    def features(o):
        return torch.nn.functional.normalize(getattr(o, "pooler_output", o), dim=-1)

    with torch.no_grad():
        torch.testing.assert_close(features(back.get_image_features(pixel_values=pixels)),
                                   tuned.encode_image(pixels), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(features(back.get_text_features(**tok)), tuned.encode_text(**tok),
                                   rtol=1e-5, atol=1e-6)
    assert float(back.logit_scale.detach().exp()) == pytest.approx(float(tuned.scale().detach()), rel=1e-6)
    assert main(["-q", "export", str(ft), "--out", str(out)]) == 2  # an existing folder is kept


def test_wise_and_export_refuse_a_run_that_is_no_pair():
    from crossalign.config import ImageTowerConfig, ModelConfig, TextTowerConfig
    from crossalign.errors import ConfigError
    from crossalign.models.dual import build_model
    from crossalign.models.wise import zero_shot_state

    model = build_model(ModelConfig(image=ImageTowerConfig(tower="small_cnn", width=8, image_size=32),
                                    text=TextTowerConfig(tower="lstm", width=8, vocab_size=32)))
    with pytest.raises(ConfigError, match="need the run of a pretrained model"):
        zero_shot_state(model)
