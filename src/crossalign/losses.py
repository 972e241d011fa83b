"""Contrastive losses. Pure functions of features: no data, no model, no global state.

Rank and world size are passed in (see :class:`crossalign.train.distributed.DistInfo`),
so the same code computes the loss of one process or of many sharing a global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ClipLoss", "positive_mask"]


def positive_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """``[batch, batch]`` boolean: True where row and column show the same image.

    Two captions of one image in a batch are both right answers, so neither may act as
    the other's negative.
    """
    return image_ids[:, None] == image_ids[None, :]


class ClipLoss(torch.nn.Module):
    """Symmetric InfoNCE over image and text features (both L2-normalised).

    Args:
        margin: subtracted from the positive logits (before scaling), an additive margin.
    """

    def __init__(self, margin: float = 0.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the image->text and text->image cross-entropies.

        Args:
            image_features: ``[batch, dim]``, row i pairs with text row i.
            text_features: ``[batch, dim]``.
            logit_scale: scalar multiplier (already exponentiated / clamped).
            image_ids: ``[batch]`` integer image identity; rows sharing one are not negatives.
        """
        sim = image_features @ text_features.T  # [batch, batch] cosine similarities
        n = sim.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=sim.device)
        if self.margin:
            sim = sim - self.margin * eye.to(sim.dtype)
        logits = logit_scale * sim
        if image_ids is not None:
            # other captions of the same image: neither positive nor negative
            same = positive_mask(image_ids) & ~eye
            logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(n, device=sim.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
