"""Checkpoints: weights in safetensors, everything else in JSON. Nothing is unpickled.

A frozen pretrained tower is not copied into every run: its weights come back from
their source, and the fingerprint stored beside the checkpoint proves they are the same.
The JSON beside each safetensors file also holds the file's SHA-256: a file that does
not match it (flipped bits, truncation, a pickle put in its place) is refused with a
:class:`CheckpointError`, never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from crossalign._io import atomic_write_bytes, atomic_write_json, sha256_bytes
from crossalign.config import RunConfig, load_config
from crossalign.errors import CrossalignError
from crossalign.models.dual import DualEncoder, build_model, is_frozen

__all__ = ["save_model", "load_model", "checkpoint_state", "CheckpointError", "save_tensors",
           "load_tensors", "read_json"]


class CheckpointError(CrossalignError, RuntimeError):
    """A run folder whose weights cannot be restored; the message says why."""


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write ``tensors`` as safetensors to ``path`` atomically; returns the file's SHA-256."""
    from safetensors.torch import save

    data = save(tensors)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_tensors(path: str | Path, sha256: str | None, recorded_in: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, first checking it against ``sha256`` (None: an older run).

    Raises:
        CheckpointError: the file is missing, damaged, replaced or not safetensors.
    """
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from e
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise CheckpointError(f"{path}: does not match the checksum recorded in {recorded_in} "
                              f"(damaged, truncated or replaced); refusing to load it")
    try:
        return load(data)  # safetensors only: a pickle is an error here, never executed
    except Exception as e:  # safetensors raises its own error type for anything malformed
        raise CheckpointError(f"{path}: not a safetensors file ({e}); refusing to load it") from e


def read_json(path: str | Path) -> dict:
    """A JSON object from a run folder, or a :class:`CheckpointError` naming the file."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: damaged, not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: damaged, not a JSON object")
    return obj


def _rebuilt_from_source(tcfg) -> bool:
    """A frozen tower with pretrained weights: they come back from their source, not the run."""
    from crossalign.models.registry import model_info, resolve_freeze

    frozen = is_frozen(resolve_freeze(tcfg.tower, tcfg.freeze))
    return frozen and bool(tcfg.pretrained or tcfg.checkpoint) and not model_info(tcfg.tower).scratch


def _skipped_prefixes(model: DualEncoder) -> list[str]:
    """State-dict prefixes of towers that are frozen and rebuilt from their pretrained source."""
    return [f"{side}_tower." for side in ("image", "text") if _rebuilt_from_source(getattr(model.cfg, side))]


def checkpoint_state(model: DualEncoder) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold to restore ``model``."""
    skip = _skipped_prefixes(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not any(k.startswith(p) for p in skip)}


def _tower_fingerprints(model: DualEncoder, sides: tuple[str, ...] = ("image", "text")) -> dict[str, str]:
    """Hashes of the frozen towers' weights alone: preprocessing comes from config.yaml, and a new
    preprocessing option must not make older runs unloadable."""
    from crossalign.features import tower_fingerprint

    return {side: tower_fingerprint(getattr(model, f"{side}_tower"), {"weights": "only"}) for side in sides}


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
    info["skipped"] = _skipped_prefixes(model)
    skipped = tuple(side for side in ("image", "text") if f"{side}_tower." in info["skipped"])
    info["fingerprints"] = _tower_fingerprints(model, skipped)
    atomic_write_json(path.with_suffix(".json"), info)


def load_model(run: str | Path, which: str = "best", device: str = "cpu") -> tuple[DualEncoder, RunConfig]:
    """Rebuild the model of a run folder from its ``config.yaml`` and ``model_<which>.safetensors``."""
    run = Path(run)
    cfg_path = run / "config.yaml"
    weights = run / f"model_{which}.safetensors"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: not a run folder (config.yaml missing)")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint not found (has the run finished an epoch?)")
    cfg = load_config(cfg_path)
    meta_path = weights.with_suffix(".json")
    meta = read_json(meta_path) if meta_path.exists() else {}
    state = load_tensors(weights, meta.get("sha256"), meta_path)  # checked before any work
    if "skipped" in meta:
        skipped = tuple(meta["skipped"])
    else:
        skipped = tuple(f"{s}_tower." for s in ("image", "text") if _rebuilt_from_source(getattr(cfg.model, s)))
    # pretrained weights of towers stored in the checkpoint would only be overwritten
    model = build_model(cfg.model, loss=cfg.loss,
                        pretrained={side: f"{side}_tower." in skipped for side in ("image", "text")})
    _restore_extras(model, run)
    missing, unexpected = model.load_state_dict(state, strict=False)
    really_missing = [k for k in missing if not k.startswith(skipped)]
    if really_missing or unexpected:
        raise CheckpointError(f"{weights}: does not match the model in config.yaml "
                              f"(missing {really_missing[:5]}, unexpected {unexpected[:5]})")
    current = _tower_fingerprints(model, tuple(meta.get("fingerprints", {})))
    for side, fp in meta.get("fingerprints", {}).items():
        if current[side] != fp:
            raise CheckpointError(f"{weights}: the frozen {side} tower's weights differ from the ones "
                                  f"the run was trained with (fingerprint mismatch with {meta_path}); "
                                  f"its source ({_source(getattr(cfg.model, side))}) has changed")
    return model.to(device).eval(), cfg


def _source(tcfg) -> str:
    """Where a frozen tower's weights come from: its checkpoint file, or the named tower."""
    return str(tcfg.checkpoint or tcfg.tower)


def _restore_extras(model: DualEncoder, run: Path) -> None:
    """Hook for towers that keep state outside tensors (a word-level vocabulary, say)."""
    for tower in (model.image_tower, model.text_tower):
        if hasattr(tower, "load_extras"):
            tower.load_extras(run)
