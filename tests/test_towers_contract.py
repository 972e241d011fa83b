"""One contract over every tower the registry can build (timm's test_models.py, in small).

Hub-only names use tiny randomly initialised configs, since nothing may download: timm's own
``test_*`` networks and ResNet-18 at 32 px, a two-layer BERT written to a temp folder, and tiny
CLIP models (a Hugging Face folder, an open_clip model-config JSON with its weights file).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import crossalign
from crossalign.config import ImageTowerConfig, ModelConfig, RunConfig, TextTowerConfig, save_config
from crossalign.data.transforms import eval_transform
from crossalign.models.dual import DualEncoder, apply_freeze, build_model
from crossalign.models.registry import list_models, list_prefixes
from crossalign.train.checkpoint import save_model

TEXTS = ["a red circle", "two blue squares beside a big green triangle on the left of a small circle", ""]
WORDS = "a the red blue green yellow big small circle circles square squares triangle two three on left of".split()
HF_TINY = "hf:TINY"  # replaced by the tiny BERT folder
CLIP_TINY = "TINYCLIP"  # replaced by the tiny CLIP folder
SIGLIP_TINY = "SIGLIPFOLDER"  # replaced by the tiny SigLIP folder
OC_TINY, OC_WEIGHTS = "OCTINY.json", "OCWEIGHTS"  # replaced by the tiny open_clip config and weights

# split: False where the tower cannot cut its forward pass (an architecture it has no layout for)
IMAGE_CASES = {
    "efficientnet_lite0": dict(tower="efficientnet_lite0", pretrained=False, image_size=32),
    "efficientnet_lite1": dict(tower="efficientnet_lite1", pretrained=False, image_size=32),
    "efficientnet_lite2": dict(tower="efficientnet_lite2", pretrained=False, image_size=32),
    "small_cnn": dict(tower="small_cnn", width=32, image_size=32),
    "timm:resnet18": dict(tower="timm:resnet18", pretrained=False, image_size=32),
    "timm:test_vit": dict(tower="timm:test_vit", pretrained=False, image_size=32),
    "timm:test_efficientnet": dict(tower="timm:test_efficientnet", pretrained=False, image_size=32),
    "timm:test_convnext": dict(tower="timm:test_convnext", pretrained=False, image_size=32),
    "timm:test_byobnet": dict(tower="timm:test_byobnet", pretrained=False, image_size=64, split=False),
    "clip_image": dict(tower=f"clip_image:{CLIP_TINY}", split=False),
    "clip_image-siglip": dict(tower=f"clip_image:{SIGLIP_TINY}", split=False),
    "open_clip_image": dict(tower=f"open_clip_image:{OC_TINY}", checkpoint=OC_WEIGHTS, split=False),
}
TEXT_CASES = {
    "minilm": dict(tower="minilm", max_tokens=32),
    "lstm": dict(tower="lstm", vocab_size=32, width=32),
    "transformer": dict(tower="transformer", vocab_size=32, width=32, layers=3),
    HF_TINY: dict(tower=HF_TINY),
    "hf:TINY-cls": dict(tower=HF_TINY, pooling="cls"),
    "hf:TINY-pooler": dict(tower=HF_TINY, pooling="pooler"),
    "clip_text": dict(tower=f"clip_text:{CLIP_TINY}", split=False),
    "clip_text-siglip": dict(tower=f"clip_text:{SIGLIP_TINY}", split=False),
    "open_clip_text": dict(tower=f"open_clip_text:{OC_TINY}", checkpoint=OC_WEIGHTS, split=False),
}
CASES = {**{k: ("image", v) for k, v in IMAGE_CASES.items()}, **{k: ("text", v) for k, v in TEXT_CASES.items()}}
PARTNER = {"image": dict(tower="small_cnn", width=16, image_size=32),
           "text": dict(tower="lstm", vocab_size=32, width=16)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: thread start-up and spinning would cost more than the arithmetic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_CLIP: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def tiny_clip(tmp_path_factory) -> str:
    from _tiny_clip import make_tiny_clip

    _CLIP["folder"] = str(make_tiny_clip(tmp_path_factory.mktemp("tiny-clip")))
    return _CLIP["folder"]


@pytest.fixture(scope="module", autouse=True)
def tiny_pairs(tmp_path_factory) -> None:
    from _tiny_clip import make_tiny_open_clip, make_tiny_siglip

    _CLIP["siglip"] = str(make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip")))
    config, weights = make_tiny_open_clip(tmp_path_factory.mktemp("tiny-open-clip"))
    _CLIP["open_clip"], _CLIP["open_clip_weights"] = str(config), str(weights)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A two-layer BERT with a word-piece vocabulary, saved the way the hub lays it out."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [",", "."]
    try:
        tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    except TypeError:  # transformers 4 takes a vocabulary file
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tok = BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return str(folder)


def _side_cfg(modality: str, case: dict, tiny_bert: str) -> ImageTowerConfig | TextTowerConfig:
    kw = {k: v for k, v in case.items() if k != "split"}
    kw["tower"] = (kw["tower"].replace(CLIP_TINY, _CLIP.get("folder", CLIP_TINY))
                   .replace(SIGLIP_TINY, _CLIP.get("siglip", SIGLIP_TINY))
                   .replace(OC_TINY, _CLIP.get("open_clip", OC_TINY)).replace("TINY", tiny_bert))
    if kw.get("checkpoint") == OC_WEIGHTS:
        kw["checkpoint"] = _CLIP.get("open_clip_weights", OC_WEIGHTS)
    return (ImageTowerConfig if modality == "image" else TextTowerConfig)(**kw)


def build(name: str, tiny_bert: str, freeze: str = "trainable") -> tuple[DualEncoder, ModelConfig]:
    """The case's tower on its side, a tiny partner on the other, 16-d heads."""
    modality, case = CASES[name]
    other = "text" if modality == "image" else "image"
    sides = {modality: _side_cfg(modality, case, tiny_bert), other: _side_cfg(other, PARTNER[other], tiny_bert)}
    sides[modality].freeze = freeze
    cfg = ModelConfig(image=sides["image"], text=sides["text"], embed_dim=16)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.text_tower.fit_vocabulary(TEXTS) if hasattr(model.text_tower, "fit_vocabulary") else None
    return model, cfg


def pil_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 50), (64, 48), (33, 33))]


def tower_inputs(model: DualEncoder, modality: str) -> dict[str, torch.Tensor]:
    if modality == "image":
        tf = eval_transform(model.image_tower.data_config)
        return {"pixels": torch.stack([tf(im) for im in pil_images()])}
    return model.text_tower.tokenize(TEXTS)


def tower(model: DualEncoder, modality: str) -> torch.nn.Module:
    return model.image_tower if modality == "image" else model.text_tower


def encode(model: DualEncoder, modality: str, inputs: dict) -> torch.Tensor:
    return model.encode_image(inputs["pixels"]) if modality == "image" else model.encode_text(**inputs)


def test_every_registered_tower_has_a_case():
    covered = {c["tower"] for _, c in CASES.values()}
    assert set(list_models()) <= covered, set(list_models()) - covered
    for prefix in list_prefixes():
        assert any(t.startswith(prefix + ":") for t in covered), prefix


@pytest.mark.parametrize("name", list(CASES))
def test_output_width_and_normalised_embeddings(name, tiny_bert):
    modality, _ = CASES[name]
    model, _ = build(name, tiny_bert)
    model.eval()
    inputs = tower_inputs(model, modality)
    t = tower(model, modality)
    with torch.no_grad():
        feats = t(**inputs)
        emb = encode(model, modality, inputs)
    assert feats.shape == (3, t.width) and torch.isfinite(feats).all()
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert t.modality == modality and isinstance(t.name, str) and t.blocks()


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_reach_trainable_parameters_only(name, tiny_bert):
    modality, _ = CASES[name]
    model, _ = build(name, tiny_bert)
    t = tower(model, modality)
    inputs = tower_inputs(model, modality)
    weight = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    for spec in ("trainable", "last:1", "frozen"):
        apply_freeze(t, spec)
        model.train()
        model.zero_grad(set_to_none=True)
        (encode(model, modality, inputs) * weight).sum().backward()
        params = dict(t.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        assert (spec == "frozen") == (not trainable), spec
        no_grad = sorted(n for n in trainable if params[n].grad is None)
        assert not no_grad, f"{spec}: trainable parameters without a gradient: {no_grad[:5]}"
        leaked = sorted(n for n in set(params) - trainable if params[n].grad is not None)
        assert not leaked, f"{spec}: frozen parameters with a gradient: {leaked[:5]}"
        assert any(params[n].grad.abs().sum() > 0 for n in trainable) or spec == "frozen"


@pytest.mark.parametrize("name", list(CASES))
def test_last_n_unfreezes_exactly_n_blocks(name, tiny_bert):
    modality, _ = CASES[name]
    model, _ = build(name, tiny_bert)
    t = tower(model, modality)
    blocks = t.blocks()
    first_block_param = next(p for b in blocks for p in b.parameters())
    tail = getattr(t, "tail_parameters", list)()  # after the blocks, registered before them
    stem = []  # the rest of what is registered before the first block: never trained by last:N
    for p in t.parameters():
        if p is first_block_param:
            break
        stem.append(p) if not any(p is q for q in tail) else None
    for n in sorted({0, 1, 2, len(blocks)} & set(range(len(blocks) + 1))):
        apply_freeze(t, f"last:{n}")
        for i, b in enumerate(blocks):
            flags = {p.requires_grad for p in b.parameters()}
            assert flags <= {i >= len(blocks) - n}, (n, i)
        assert not any(p.requires_grad for p in stem), n
        assert all(p.requires_grad == (n > 0) for p in tail), n
        # frozen parts keep their batch-norm statistics and dropout off in training mode
        model.train()
        for m in t.modules():
            ps = list(m.parameters())
            if ps and not any(p.requires_grad for p in ps):
                assert not m.training, (n, type(m).__name__)
    with pytest.raises(ValueError):
        apply_freeze(t, f"last:{len(blocks) + 1}")


@pytest.mark.parametrize("name", list(CASES))
def test_prefix_then_suffix_equals_forward(name, tiny_bert):
    modality, case = CASES[name]
    model, _ = build(name, tiny_bert)
    model.eval()
    t = tower(model, modality)
    assert t.supports_split == case.get("split", True)
    inputs = tower_inputs(model, modality)
    blocks = t.blocks()
    calls = []
    hooks = [b.register_forward_hook(lambda *_: calls.append(1)) for b in blocks]
    with torch.no_grad():
        full = t(**inputs)  # [3, width]
        for n in sorted({0, 1, len(blocks)}):
            prefix = t.forward_prefix(**inputs, n_last=n)
            calls.clear()
            torch.testing.assert_close(t.forward_suffix(prefix, n_last=n), full, atol=1e-5, rtol=1e-4)
            if t.supports_split:
                assert len(calls) == n, f"suffix of last:{n} ran {len(calls)} blocks"
            # a cache holds one item at a time, padding trimmed: the suffix must not care
            for i in range(3 if n == 1 else 0):
                keep = int(prefix["attention_mask"][i].sum()) if "attention_mask" in prefix else None
                item = {k: v[i:i + 1, :keep] if keep is not None and v.dim() > 1 else v[i:i + 1]
                        for k, v in prefix.items()}
                torch.testing.assert_close(t.forward_suffix(item, n_last=n)[0], full[i], atol=1e-5, rtol=1e-4)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("name", list(CASES))
def test_save_then_load_gives_identical_embeddings(name, tiny_bert, tmp_path, monkeypatch):
    modality, _ = CASES[name]
    model, cfg = build(name, tiny_bert, freeze="last:1")
    with torch.no_grad():  # weights no source could give back: they must come from the checkpoint
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_config(RunConfig(model=cfg), tmp_path / "config.yaml")
    save_model(model, tmp_path / "model_best.safetensors")
    model.eval()
    with torch.no_grad():
        img = model.encode_image(tower_inputs(model, "image")["pixels"]).numpy()
        txt = model.encode_text(**tower_inputs(model, "text")).numpy()

    def no_pickle(*a, **k):
        raise AssertionError("loading a run must not unpickle anything")

    monkeypatch.setattr(torch, "load", no_pickle)
    aligner = crossalign.load(tmp_path)
    np.testing.assert_array_equal(aligner.encode_image(pil_images()), img)
    np.testing.assert_array_equal(aligner.encode_text(TEXTS), txt)
    assert {p.suffix for p in tmp_path.iterdir()} <= {".safetensors", ".json", ".yaml"}


def test_frozen_pretrained_tower_comes_back_from_its_source(tmp_path):
    cfg = ModelConfig(image=ImageTowerConfig(tower="small_cnn", width=16, image_size=32),
                      text=TextTowerConfig(tower="minilm", max_tokens=32), embed_dim=16)
    model = build_model(cfg)
    assert cfg.text.freeze == "frozen" and cfg.image.freeze == "trainable"  # auto, resolved
    save_config(RunConfig(model=cfg), tmp_path / "config.yaml")
    save_model(model, tmp_path / "model_best.safetensors")
    from safetensors.torch import load_file

    assert not any(k.startswith("text_tower.") for k in load_file(str(tmp_path / "model_best.safetensors")))
    with torch.no_grad():
        want = model.eval().encode_text(**model.text_tower.tokenize(TEXTS)).numpy()
    np.testing.assert_allclose(crossalign.load(tmp_path).encode_text(TEXTS), want, atol=1e-6)


def test_word_vocabulary_is_built_from_captions_and_saved_as_json(tmp_path):
    from crossalign.models.registry import create

    t = create("lstm", vocab_size=6, width=8)
    with pytest.raises(RuntimeError, match="vocabulary"):
        t.tokenize(["a dog"])
    t.fit_vocabulary(["a dog, a cat", "A dog runs"])
    assert t.vocab.words == ["<pad>", "<unk>", "a", "dog", ",", "cat"]  # by count, then alphabet
    tok = t.tokenize(["a dog runs", ""])
    assert tok["input_ids"].tolist() == [[2, 3, 1], [1, 0, 0]]  # unknown word -> 1, padding -> 0
    t.save_extras(tmp_path)
    u = create("lstm", vocab_size=6, width=8)
    u.load_extras(tmp_path)
    assert u.vocab.words == t.vocab.words and u.preprocess_config() == t.preprocess_config()
    with pytest.raises(FileNotFoundError, match="vocabulary"):
        u.load_extras(tmp_path / "elsewhere")

