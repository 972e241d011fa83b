"""Checkpoints: weights in safetensors, everything else in JSON. Nothing is pickled.

Training writes checkpoints here; :mod:`crossalign.runs` reads them back (``load_model``).
A frozen pretrained tower is not copied into every run: its weights come back from their
source, and the fingerprint stored beside the checkpoint proves they are the same. One that an
earlier run trained (a warm start, a later stage of a staged recipe) is copied: its source no
longer has its weights. The JSON
beside each safetensors file holds the file's SHA-256, written after the file itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from crossalign._io import atomic_write_bytes, atomic_write_json, sha256_bytes
from crossalign.models.dual import DualEncoder
from crossalign.runs import rebuilt_tower_prefixes, tower_fingerprints

__all__ = ["save_model", "checkpoint_state", "save_tensors"]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write ``tensors`` as safetensors to ``path`` atomically; returns the file's SHA-256."""
    from safetensors.torch import save

    data = save(tensors)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def checkpoint_state(model: DualEncoder) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold to restore ``model``."""
    skip = rebuilt_tower_prefixes(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not any(k.startswith(p) for p in skip)}


def save_model(model: DualEncoder, path: str | Path, meta: dict | None = None) -> None:
    """Write ``path`` (safetensors) and ``path`` with ``.json`` (meta, checksum, fingerprints).

    Towers with state outside tensors (a word vocabulary) write it beside, as JSON.
    """
    path = Path(path)
    for tower in (model.image_tower, model.text_tower):
        if hasattr(tower, "save_extras"):
            tower.save_extras(path.parent)
    info = dict(meta or {})
    info["sha256"] = save_tensors(path, checkpoint_state(model))
    info["skipped"] = rebuilt_tower_prefixes(model)
    skipped = tuple(side for side in ("image", "text") if f"{side}_tower." in info["skipped"])
    info["fingerprints"] = tower_fingerprints(model, skipped)
    atomic_write_json(path.with_suffix(".json"), info)
