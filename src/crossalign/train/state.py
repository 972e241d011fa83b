"""Resumable training state: optimizer, scheduler, RNG states and position.

A resume point is one generation of files under ``RUN/resume/``: the model weights, the
optimizer tensors (both safetensors) and a JSON with everything else. ``latest.json`` is
written last and names the generation, so a process killed at any moment leaves either
the old resume point or the new one, never a mix. Nothing is unpickled.

Each file's SHA-256 is recorded by the file written after it (the generation's JSON
holds those of the two safetensors files, ``latest.json`` that of the JSON), and a file
that does not match is refused with a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from crossalign._io import atomic_write_json, sha256_file
from crossalign.errors import CheckpointError
from crossalign.runs import load_tensors, read_json
from crossalign.train.checkpoint import save_tensors

__all__ = ["save_resume_point", "load_resume_point", "has_resume_point"]


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors + a JSON-able skeleton."""
    sd = opt.state_dict()
    tensors, skeleton = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
                entry[k] = {"tensor": f"opt.{pid}.{k}"}
            else:
                entry[k] = v
        skeleton["state"][str(pid)] = entry
    return tensors, skeleton


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state = {}
    for pid, entry in skeleton["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                           for k, v in entry.items()}
    return {"state": state, "param_groups": skeleton["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def save_resume_point(run: Path, model_state: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
                      scheduler_state: dict | None, position: dict, generator_state: torch.Tensor) -> None:
    """Write one resume generation and point ``latest.json`` at it (the commit point).

    ``generator_state`` is the state of the epoch-order generator at the start of the
    current epoch, so a resumed run draws the same order and skips the finished steps.
    """
    folder = Path(run) / "resume"  # created by the first write, which names it if the disk refuses
    tag = f"{position['epoch']:04d}-{position['step']:07d}"
    opt_tensors, skeleton = _flatten_optimizer(opt)
    opt_tensors.update(_rng_tensors())
    opt_tensors["rng.epoch_generator"] = generator_state
    sums = {"model": save_tensors(folder / f"model-{tag}.safetensors", model_state),
            "state": save_tensors(folder / f"state-{tag}.safetensors", opt_tensors)}
    meta = folder / f"state-{tag}.json"
    atomic_write_json(meta, {"optimizer": skeleton, "scheduler": scheduler_state, "position": position,
                             "sha256": sums})
    atomic_write_json(folder / "latest.json", {"tag": tag, "sha256": sha256_file(meta)})
    for old in folder.glob("*-*.*"):  # earlier generations are no longer needed
        if tag not in old.name:
            old.unlink(missing_ok=True)


def has_resume_point(run: Path) -> bool:
    return (Path(run) / "resume" / "latest.json").is_file()


def load_resume_point(run: Path) -> dict:
    """Read the latest generation: model state, optimizer state dict, scheduler, position, RNGs.

    Raises:
        CheckpointError: a file of the resume point is missing, damaged or replaced.
    """
    folder = Path(run) / "resume"
    latest = read_json(folder / "latest.json")
    tag, meta_path = latest.get("tag"), folder / f"state-{latest.get('tag')}.json"
    if not isinstance(tag, str) or not meta_path.is_file():
        raise CheckpointError(f"{folder / 'latest.json'}: names no resume point in {folder} (damaged)")
    if not isinstance(latest.get("sha256"), str):
        raise CheckpointError(f"{folder / 'latest.json'}: records no checksum of {meta_path.name}; "
                              f"refusing to resume from a point that cannot be checked")
    if sha256_file(meta_path) != latest["sha256"]:
        raise CheckpointError(f"{meta_path}: does not match the checksum recorded in latest.json "
                              f"(damaged or replaced); refusing to resume from it")
    meta = read_json(meta_path)
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        raise CheckpointError(f"{meta_path}: records no checksums of its weights; refusing to resume")
    tensors = load_tensors(folder / f"state-{tag}.safetensors", sums.get("state"), meta_path)
    return {
        "model": load_tensors(folder / f"model-{tag}.safetensors", sums.get("model"), meta_path),
        "optimizer": _unflatten_optimizer(tensors, meta["optimizer"]),
        "scheduler": meta["scheduler"],
        "position": meta["position"],
        "rng_torch": tensors["rng.torch"],
        "rng_cuda": [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))],
        "epoch_generator": tensors["rng.epoch_generator"],
    }
