"""The levers of the Flickr8k recipe: concatenated image towers, feature dropout before the
heads, and the mirror as a cached training view of a frozen tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crossalign
from crossalign.config import ModelConfig, load_config
from crossalign.data.prepare import prepare_table
from crossalign.embed.towers import image_features, mirror
from crossalign.errors import ConfigError
from crossalign.models.dual import apply_freeze, build_model
from crossalign.models.image import ConcatTower
from crossalign.models.registry import create, describe
from crossalign.distributed import DistInfo
from crossalign.train.engine import run_engine

SMALL = dict(pretrained=False, width=8)


def _small(size: int, mean: float = 0.5):
    torch.manual_seed(size)
    tower = create("small_cnn", image_size=size, **SMALL).eval()
    tower.data_config = {**tower.data_config, "mean": (mean,) * 3, "std": (0.25,) * 3}
    return tower


def test_concat_tower_gives_each_part_its_own_preprocessing():
    a, b = _small(16, mean=0.4), _small(24)
    tower = ConcatTower([a, b]).eval()
    assert tower.width == a.width + b.width and tower.name == f"{a.name}+{b.name}"
    assert tower.data_config["input_size"] == (3, 24, 24)  # the pipeline prepares the largest
    x = torch.rand(3, 3, 24, 24)
    with torch.no_grad():
        got = tower(x)  # [3, 16]
        raw = x * 0.25 + 0.5  # back to [0, 1], then a's normalisation at a's size
        for_a = F.interpolate((raw - 0.4) / 0.25, size=(16, 16), mode="bilinear", antialias=True,
                              align_corners=False)
        torch.testing.assert_close(got, torch.cat([a(for_a), b(x)], 1))
    assert tower.supports_split and len(tower.blocks()) == len(a.blocks())
    with torch.no_grad():
        for n in (0, 1, 2, len(a.blocks())):
            prefix = tower.forward_prefix(x, n)  # each part's own activations
            assert set(prefix) == {"x0", "x1"} and prefix["x0"].shape[-1] != prefix["x1"].shape[-1]
            torch.testing.assert_close(tower.forward_suffix(prefix, n), got, atol=1e-5, rtol=1e-4)
    apply_freeze(tower, "last:1")  # the last block of every part trains, and nothing else
    for part in (a, b):
        assert all(p.requires_grad for p in part.blocks()[-1].parameters())
        assert not any(p.requires_grad for blk in part.blocks()[:-1] for p in blk.parameters())
        assert not any(p.requires_grad for p in part.stem.parameters())
    with pytest.raises(ConfigError, match="shortest tower"):
        apply_freeze(tower, f"last:{len(a.blocks()) + 1}")


def test_concat_tower_by_name_and_what_it_refuses():
    tower = create("small_cnn+small_cnn", **SMALL)
    assert isinstance(tower, ConcatTower) and tower.width == 16
    assert describe("small_cnn+small_cnn", width=8)["width"] == 16
    with pytest.raises(ConfigError, match="only image towers"):
        create("small_cnn+minilm")
    with pytest.raises(ConfigError, match="one file"):
        create("small_cnn+small_cnn", checkpoint="weights.safetensors", **SMALL)
    with pytest.raises(ConfigError, match="unknown tower"):
        create("small_cnn+no_such_tower")


def test_a_run_with_a_concatenated_frozen_tower_trains_caches_and_loads(tmp_path, shapes_dir):
    sets = ["model.image.tower=small_cnn+small_cnn", "model.image.pretrained=false", "model.image.width=8",
            "model.image.freeze=frozen", "model.image.dropout=0.3", "model.text.dropout=0.1",
            "model.text.tower=lstm", "model.text.width=16", "model.text.pretrained=false",
            "train.epochs=2", "train.batch_size=32", "train.tensorboard=false", "train.checkpoint_every=0",
            f"cache.dir={tmp_path / 'cache'}"]
    res = crossalign.train(shapes_dir, tmp_path / "run", overrides=sets, progress=False)
    assert len(res.history) == 2
    model = crossalign.load(tmp_path / "run")
    assert isinstance(model.model.image_tower, ConcatTower)
    m = crossalign.evaluate(tmp_path / "run", shapes_dir, split="test", progress=False)
    assert 0 <= m["t2i_R@1"] <= 100 and m["n_images"] > 0


def test_feature_dropout_acts_while_training_only_and_keeps_checkpoint_keys():
    def model(p_img: float, p_txt: float):
        cfg = ModelConfig()
        cfg.image.tower, cfg.image.pretrained, cfg.image.width = "small_cnn", False, 32
        cfg.text.tower, cfg.text.pretrained, cfg.text.width = "lstm", False, 32
        cfg.image.dropout, cfg.text.dropout = p_img, p_txt
        torch.manual_seed(0)
        return build_model(cfg)

    plain, dropped = model(0.0, 0.0), model(0.5, 0.2)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.load_state_dict(plain.state_dict())
    feats = torch.rand(64, 32)
    dropped.train()
    a, b = dropped.project_image(feats), dropped.project_image(feats)
    assert not torch.allclose(a, b)  # a fresh mask each call
    zeroed = (dropped.image_drop(feats) == 0).float().mean().item()
    assert 0.4 < zeroed < 0.6
    dropped.eval()
    torch.testing.assert_close(dropped.project_image(feats), plain.eval().project_image(feats))
    torch.testing.assert_close(dropped.project_text(feats), plain.project_text(feats))
    with pytest.raises(ConfigError, match="model.image.dropout"):
        model(1.0, 0.0)


def test_mirror_view_draws_the_clean_or_the_cached_mirror_features(tmp_path, shapes_dir):
    cfg = load_config(None, ["augment.mirror=true", "train.batch_size=32", "train.tensorboard=false",
                             f"cache.dir={tmp_path / 'cache'}"])
    table, problems = prepare_table(shapes_dir, cfg.data)
    eng = run_engine(tmp_path / "run", cfg, table, problems, DistInfo(), progress=False)
    side = eng.images
    assert side.mode == "features" and side.feats.shape[0] == 3  # clean, then the two views drawn
    torch.testing.assert_close(side.feats.view(1), side.feats.view(0))  # view 1: the clean image
    mirrored = image_features(eng.model.image_tower, side.paths, None, augment=mirror, progress=False)
    # the cache holds float16 rows
    np.testing.assert_allclose(side.feats.view(2).numpy(), mirrored.feats, rtol=2e-3, atol=1e-4)
    draws = {side._view(0, s) for s in range(40)}
    assert draws == {0, 1}  # both views are drawn within an epoch
    # validation embeds the clean image
    eng.model.eval()
    with torch.no_grad():
        clean = side.train_embed(np.arange(4))
        torch.testing.assert_close(clean, eng.model.project_image(side.feats.take(np.arange(4))))
    assert np.isfinite(eng.train_epoch(_NullLogger(), eng.gen.get_state()))


def test_a_concatenated_tower_trains_its_last_blocks_over_cached_prefixes_and_their_mirror(tmp_path, shapes_dir):
    sets = ["model.image.tower=small_cnn+small_cnn", "model.image.pretrained=false", "model.image.width=8",
            "model.image.freeze=last:1", "augment.mirror=true", "model.text.tower=lstm",
            "model.text.width=16", "model.text.pretrained=false", "train.batch_size=32",
            "train.tensorboard=false", f"cache.dir={tmp_path / 'cache'}"]
    cfg = load_config(None, sets)
    table, problems = prepare_table(shapes_dir, cfg.data)
    eng = run_engine(tmp_path / "run", cfg, table, problems, DistInfo(), progress=False)
    side, tower = eng.images, eng.model.image_tower
    assert side.mode == "prefix" and side.n_views == 2 and len(side.prefix) == 3
    assert side.prefix[1] is side.prefix[0]  # view 0: the clean image, not held twice
    pixels = torch.stack([side.data[r][1] for r in range(3)])  # [3, 3, H, W], clean
    flipped = torch.flip(pixels, dims=[3])  # the mirror, as the decoder would have made it
    with torch.no_grad():
        want = tower.forward_prefix(flipped, 1)
    for k in ("x0", "x1"):
        got = torch.stack([side.prefix[2][r][k] for r in range(3)])
        torch.testing.assert_close(got, want[k], atol=1e-4, rtol=1e-3)
    assert {side._view(0, s) for s in range(40)} == {0, 1}
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    assert np.isfinite(eng.train_epoch(_NullLogger(), eng.gen.get_state()))
    moved = {k for k, v in tower.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])}
    assert moved and all(".stages.3." in k for k in moved), sorted(moved)[:5]


def test_mirror_view_needs_a_frozen_tower(tmp_path, shapes_dir):
    sets = ["augment.mirror=true", "model.image.tower=small_cnn", "model.image.pretrained=false",
            "model.image.width=8", "model.text.tower=lstm", "model.text.width=16",
            "model.text.pretrained=false", "train.tensorboard=false"]
    cfg = load_config(None, sets)
    table, problems = prepare_table(shapes_dir, cfg.data)
    with pytest.raises(ConfigError, match="flip_prob"):
        run_engine(tmp_path / "run", cfg, table, problems, DistInfo(), progress=False)


class _NullLogger:
    def step(self, row):
        pass

    def flush_steps(self):
        pass


def test_bn_stats_keep_holds_the_loaded_statistics_of_the_blocks_that_train():
    def model(bn_stats: str):
        cfg = ModelConfig()
        cfg.image.tower, cfg.image.pretrained, cfg.image.width = "small_cnn", False, 16
        cfg.image.freeze, cfg.image.bn_stats = "last:1", bn_stats
        cfg.text.tower, cfg.text.pretrained, cfg.text.width = "lstm", False, 16
        torch.manual_seed(0)
        return build_model(cfg)

    x = torch.rand(8, 3, 64, 64) * 3  # far from the initial running statistics
    for bn_stats, moves in (("train", True), ("keep", False)):
        m = model(bn_stats).train()
        bns = [b for b in m.image_tower.stages[-1].modules() if isinstance(b, torch.nn.BatchNorm2d)]
        before = [b.running_mean.clone() for b in bns]
        out = m.image_tower(x)
        assert any(p.requires_grad for b in bns for p in b.parameters())  # scale and shift train
        changed = any(not torch.equal(b.running_mean, r) for b, r in zip(bns, before))
        assert changed is moves, bn_stats
        out.sum().backward()
        assert all(b.weight.grad is not None for b in bns)
    with pytest.raises(ConfigError, match="bn_stats"):  # RunConfig.validate, as the config resolves
        load_config(None, ["model.image.bn_stats=frozen"])
