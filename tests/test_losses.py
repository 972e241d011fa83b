"""The contrastive loss against a naive per-row loop."""

import math

import torch

from crossalign.losses import ClipLoss


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
