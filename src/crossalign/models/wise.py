"""WiSE-FT (Wortsman et al. 2022): weight-space ensembles of a pretrained model's zero-shot and fine-tuned
weights, so a fine-tune that forgets keeps part of what the checkpoint knew."""

from __future__ import annotations

import copy

import torch

from crossalign.errors import ConfigError
from crossalign.models.dual import build_model
from crossalign.models.pretrained import pretrained_of

__all__ = ["wise", "zero_shot_state", "apply_wise"]


def wise(zero_shot: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict:
    """WiSE-FT (Wortsman et al. 2022): ``(1 - alpha) * zero_shot + alpha * tuned`` for every
    floating tensor of two state dicts of one model; ``alpha`` 0 gives the zero-shot weights,
    1 the fine-tuned ones, exactly. Integer tensors (counters) come from ``tuned``."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"the WiSE-FT alpha must be in [0, 1], got {alpha}")
    if zero_shot.keys() != tuned.keys():
        raise ConfigError("WiSE-FT needs two state dicts of one model")
    out = {}
    for k, t in tuned.items():
        z = zero_shot[k]
        if not t.is_floating_point() or alpha == 1.0:
            out[k] = t.clone()
        elif alpha == 0.0:
            out[k] = z.clone().to(t.dtype)
        else:
            out[k] = torch.lerp(z.to(t.dtype), t, alpha)
    return out


def zero_shot_state(model) -> dict[str, torch.Tensor]:
    """The state dict ``model`` (a pretrained model's run) had before any training: both towers from the
    checkpoint, the logit scale the checkpoint learned."""
    pretrained_of(model)
    cfg = copy.deepcopy(model.cfg)
    fresh = build_model(cfg).state_dict()  # pretrained weights, the checkpoint's logit scale
    # what the checkpoint has no counterpart for (a SigLIP loss's bias) keeps the run's value
    return {k: fresh.get(k, v).to(v.device) for k, v in model.state_dict().items()}


def apply_wise(model, alpha: float):
    """Put the WiSE-FT ensemble ``(1 - alpha) * zero-shot + alpha * fine-tuned`` of ``model`` (a
    pretrained model's run) in place of its weights; returns the model. The one door every
    WiSE-FT use goes through: a run's ``train.wise_alpha``, ``evaluate(wise=...)``, ``export``."""
    model.load_state_dict(wise(zero_shot_state(model), model.state_dict(), float(alpha)))
    return model
