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


@pytest.mark.parametrize("n", [0, 1, 2])
def test_efficientnet_lite_sees_a_cat_and_matches_reference(chelsea, n):
    """Features of the packaged checkpoint against ``efficientnet_lite_pytorch`` (the library
    whose key layout it uses) on skimage's cat photo. Max abs difference of the pooled
    1280-d features measured on a 2-core CPU: lite0 4.5e-06, lite1 2.7e-06, lite2 2.9e-06
    (feature magnitudes up to about 5); the full classifiers' logits match exactly.
    """
    import timm

    from crossalign.models.image import efficientnet_lite_weights_path, remap_efficientnet_lite

    tower = create(f"efficientnet_lite{n}").eval()
    assert tower.width == 1280
    size = {0: 224, 1: 240, 2: 260}[n]  # timm's tf_efficientnet_lite{n} input sizes
    assert tower.data_config["input_size"] == (3, size, size)
    assert tower.data_config["mean"] == (0.5, 0.5, 0.5) and tower.data_config["std"] == (0.5, 0.5, 0.5)
    if n == 0:
        assert tower.data_config["crop_pct"] == 0.875  # shorter side 256, centre crop 224
    x = eval_transform(tower.data_config)(chelsea)[None]
    # the full classifier, remapped, calls it a cat
    clf = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    state = torch.load(efficientnet_lite_weights_path(n), map_location="cpu", weights_only=True)
    clf.load_state_dict(remap_efficientnet_lite(state, [len(s) for s in clf.blocks]))
    with torch.no_grad():
        top = int(clf.eval()(x).argmax())
    assert top in CAT_CLASSES
    # features equal the reference implementation of the same checkpoint
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=efficientnet_lite_weights_path(n)).eval()
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
