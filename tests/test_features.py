"""FeatureCache: hit, miss, invalidation on changed content."""

import shutil

import numpy as np
import torch

from crossalign.embed import towers as embed
from crossalign.features import FeatureCache
from crossalign.models.registry import create
from _tiny import CountingTower



def test_cache_hit_miss_and_invalidation(tmp_path, shapes_dir):
    data = tmp_path / "d"
    shutil.copytree(shapes_dir / "images", data)
    paths = sorted(str(p) for p in data.glob("*.png"))[:10]
    tower = CountingTower()
    first = embed.image_features(tower, paths, tmp_path / "cache", progress=False)
    assert tower.calls == 10 and first.feats.shape == (10, 3) and not first.failed
    again = embed.image_features(tower, paths, tmp_path / "cache", progress=False)
    assert tower.calls == 10  # all hits
    np.testing.assert_array_equal(first.feats, again.feats)
    # change one file's content: only it is recomputed, and its features change
    from PIL import Image

    Image.new("RGB", (64, 64), (255, 0, 0)).save(paths[3])
    changed = embed.image_features(tower, paths, tmp_path / "cache", progress=False)
    assert tower.calls == 11
    assert not np.allclose(changed.feats[3], first.feats[3])
    np.testing.assert_array_equal(changed.feats[4], first.feats[4])


def test_unreadable_image_is_reported_not_fatal(tmp_path, shapes_dir):
    data = tmp_path / "d"
    shutil.copytree(shapes_dir / "images", data)
    paths = sorted(str(p) for p in data.glob("*.png"))[:4]
    with open(paths[1], "wb") as f:
        f.write(b"\x89PNG broken")
    out = embed.image_features(CountingTower(), paths, tmp_path / "cache", progress=False)
    assert out.feats.shape == (3, 3)
    assert paths[1] in out.failed and paths[1] in str(out.failed[paths[1]])


def test_text_cache_keyed_by_tower(tmp_path):
    tower = create("minilm")
    texts = ["a red circle", "two blue squares", "a red circle"]
    a = embed.text_features(tower, texts, tmp_path / "c", progress=False)
    cache_dirs = list((tmp_path / "c").iterdir())
    assert len(cache_dirs) == 1
    assert len(FeatureCache(tmp_path / "c", cache_dirs[0].name)) == 2  # duplicates stored once
    b = embed.text_features(tower, texts, tmp_path / "c", progress=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[0], a[2])
    # another pooling is another tower: a new cache entry set
    tower.pooling = "cls"
    embed.text_features(tower, texts[:1], tmp_path / "c", progress=False)
    assert len(list((tmp_path / "c").iterdir())) == 2


class WeightedTower(CountingTower):
    """CountingTower with a weight, frozen (no parameter trains): features = mean * scale."""

    name = "weighted"

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, pixels):
        return super().forward(pixels) * self.scale  # [batch, 3]


def test_changed_weights_change_the_key_and_are_recomputed(tmp_path, shapes_dir):
    from crossalign.features import tower_fingerprint

    paths = sorted(str(p) for p in (shapes_dir / "images").glob("*.png"))[:6]
    tower = WeightedTower()
    key = tower_fingerprint(tower, tower.data_config)
    first = embed.image_features(tower, paths, tmp_path / "cache", progress=False)
    assert tower.calls == 6
    with torch.no_grad():  # the same frozen tower object, its weights changed in place
        tower.scale.mul_(2.0)
    assert tower_fingerprint(tower, tower.data_config) != key
    again = embed.image_features(tower, paths, tmp_path / "cache", progress=False)
    assert tower.calls == 12  # recomputed, not read back under the old key
    np.testing.assert_allclose(np.asarray(again.feats), 2 * np.asarray(first.feats), rtol=1e-6)
    tower.load_state_dict({"scale": torch.ones(3)})  # back to the first weights: the first entries
    assert tower_fingerprint(tower, tower.data_config) == key
    back = embed.image_features(tower, paths, tmp_path / "cache", progress=False)
    assert tower.calls == 12
    np.testing.assert_array_equal(back.feats, first.feats)
    assert len([d for d in (tmp_path / "cache").iterdir() if d.is_dir()]) == 2
