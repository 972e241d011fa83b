"""Gradient caching: the exact gradient of a large contrastive batch in the memory of a chunk.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(GradCache; sentence-transformers ships it as ``CachedMultipleNegativesRankingLoss``). A
contrastive loss ties every row of the batch to every other, so the batch cannot be cut into
micro-batches without changing the loss; its gradient can be cut at the embeddings instead:

1. the towers run over the batch a chunk at a time without autograd, keeping only the
   embeddings (``[batch, embed_dim]``, small);
2. the loss runs on all the embeddings with autograd on them (and on the logit scale and
   bias, whose gradients it leaves in their ``.grad``): its backward gives
   ``d loss / d embeddings``, cached;
3. each chunk runs again with autograd and its embeddings are backpropagated with their rows of
   the cached gradient; by the chain rule the parameter gradients add up to the whole batch's.

Step 3 has to recompute step 1's embeddings exactly, dropout masks included, so the random state
of each chunk (the CPU's, and the GPU's on CUDA) is saved before its first pass and put back
before its second. Augmentation is drawn before the step, from seeds of the run, so both passes
see the same inputs. Batch norm in training mode would normalise each chunk with its own
statistics and update its running statistics twice: :func:`check_grad_cache` refuses it.

Memory: one chunk's activations, plus the batch's inputs and embeddings. Time: one more forward
pass of the towers (``bench/bench_grad_cache.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from crossalign.distributed import DistInfo
from crossalign.errors import ConfigError
from crossalign.models.dual import DualEncoder, is_frozen

__all__ = ["check_grad_cache", "grad_cache_step", "all_reduce_grads"]

# the embeddings of the images and of the texts of some rows of the batch
Encode = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def check_grad_cache(model: DualEncoder, chunk: int) -> None:
    """Refuse ``train.grad_cache=chunk`` for a model it cannot serve (its freezing resolved).

    A model whose towers are both frozen runs only its heads, over cached features: nothing is
    worth chunking. Batch norm in training mode in a tower that trains would normalise each chunk
    with the chunk's statistics, so the gradient would not be the whole batch's.
    """
    if not chunk:
        return
    trained = [side for side in ("image", "text") if not is_frozen(getattr(model.cfg, side).freeze)]
    if not trained:
        raise ConfigError("config: train.grad_cache runs the towers in chunks, but both towers are "
                          "frozen (freeze=auto freezes a pretrained tower): only the heads run, over "
                          "cached features; set train.grad_cache=0, or let a tower train")
    was_training = model.training
    model.train()  # the modes of a training step: frozen blocks' batch norm is in eval mode
    batch_stats = [side for side in trained
                   if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                          for m in getattr(model, f"{side}_tower").modules())]
    model.train(was_training)
    if batch_stats:
        raise ConfigError(f"config: train.grad_cache runs the {batch_stats[0]} tower in chunks, and "
                          "its batch norm would normalise each chunk with the chunk's own statistics, "
                          "not the batch's; set model.image.bn_stats=keep (the loaded running "
                          "statistics) or train.grad_cache=0")


def _rng_state(device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The random state dropout draws from on ``device``: the CPU's, and the GPU's on CUDA."""
    gpu = torch.cuda.get_rng_state(device) if device.startswith("cuda") else None
    return torch.get_rng_state(), gpu


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: str) -> None:
    cpu, gpu = state
    torch.set_rng_state(cpu)
    if gpu is not None:
        torch.cuda.set_rng_state(gpu, device)


def _embed_without_grad(encode: Encode, parts: Sequence[np.ndarray], device: str):
    """Step 1: the embeddings of every row (``[n, embed_dim]`` each, in row order) and the
    random state each part started from."""
    states, images, texts = [], [], []
    with torch.no_grad():
        for part in parts:
            states.append(_rng_state(device))
            img, txt = encode(part)
            images.append(img)
            texts.append(txt)
    back = torch.from_numpy(np.argsort(np.concatenate(parts), kind="stable"))  # parts' order -> rows'
    img, txt = torch.cat(images), torch.cat(texts)  # [n, embed_dim] each, in the parts' order
    return img[back.to(img.device)], txt[back.to(txt.device)], states


def grad_cache_step(encode: Encode, parts: Sequence[np.ndarray],
                    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    device: str, divisor: float = 1.0) -> float:
    """Accumulate into ``.grad`` the gradient of ``loss_of(all embeddings) / divisor``, the
    towers running one part of the batch at a time; returns the loss.

    Args:
        encode: ``encode(rows)`` -> float32 ``(image embeddings, text embeddings)`` of those rows
            of the batch, each ``[len(rows), embed_dim]``, with autograd when it is on.
        parts: row positions ``0..n-1``, each once, cut into the parts the towers run.
        loss_of: the loss of the whole batch's embeddings ``[n, embed_dim]`` in row order (with
            the logit scale and bias it takes from the model, so their gradients land in ``.grad``).
        device: where the towers run (whose random state is replayed).
        divisor: the loss is divided by it before the backward (micro-batches of a step).
    """
    img, txt, states = _embed_without_grad(encode, parts, device)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    loss = loss_of(img, txt)
    (loss / divisor).backward()
    for part, state in zip(parts, states):
        _set_rng_state(state, device)  # the same dropout masks as the first pass
        p_img, p_txt = encode(part)
        rows = torch.from_numpy(np.asarray(part, np.int64)).to(img.device)
        outs = [(e, g[rows]) for e, g in ((p_img, img.grad), (p_txt, txt.grad)) if e.requires_grad]
        torch.autograd.backward([e for e, _ in outs], [g for _, g in outs])  # [rows, embed_dim] each
    return loss.item()


def all_reduce_grads(params: Sequence[torch.nn.Parameter], dist: DistInfo) -> None:
    """Every gradient replaced by its mean over ranks, as DistributedDataParallel leaves it
    (one flat all_reduce); a no-op for one process. Every rank holds the same parameters, and a
    parameter without a gradient has none on any rank."""
    if dist.world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # [total elements]
    torch.distributed.all_reduce(flat)
    flat /= dist.world_size
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view_as(g))
