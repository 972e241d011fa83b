"""Tower options beyond the contract: pooling, chunked long texts, local weights, heads,
learning rates, the ``models`` command, and whole runs with from-scratch towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crossalign
from crossalign.config import ImageTowerConfig, ModelConfig, TextTowerConfig, load_config
from crossalign.models.dual import build_model, make_head
from crossalign.models.registry import list_models
from test_towers_contract import TEXTS, WORDS, _one_thread, tiny_bert  # noqa: F401  (fixtures)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_hf_pooling(tiny_bert, pooling):
    from crossalign.models.registry import create
    from crossalign.models.text import masked_mean

    t = create(f"hf:{tiny_bert}", pooling=pooling).eval()
    assert (t.model.pooler is not None) == (pooling == "pooler")  # an unused pooler is dropped
    tok = t.tokenize(TEXTS)
    with torch.no_grad():
        hidden = t.model(**tok).last_hidden_state  # [3, tokens, 32]
        want = {"mean": lambda: masked_mean(hidden, tok["attention_mask"]), "cls": lambda: hidden[:, 0],
                "pooler": lambda: t.model.pooler(hidden)}[pooling]()
        torch.testing.assert_close(t(**tok), want)


def test_chunk_long_averages_windows_instead_of_truncating(tiny_bert):
    from crossalign.models.registry import create

    long_text = " ".join(WORDS)  # 18 words: 3 windows of 6 words between [CLS] and [SEP]
    t = create(f"hf:{tiny_bert}", max_tokens=8, chunk_long=True).eval()
    plain = create(f"hf:{tiny_bert}", max_tokens=8).eval()
    tok = t.tokenize(["a red circle", long_text])
    assert tok["chunk_owner"].tolist() == [0, 1, 1, 1]
    with torch.no_grad():
        feats = t(**tok)  # [2, 32]
        windows = [" ".join(WORDS[i:i + 6]) for i in range(0, 18, 6)]
        want = plain(**plain.tokenize(windows)).mean(0)
        torch.testing.assert_close(feats[1], want)
        # a text that fits gives what truncation gives
        torch.testing.assert_close(feats[0], plain(**plain.tokenize(["a red circle"]))[0])
        truncated = plain(**plain.tokenize([long_text]))[0]
    assert not torch.allclose(feats[1], truncated)
    with pytest.raises(ValueError, match="chunk_long"):  # RunConfig.validate, as the config resolves
        load_config(None, [f"model.text.tower=hf:{tiny_bert}", "model.text.chunk_long=true",
                           "model.text.freeze=last:1"])


def test_sentence_transformers_folder_loads_as_hf():
    from crossalign.models.registry import create
    from crossalign.models.text import minilm_path

    a, b = create(f"hf:{minilm_path()}").eval(), create("minilm").eval()
    with torch.no_grad():
        torch.testing.assert_close(a(**a.tokenize(TEXTS)), b(**b.tokenize(TEXTS)))


def test_timm_weights_from_a_file_or_a_folder(tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.models import save_for_hf

    from crossalign.models.registry import create

    torch.manual_seed(1)
    src = timm.create_model("test_resnet", pretrained=False).eval()
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    save_for_hf(src, str(tmp_path / "folder"), safe_serialization=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = src.forward_head(src.forward_features(x), pre_logits=True)
        for ckpt in (tmp_path / "w.safetensors", tmp_path / "folder"):
            t = create("timm:test_resnet", checkpoint=str(ckpt)).eval()
            torch.testing.assert_close(t(x), want)
    with pytest.raises(FileNotFoundError):
        create("timm:test_resnet", checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="no model"):
        create("timm:not_a_model")


def test_backbone_lr_applies_to_towers_and_lr_to_heads():
    from crossalign.config import load_config
    from crossalign.train.engine import _optimizer

    cfg = load_config(None, ["model.image.tower=small_cnn", "model.image.width=16", "model.text.tower=lstm",
                             "model.text.width=16", "model.text.freeze=last:1", "train.lr=0.01",
                             "train.backbone_lr=0.001"])
    model = build_model(cfg.model)
    opt = _optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in lr_of, name
        else:
            assert lr_of[id(p)] == (0.001 if name.startswith(("image_tower.", "text_tower.")) else 0.01), name
    assert opt.param_groups[0]["lr"] == 0.01  # what the logs report


def test_models_list_command(capsys):
    import json

    from crossalign.cli.main import main

    assert main(["towers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(list_models()) <= set(rows) and "timm:<name>" in rows and "hf:<name>" in rows
    assert rows["minilm"]["width"] == 384 and rows["minilm"]["weights"] == "offline"
    assert rows["efficientnet_lite0"]["width"] == 1280 and rows["lstm"]["weights"] == "from scratch"
    assert rows["small_cnn"]["params"] == sum(p.numel() for p in build_model(ModelConfig(
        image=ImageTowerConfig(tower="small_cnn"), text=TextTowerConfig(tower="lstm"))).image_tower.parameters())
    assert rows["hf:"]["modality"] == rows["open_clip:"]["modality"] == "pretrained"
    assert "pretrained_weights" in rows["open_clip:"]["description"]
    assert main(["towers"]) == 0
    listed = capsys.readouterr().out
    assert "pretrained models" in listed and "open_clip:NAME" in listed
    assert main(["towers", "timm:test_vit"]) == 0 and "width" in capsys.readouterr().out
    assert main(["towers", "no_such_tower"]) == 2


@pytest.mark.parametrize("sets", [
    ["model.image.tower=small_cnn", "model.text.tower=lstm"],
    ["model.image.tower=small_cnn", "model.image.freeze=last:2", "model.text.tower=transformer",
     "model.text.freeze=last:1"],
])
def test_train_from_scratch_towers_end_to_end(tmp_path, shapes_dir, sets):
    from crossalign.cli.main import main

    run = tmp_path / "run"
    tiny = ["model.image.width=16", "model.image.image_size=32", "model.text.width=16", "model.text.vocab_size=64",
            "train.epochs=2", "train.batch_size=32", "train.tensorboard=false"]
    argv = ["-q", "train", "--data", str(shapes_dir), "--out", str(run)]
    for s in sets + tiny:
        argv += ["--set", s]
    assert main(argv) == 0
    assert (run / "text_vocab.json").is_file()
    aligner = crossalign.load(run)
    assert aligner.cfg.model.text.freeze in ("trainable", "last:1")  # auto resolved for a from-scratch tower
    emb = aligner.encode_text(["a red circle", "a red circle", "two blue squares"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[1])
    img = aligner.encode_image(shapes_dir / "images" / "scene_00000.png")
    assert img.shape == (1, 256)


def test_heads():
    cfg = ModelConfig(embed_dim=8, head="mlp", head_hidden=12, head_dropout=0.2)
    mlp = make_head(5, cfg)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "GELU", "Dropout", "Linear"] and mlp[2].p == 0.2
    assert (mlp[0].in_features, mlp[0].out_features, mlp[3].out_features) == (5, 12, 8)
    assert isinstance(make_head(5, ModelConfig(embed_dim=8)), torch.nn.Linear)
    assert isinstance(make_head(8, ModelConfig(embed_dim=8, head="none")), torch.nn.Identity)
    with pytest.raises(ValueError, match="width"):
        make_head(5, ModelConfig(embed_dim=8, head="none"))
