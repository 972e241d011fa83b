"""Contrastive losses. Pure functions of features: no data, no model, no global state.

Rank and world size are passed in (see :class:`crossalign.distributed.DistInfo`),
so the same code computes the loss of one process or of many sharing a global batch.

Across processes every rank holds ``local_batch`` rows and the *global batch* is the
concatenation of all ranks' rows in rank order (``world_size * local_batch`` rows).
Per-rank batch sizes must be equal (the training loop drops the last partial batch):
``all_gather`` needs tensors of one shape on every rank.

Which settings give exactly the gradient of one process holding the global batch, once
DDP averages the parameter gradients over ranks:

* ``gather_with_grad=True`` (with or without ``local_loss``): exact. Rank r's loss
  ``L_r`` is defined so that ``mean_r L_r`` is the global loss ``L``. The backward of
  the differentiable all_gather sums, onto the rank that owns a feature row, the
  gradients every rank's loss sends to it, so rank r's encoder gradient is
  ``sum_s dL_s/dθ`` through its own rows; DDP's mean over ranks then gives
  ``mean_s dL_s/dθ = dL/dθ``. The temperature (and SigLIP bias) is replicated, its
  gradient on rank r is ``dL_r/dt``, and the mean is again ``dL/dt``.
* ``gather_with_grad=False``: not exact. Features from other ranks are constants, so the
  gradient reaching rank r's rows is only what its *own* loss sends. Without
  ``local_loss`` (every rank computes the whole ``L``) that is ``dL/d(rows of r)``, and
  the DDP mean yields ``dL/dθ / world_size`` for the encoders but the full ``dL/dt`` for
  the temperature: the relative step sizes change with the number of processes. With
  ``local_loss`` the terms in which rank r's rows act as columns of other ranks' rows
  are lost altogether (for SigLIP that hits the text side only: image rows are scored
  on their own rank alone). The loss *value* is still the global one in both cases.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from crossalign.errors import ConfigError
from crossalign.config import LossConfig
from crossalign.distributed import DistInfo

__all__ = ["ClipLoss", "SigLipLoss", "gather_features", "make_loss"]


def _gather_no_grad(tensor: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """``[world * batch, ...]`` copies of every rank's tensor; this rank's slot keeps its graph."""
    import torch.distributed as tdist

    parts = [torch.empty_like(tensor) for _ in range(dist.world_size)]
    tdist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.rank] = tensor  # gradients still reach the local rows
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient back to the owning rank.

    ``torch.distributed.nn.functional.all_gather`` does the same but is deprecated (a
    FutureWarning per call) in favour of a private module; this needs public calls only.
    The backward all-reduces the whole ``[world * batch, dim]`` gradient and keeps this
    rank's slice: twice the traffic of a reduce-scatter, but every backend supports it,
    and feature gradients are small next to parameter gradients.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        import torch.distributed as tdist

        ctx.rank, ctx.batch = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        tdist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)  # [world * batch, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        import torch.distributed as tdist

        grad = grad.contiguous().clone()  # all_reduce works in place
        tdist.all_reduce(grad)  # sum over ranks of d(loss_r)/d(every row)
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch], None, None


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor,
                    image_ids: torch.Tensor | None, dist: DistInfo, gather_with_grad: bool = True,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Concatenate every rank's features (and image ids) in rank order.

    Every rank must pass the same ``local_batch`` (``all_gather`` needs equal shapes).

    Args:
        image_features: ``[local_batch, dim]``.
        text_features: ``[local_batch, dim]``.
        image_ids: ``[local_batch]`` integers, or None.
        dist: this process's rank and the world size; world size 1 returns the inputs.
        gather_with_grad: differentiable gather (gradients flow back to the owning rank);
            otherwise other ranks' rows are constants and only the local slot has a graph.

    Returns:
        ``(all_image [global_batch, dim], all_text [global_batch, dim], all_ids [global_batch] | None)``.
    """
    if dist.world_size == 1:
        return image_features, text_features, image_ids
    if gather_with_grad:
        all_img = _AllGatherWithGrad.apply(image_features, dist.rank, dist.world_size)
        all_txt = _AllGatherWithGrad.apply(text_features, dist.rank, dist.world_size)
    else:
        all_img, all_txt = _gather_no_grad(image_features, dist), _gather_no_grad(text_features, dist)
    all_ids = None if image_ids is None else _gather_no_grad(image_ids, dist)
    return all_img, all_txt, all_ids


def _pair_masks(n_rows: int, n_cols: int, offset: int, row_ids: torch.Tensor | None,
                col_ids: torch.Tensor | None, device: torch.device,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(own, same_image)``, both ``[n_rows, n_cols]`` boolean.

    ``own`` marks each row's own pair (column ``offset + row``); ``same_image`` marks every
    column showing the row's image (``own`` included).
    """
    cols = torch.arange(n_cols, device=device)
    rows = torch.arange(n_rows, device=device) + offset
    own = rows[:, None] == cols[None, :]  # [n_rows, n_cols]
    if row_ids is None or col_ids is None:
        return own, own
    return own, row_ids[:, None] == col_ids[None, :]


class _Scored(NamedTuple):
    """The rows one rank scores and the global batch they are scored against."""

    img: torch.Tensor  # [n_rows, dim]
    txt: torch.Tensor  # [n_rows, dim]
    ids: torch.Tensor | None  # [n_rows]
    offset: int  # global position of the first row
    all_img: torch.Tensor  # [global_batch, dim]
    all_txt: torch.Tensor  # [global_batch, dim]
    all_ids: torch.Tensor | None  # [global_batch]


class _CrossRankLoss(torch.nn.Module):
    """Shared plumbing: gather, then pick the rows this rank scores."""

    def __init__(self, dist: DistInfo | None = None, gather_with_grad: bool = False,
                 local_loss: bool = False) -> None:
        super().__init__()
        self.dist = dist or DistInfo()
        self.gather_with_grad = gather_with_grad
        self.local_loss = local_loss

    def _rows_and_columns(self, image_features: torch.Tensor, text_features: torch.Tensor,
                          image_ids: torch.Tensor | None) -> _Scored:
        """Rows this rank scores against all columns of the global batch.

        With ``local_loss`` the rows are this rank's own (global positions from
        ``rank * local_batch``); otherwise every rank scores the whole global batch.
        """
        all_img, all_txt, all_ids = gather_features(image_features, text_features, image_ids,
                                                    self.dist, self.gather_with_grad)
        if self.local_loss or self.dist.world_size == 1:
            n = image_features.shape[0]
            return _Scored(image_features, text_features, image_ids, self.dist.rank * n,
                           all_img, all_txt, all_ids)
        return _Scored(all_img, all_txt, all_ids, 0, all_img, all_txt, all_ids)


class ClipLoss(_CrossRankLoss):
    """Symmetric InfoNCE over image and text features (both L2-normalised).

    The value on each rank is defined so that its mean over ranks is the loss of one
    process holding the global batch: without ``local_loss`` each rank computes that
    global loss; with it, rank r averages only over its own rows (its images against all
    texts, its texts against all images). See the module docstring for which settings
    also give the exact global gradient (``gather_with_grad=True``, with or without
    ``local_loss``).

    Args:
        margin: subtracted from the positive similarities (before scaling), an additive margin.
        dist: rank and world size (default: one process).
        gather_with_grad: gather other ranks' features differentiably.
        local_loss: score only this rank's rows (cheaper: ``[local, global]`` logits).
    """

    def __init__(self, margin: float = 0.0, dist: DistInfo | None = None,
                 gather_with_grad: bool = False, local_loss: bool = False) -> None:
        super().__init__(dist, gather_with_grad, local_loss)
        self.margin = margin

    def _direction(self, rows: torch.Tensor, cols: torch.Tensor, target: torch.Tensor,
                   own: torch.Tensor, other_caption: torch.Tensor, logit_scale: torch.Tensor,
                   ) -> torch.Tensor:
        """Cross-entropy of each row over all columns, its own pair as the target."""
        sim = rows @ cols.T  # [n_rows, n_cols] cosine similarities
        if self.margin:
            sim = sim - self.margin * own.to(sim.dtype)
        # other captions of the same image: neither positive nor negative
        logits = (logit_scale * sim).masked_fill(other_caption, float("-inf"))
        return F.cross_entropy(logits, target)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, image_ids: torch.Tensor | None = None,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the image->text and text->image cross-entropies.

        Args:
            image_features: ``[local_batch, dim]``, row i pairs with text row i.
            text_features: ``[local_batch, dim]``.
            logit_scale: scalar multiplier (already exponentiated / clamped).
            image_ids: ``[local_batch]`` integer image identity; rows sharing one are not negatives.
            logit_bias: ignored (accepted so both losses share one call).
        """
        p = self._rows_and_columns(image_features, text_features, image_ids)
        n_rows = p.img.shape[0]
        own, same = _pair_masks(n_rows, p.all_img.shape[0], p.offset, p.ids, p.all_ids,
                                image_features.device)
        other_caption = same & ~own
        target = torch.arange(n_rows, device=image_features.device) + p.offset  # own pair's column
        i2t = self._direction(p.img, p.all_txt, target, own, other_caption, logit_scale)
        t2i = self._direction(p.txt, p.all_img, target, own, other_caption, logit_scale)
        return 0.5 * (i2t + t2i)


class SigLipLoss(_CrossRankLoss):
    """Sigmoid pairwise loss (SigLIP, Zhai et al. 2023) with learnable scale and bias.

    Every (image, text) pair of the global batch is an independent binary problem: label
    +1 when both show the same image (so all captions of one image are positives), -1
    otherwise. The summed ``-log sigmoid(label * (scale * sim + bias))`` is divided by
    the global batch size, as in the paper. Cross-rank semantics as :class:`ClipLoss`:
    with ``local_loss`` rank r sums only its images' rows and divides by its local batch,
    so the mean over ranks is the global loss.

    Args:
        dist: rank and world size (default: one process).
        gather_with_grad: gather other ranks' features differentiably.
        local_loss: score only this rank's image rows.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, image_ids: torch.Tensor | None = None,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over image rows of the summed pairwise sigmoid losses.

        Args:
            image_features: ``[local_batch, dim]``, L2-normalised, row i pairs with text row i.
            text_features: ``[local_batch, dim]``.
            logit_scale: scalar multiplier (already exponentiated / clamped).
            image_ids: ``[local_batch]`` integer image identity; equal ids are positives.
            logit_bias: scalar tensor added to every logit (the paper starts it at -10).
        """
        if logit_bias is None:
            raise ValueError("SigLipLoss needs logit_bias (a scalar tensor, e.g. the model's logit_bias)")
        p = self._rows_and_columns(image_features, text_features, image_ids)
        _, positive = _pair_masks(p.img.shape[0], p.all_img.shape[0], p.offset, p.ids, p.all_ids,
                                  image_features.device)
        logits = logit_scale * (p.img @ p.all_txt.T) + logit_bias  # [n_rows, global_batch]
        labels = positive.to(logits.dtype) * 2 - 1  # +1 same image, -1 otherwise
        return -F.logsigmoid(labels * logits).sum() / p.img.shape[0]


def make_loss(cfg: LossConfig, dist: DistInfo | None = None) -> torch.nn.Module:
    """Build the configured loss (``cfg.name``: ``clip`` or ``siglip``) for this process."""
    dist = dist or DistInfo()
    common = dict(dist=dist, gather_with_grad=cfg.gather_with_grad, local_loss=cfg.local_loss)
    if cfg.name == "clip":
        return ClipLoss(margin=cfg.margin, **common)
    if cfg.name == "siglip":  # loss.margin is 0 here: RunConfig.validate refuses it with siglip
        return SigLipLoss(**common)
    raise ConfigError(f"unknown loss {cfg.name!r}; available: clip, siglip")
