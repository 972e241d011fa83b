"""LiT-style training: cached frozen tower, cached prefix of a partly trained tower, cached views."""

import numpy as np
import torch

from crossalign.config import load_config
from crossalign.data.prepare import prepare_table
from crossalign.distributed import DistInfo
from crossalign.train.engine import run_engine

SETS = ["model.text.freeze=last:1", "augment.image=true", "augment.text=true", "augment.synonym_prob=0",
        "augment.cached_views=2", "train.batch_size=32", "train.tensorboard=false"]


def test_prefix_cache_and_views(tmp_path, shapes_dir):
    cfg = load_config(None, SETS)
    table, problems = prepare_table(shapes_dir, cfg.data)
    eng = run_engine(tmp_path, cfg, table, problems, DistInfo(), progress=False)
    assert eng.images.mode == "features" and eng.texts.mode == "prefix"
    n_img = len(eng.images.ids)
    assert eng.images.feats.shape == (3, n_img, eng.model.image_tower.width)  # clean + 2 views
    assert len(eng.texts.prefix) == 3  # the clean captions and two augmented views
    # an augmented view differs from the clean image
    assert not torch.allclose(eng.images.feats.view(1), eng.images.feats.view(0))
    # prefix (cached) + suffix equals running the whole tower
    eng.model.eval()
    rows = np.arange(8)
    with torch.no_grad():
        via_cache = eng.texts.train_embed(rows)
        tok = eng.model.text_tower.tokenize([eng.texts.captions[r] for r in rows])
        direct = eng.model.encode_text(**tok)
    assert torch.allclose(via_cache, direct, atol=1e-5)
    # views: fixed per (epoch, sample), and they vary across epochs
    v1 = [eng.images._view(1, s) for s in range(50)]
    assert v1 == [eng.images._view(1, s) for s in range(50)]
    assert v1 != [eng.images._view(2, s) for s in range(50)]
    # a training epoch runs and only the last text layer and the heads change
    before = {k: v.clone() for k, v in eng.model.state_dict().items()}
    loss = eng.train_epoch(_NullLogger(), eng.gen.get_state())
    assert np.isfinite(loss)
    changed = {k for k, v in eng.model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("text_head") for k in changed) and any(k.startswith("image_head") for k in changed)
    assert all(not k.startswith("image_tower") for k in changed)
    text_changed = {k for k in changed if k.startswith("text_tower")}
    last = len(eng.model.text_tower.blocks()) - 1
    assert text_changed and all(f"layer.{last}." in k for k in text_changed), sorted(text_changed)[:3]


class _NullLogger:
    def step(self, row):
        pass

    def flush_steps(self):
        pass


def test_length_chunks_cover_every_position_once_shortest_first():
    from crossalign.train.sides import length_chunks

    lengths = [5, 1, 9, 3, 3, 7, 2]
    groups = length_chunks(lengths, 3)
    assert [len(g) for g in groups] == [3, 3, 1]
    flat = np.concatenate(groups)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)


def _embed_and_grads(eng, rows, weights):
    eng.model.zero_grad()
    emb = eng.texts.train_embed(rows)  # [n, embed_dim]
    (emb * weights).sum().backward()
    grads = {k: p.grad.clone() for k, p in eng.model.text_tower.named_parameters() if p.grad is not None}
    return emb.detach(), grads


def test_a_steps_captions_run_in_length_groups_with_the_same_result(tmp_path, shapes_dir, monkeypatch):
    """A step's captions go through the text tower in groups of similar length (less padding);
    the embeddings and the gradients are those of one padded batch, in the rows' order."""
    from crossalign.train import sides

    table, problems = prepare_table(shapes_dir, load_config(None, SETS).data)
    for freeze in ("last:1", "trainable"):  # the cached prefix, and the whole tower each step
        cfg = load_config(None, SETS + [f"model.text.freeze={freeze}"])
        eng = run_engine(tmp_path / freeze.replace(":", ""), cfg, table, problems, DistInfo(), progress=False)
        assert eng.texts.mode == ("prefix" if freeze == "last:1" else "raw")
        eng.model.eval()  # no dropout: the two paths must agree
        rows = np.random.default_rng(0).permutation(len(eng.texts.captions))[:40]
        lengths = {len(eng.texts.captions[r].split()) for r in rows}
        assert len(lengths) > 3, lengths  # captions of several lengths, so the groups pad differently
        weights = torch.randn(len(rows), eng.model.cfg.embed_dim, generator=torch.Generator().manual_seed(1))
        monkeypatch.setattr(sides, "TEXT_CHUNK", 10**6)
        whole, whole_grads = _embed_and_grads(eng, rows, weights)
        monkeypatch.setattr(sides, "TEXT_CHUNK", 6)
        grouped, grouped_grads = _embed_and_grads(eng, rows, weights)
        assert torch.allclose(grouped, whole, atol=1e-5)
        assert whole_grads and whole_grads.keys() == grouped_grads.keys()
        for k, g in whole_grads.items():
            assert torch.allclose(grouped_grads[k], g, atol=1e-5, rtol=1e-4), k
