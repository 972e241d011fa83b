"""LiT-style training: cached frozen tower, cached prefix of a partly trained tower, cached views."""

import numpy as np
import torch

from crossalign.config import load_config
from crossalign.data.prepare import prepare_table
from crossalign.distributed import DistInfo
from crossalign.train.engine import Engine

SETS = ["model.text.freeze=last:1", "augment.image=true", "augment.text=true", "augment.synonym_prob=0",
        "augment.cached_views=2", "train.batch_size=32", "train.tensorboard=false"]


def test_prefix_cache_and_views(tmp_path, shapes_dir):
    cfg = load_config(None, SETS)
    table, problems = prepare_table(shapes_dir, cfg.data)
    eng = Engine(tmp_path, cfg, table, problems, DistInfo(), progress=False)
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
