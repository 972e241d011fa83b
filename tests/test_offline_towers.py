"""The packaged pretrained towers: loaded offline, checked against reference implementations."""

import numpy as np
import pytest
import torch

from crossalign.data.transforms import eval_transform
from crossalign.models.registry import create

CAT_CLASSES = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian


@pytest.fixture(scope="module")
def chelsea():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())


def test_efficientnet_lite0_sees_a_cat_and_matches_reference(chelsea):
    import timm

    from crossalign.models.image import efficientnet_lite_weights_path, remap_efficientnet_lite

    tower = create("efficientnet_lite0").eval()
    assert tower.width == 1280
    assert tower.data_config["mean"] == (0.5, 0.5, 0.5) and tower.data_config["crop_pct"] == 0.875
    x = eval_transform(tower.data_config)(chelsea)[None]
    # the full classifier, remapped, calls it a cat
    clf = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(efficientnet_lite_weights_path(0), map_location="cpu", weights_only=True)
    clf.load_state_dict(remap_efficientnet_lite(state, [len(s) for s in clf.blocks]))
    with torch.no_grad():
        top = int(clf.eval()(x).argmax())
    assert top in CAT_CLASSES
    # features equal the reference implementation of the same checkpoint
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=efficientnet_lite_weights_path(0)).eval()
    with torch.no_grad():
        ours = tower(x)
        theirs = ref.extract_features(x).mean((2, 3))
        assert int(ref(x).argmax()) == top
    assert float((ours - theirs).abs().max()) < 1e-4


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from crossalign.models.text import minilm_path

    tower = create("minilm").eval()
    texts = ["a dog runs on the beach", "two children play football in a park near a big old tree"]
    with torch.no_grad():
        ours = torch.nn.functional.normalize(tower(**tower.tokenize(texts)), dim=-1).numpy()
    ref = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts)
    assert np.abs(ours - ref).max() < 1e-5
