"""The contrastive losses against naive per-pair loops (one process)."""

import math

import pytest
import torch

from crossalign.config import LossConfig, load_config
from crossalign.losses import ClipLoss, SigLipLoss, gather_features, make_loss
from crossalign.distributed import DistInfo


def naive_clip_loss(img, txt, scale, ids, margin=0.0):
    """Row-by-row softmax cross-entropy, skipping other captions of the same image."""
    n = img.shape[0]
    total = 0.0
    for direction in ("i2t", "t2i"):
        for i in range(n):
            terms = []
            for j in range(n):
                a, b = (img[i], txt[j]) if direction == "i2t" else (txt[i], img[j])
                s = float(a @ b) - (margin if i == j else 0.0)
                if j != i and ids[i] == ids[j]:
                    continue
                terms.append(scale * s)
            pos = terms[[j for j in range(n) if j == i or ids[i] != ids[j]].index(i)]
            total += -(pos - math.log(sum(math.exp(t) for t in terms)))
    return total / (2 * n)


def _feats(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def test_clip_loss_matches_naive_loop_with_shared_images():
    img, txt = _feats(7, 5, 0), _feats(7, 5, 1)
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 3])
    got = ClipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), ids)
    assert abs(float(got) - naive_clip_loss(img, txt, 10.0, ids.tolist())) < 1e-9


def test_clip_loss_with_margin_and_unique_ids():
    img, txt = _feats(5, 4, 2), _feats(5, 4, 3)
    ids = torch.arange(5)
    got = ClipLoss(margin=0.2)(img, txt, torch.tensor(14.0, dtype=torch.float64), ids)
    assert abs(float(got) - naive_clip_loss(img, txt, 14.0, ids.tolist(), margin=0.2)) < 1e-9


def test_captions_of_one_image_are_not_negatives():
    # two captions of the same image, both identical to the image: a perfect batch
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = img.clone()
    ids = torch.tensor([0, 0, 1])
    masked = ClipLoss()(img, txt, torch.tensor(50.0), ids)
    unmasked = ClipLoss()(img, txt, torch.tensor(50.0), None)
    assert float(masked) < 1e-6 < float(unmasked)


def naive_siglip_loss(img, txt, scale, bias, ids):
    """Sum over every (image, text) pair of -log sigmoid(+-logit), divided by the batch size."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if ids[i] == ids[j] else -1.0
            z = label * (scale * float(img[i] @ txt[j]) + bias)
            total += math.log1p(math.exp(-z))  # -log sigmoid(z)
    return total / n


def test_siglip_loss_matches_naive_loop_with_shared_images():
    img, txt = _feats(7, 5, 4), _feats(7, 5, 5)
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 3])
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    got = SigLipLoss()(img, txt, scale, ids, bias)
    assert abs(float(got) - naive_siglip_loss(img, txt, 10.0, -3.0, ids.tolist())) < 1e-9


def test_siglip_without_ids_has_only_the_diagonal_positive():
    img, txt = _feats(4, 3, 6), _feats(4, 3, 7)
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    got = SigLipLoss()(img, txt, scale, None, bias)
    assert abs(float(got) - naive_siglip_loss(img, txt, 5.0, -10.0, list(range(4)))) < 1e-9


def test_siglip_needs_a_bias():
    img = _feats(3, 3, 8)
    with pytest.raises(ValueError, match="logit_bias"):
        SigLipLoss()(img, img, torch.tensor(10.0), torch.arange(3))


def test_local_loss_in_one_process_is_the_plain_loss():
    img, txt = _feats(6, 4, 9), _feats(6, 4, 10)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    scale, bias = torch.tensor(12.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    for cls in (ClipLoss, SigLipLoss):
        plain = cls()(img, txt, scale, ids, bias)
        local = cls(dist=DistInfo(), gather_with_grad=True, local_loss=True)(img, txt, scale, ids, bias)
        assert torch.equal(plain, local)


def test_gather_features_in_one_process_is_identity():
    img, txt, ids = _feats(3, 2, 11), _feats(3, 2, 12), torch.arange(3)
    for with_grad in (False, True):
        out = gather_features(img, txt, ids, DistInfo(), gather_with_grad=with_grad)
        assert out[0] is img and out[1] is txt and out[2] is ids


def test_make_loss_builds_the_configured_loss():
    clip = make_loss(LossConfig(name="clip", margin=0.1, gather_with_grad=False, local_loss=True),
                     DistInfo(rank=1, world_size=2))
    assert isinstance(clip, ClipLoss) and clip.margin == 0.1
    assert (clip.gather_with_grad, clip.local_loss, clip.dist.rank) == (False, True, 1)
    siglip = make_loss(LossConfig(name="siglip"), DistInfo())
    assert isinstance(siglip, SigLipLoss) and siglip.gather_with_grad and siglip.local_loss
    with pytest.raises(ValueError, match="available: clip, siglip"):
        make_loss(LossConfig(name="triplet"))
    with pytest.raises(ValueError, match="margin"):  # RunConfig.validate, as the config resolves
        load_config(None, ["loss.name=siglip", "loss.margin=0.2"])
