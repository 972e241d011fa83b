"""The one way to open a run folder: its config, its checked weights, its data and split.

A run folder holds ``config.yaml``, ``run.json`` (where the data is), ``splits/``,
``model_<which>.safetensors`` with ``model_<which>.json`` beside it (the file's SHA-256,
the towers that were not stored, their weight fingerprints) and ``resume/``. Training writes
them (:mod:`crossalign.train`); everything that reads a run — evaluation, the report, the
index, the service and ``crossalign.load`` — comes through here, so all of them see the same
model, data rules and split. Nothing is unpickled: weights are safetensors, the rest JSON.

A frozen pretrained tower is not copied into every run: its weights come back from their
source, and the fingerprint stored beside the checkpoint proves they are the same. A weights
file whose JSON is missing, has no checksum, or does not match it is refused with a
:class:`~crossalign.errors.CheckpointError`, never loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from crossalign._io import sha256_bytes
from crossalign.config import RunConfig, default_cache_dir, load_config, logit_start
from crossalign.data.prepare import prepare_table
from crossalign.data.table import PairTable
from crossalign.data.validate import Problem
from crossalign.embed.collection import EmbeddedTable, embed_table, embed_texts
from crossalign.errors import CheckpointError, ConfigError
from crossalign.models.dual import DualEncoder, build_model, is_frozen

__all__ = ["RunData", "open_run", "load_model", "load_pretrained", "is_pretrained_spec", "warm_start", "load_tensors",
           "read_json", "is_run_folder", "recorded_data", "embed_split", "encode_texts", "select_split", "rebuilt_tower_prefixes",
           "tower_fingerprints"]


def is_run_folder(path: str | Path) -> bool:
    """True when ``path`` is a run folder (it holds the ``config.yaml`` training wrote)."""
    return (Path(path) / "config.yaml").is_file()


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


def load_tensors(path: str | Path, sha256: object, recorded_in: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking it against ``sha256``, recorded in ``recorded_in``.

    Raises:
        CheckpointError: no checksum was recorded, or the file is missing, damaged, replaced or
            not safetensors.
    """
    from safetensors.torch import load

    if not isinstance(sha256, str) or not sha256:
        raise CheckpointError(f"{recorded_in}: records no checksum for {path}; refusing to load "
                              f"weights that cannot be checked")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from e
    if sha256_bytes(data) != sha256:
        raise CheckpointError(f"{path}: does not match the checksum recorded in {recorded_in} "
                              f"(damaged, truncated or replaced); refusing to load it")
    try:
        return load(data)  # safetensors only: a pickle is an error here, never executed
    except Exception as e:  # safetensors raises its own error type for anything malformed
        raise CheckpointError(f"{path}: not a safetensors file ({e}); refusing to load it") from e


def _rebuilt_from_source(tcfg) -> bool:
    """A frozen tower with pretrained weights: they come back from their source, not the run."""
    from crossalign.models.registry import model_info, resolve_freeze

    frozen = is_frozen(resolve_freeze(tcfg.tower, tcfg.freeze))
    return frozen and bool(tcfg.pretrained or tcfg.checkpoint) and not model_info(tcfg.tower).scratch


def rebuilt_tower_prefixes(model: DualEncoder) -> list[str]:
    """State-dict prefixes of the towers a checkpoint of ``model`` leaves out (frozen, rebuilt
    from source). A frozen tower that holds weights another run trained (a warm start from a stage
    that trained it: ``model.weights_from_run``) stays in: its source no longer has them."""
    return [f"{side}_tower." for side in ("image", "text")
            if _rebuilt_from_source(getattr(model.cfg, side)) and side not in model.weights_from_run]


def tower_fingerprints(model: DualEncoder, sides: Sequence[str] = ("image", "text")) -> dict[str, str]:
    """Hashes of the towers' weights alone: preprocessing comes from config.yaml, and a new
    preprocessing option must not make older runs unloadable."""
    from crossalign.features import tower_fingerprint

    return {side: tower_fingerprint(getattr(model, f"{side}_tower"), {"weights": "only"})
            for side in sides}


def _source(tcfg) -> str:
    """Where a frozen tower's weights come from: its checkpoint file, or the named tower."""
    return str(tcfg.checkpoint or tcfg.tower)


def _check_fingerprints(model: DualEncoder, cfg: RunConfig, meta: dict, weights: Path,
                        meta_path: Path) -> None:
    """Refuse a run whose frozen towers no longer have the weights it was trained with."""
    recorded = meta.get("fingerprints", {})
    current = tower_fingerprints(model, tuple(recorded))
    for side, fp in recorded.items():
        if current[side] != fp:
            raise CheckpointError(f"{weights}: the frozen {side} tower's weights differ from the ones "
                                  f"the run was trained with (fingerprint mismatch with {meta_path}); "
                                  f"its source ({_source(getattr(cfg.model, side))}) has changed")


def load_model(run: str | Path, which: str = "best", device: str = "cpu") -> tuple[DualEncoder, RunConfig]:
    """Rebuild the model of a run folder from its ``config.yaml`` and ``model_<which>.safetensors``.

    Raises:
        CheckpointError: not a run folder, no such checkpoint, its JSON missing or damaged, the
            weights not matching their checksum or the model, or a frozen tower changed.
    """
    run = Path(run)
    weights = run / f"model_{which}.safetensors"
    meta_path = weights.with_suffix(".json")
    if not is_run_folder(run):
        raise CheckpointError(f"{run / 'config.yaml'}: not a run folder (config.yaml missing)")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint not found (has the run finished an epoch?)")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing, so {weights.name} cannot be checked; "
                              f"refusing to load it")
    cfg = load_config(run / "config.yaml")
    meta = read_json(meta_path)
    state = load_tensors(weights, meta.get("sha256"), meta_path)  # checked before any work
    skipped = meta.get("skipped")
    if not isinstance(skipped, list):
        raise CheckpointError(f"{meta_path}: damaged (no list of the towers left out of the checkpoint)")
    skipped = tuple(skipped)
    # pretrained weights of towers stored in the checkpoint would only be overwritten
    model = build_model(cfg.model, logit_start(cfg),
                        pretrained={side: f"{side}_tower." in skipped for side in ("image", "text")})
    for tower in (model.image_tower, model.text_tower):  # state outside tensors (a vocabulary)
        if hasattr(tower, "load_extras"):
            tower.load_extras(run)
    missing, unexpected = model.load_state_dict(state, strict=False)
    really_missing = [k for k in missing if not k.startswith(skipped)]
    if really_missing or unexpected:
        raise CheckpointError(f"{weights}: does not match the model in config.yaml "
                              f"(missing {really_missing[:5]}, unexpected {unexpected[:5]})")
    _check_fingerprints(model, cfg, meta, weights, meta_path)
    return model.to(device).eval(), cfg


def warm_start(model: DualEncoder, cfg: RunConfig, run: str | Path) -> list[str]:
    """Copy the weights of ``run``'s ``model_best`` into ``model`` (of config ``cfg``); returns
    the names copied.

    Both runs must have the same towers and heads (the same tower names, head type and
    embedding width); every tensor of the source goes in, heads and logit scale included, and a
    partly trained tower's trained blocks too. What the source checkpoint left out (a frozen
    pretrained tower) keeps its pretrained weights.

    Raises:
        CheckpointError: ``run`` cannot be loaded (see :func:`load_model`).
        ConfigError: the two models differ.
    """
    src, src_cfg = load_model(run, "best")
    for side in ("image", "text"):
        ours, theirs = getattr(cfg.model, side).tower, getattr(src_cfg.model, side).tower
        if ours != theirs:
            raise ConfigError(f"train.init_from={run}: its {side} tower is {theirs}, this run's is {ours}")
    own, given = model.state_dict(), src.state_dict()
    differ = [k for k in own if k in given and own[k].shape != given[k].shape]
    heads = [k for k in own if k.startswith(("image_head.", "text_head.")) and k not in given]
    if differ or heads:
        raise ConfigError(f"train.init_from={run}: its heads differ from this run's (model.head, "
                          f"model.embed_dim, model.head_hidden): {(differ or heads)[:3]}")
    copied = {k: v for k, v in given.items() if k in own}
    model.load_state_dict(copied, strict=False)
    # a tower frozen here that the source run trained (it stored its weights): this run's
    # checkpoints must store them too, since rebuilding it from its source would undo that training
    model.weights_from_run = {side for side in ("image", "text")
                              if _rebuilt_from_source(getattr(cfg.model, side))
                              and any(k.startswith(f"{side}_tower.") for k in copied)}
    return sorted(copied)


def is_pretrained_spec(run: str | Path) -> bool:
    """True when ``run`` names a pretrained model (``hf:FOLDER``, ``open_clip:NAME``) rather than a
    run folder; a folder of that name wins."""
    from crossalign.models.pretrained import PRETRAINED_PREFIXES

    return isinstance(run, str) and run.partition(":")[0] in PRETRAINED_PREFIXES and not Path(run).exists()


def load_pretrained(spec: str, pretrained_weights: str = "", device: str = "cpu") -> tuple[DualEncoder, RunConfig]:
    """A pretrained model as it is, before any training: the model and the default config that
    builds it (``model.pretrained_model=spec``, ``model.pretrained_weights``)."""
    overrides = [f"model.pretrained_model={spec}"] + ([f"model.pretrained_weights={pretrained_weights}"] if pretrained_weights else [])
    cfg = load_config(None, overrides)
    model = build_model(cfg.model, logit_start(cfg))
    return model.to(device).eval(), cfg


def recorded_data(run: str | Path) -> str:
    """The data folder a run was trained on, as training recorded it in ``run.json``."""
    if is_pretrained_spec(run):
        raise ConfigError(f"{run}: a pretrained model has no data of its own; give `data`")
    path = Path(run) / "run.json"
    data = read_json(path).get("data")
    if not isinstance(data, str) or not data:
        raise CheckpointError(f"{path}: records no data folder; give `data`")
    return data


@dataclass
class RunData:
    """A loaded run and the data table split the way the run split it (empty without data)."""

    model: DualEncoder
    cfg: RunConfig
    table: PairTable
    problems: list[Problem]  # rows the data check skipped when reading the data
    cache_root: Path | None
    device: str
    path: Path | None = None


def open_run(run: str | Path, data: str | Path | None = None, which: str = "best", device: str = "cpu",
             quiet: bool = False, wise: float | None = None, pretrained_weights: str = "") -> RunData:
    """Load the run's checkpoint and read ``data`` (when given) with the run's stored split.

    Evaluation, the report and the index all use it, so all of them see the same model, data
    rules (``data.max_pixels``, ``data.strict``, the data-folder rule) and split. Problems are
    logged unless ``quiet``.

    ``run`` may also name a pretrained model (``hf:FOLDER``, ``open_clip:NAME`` with
    ``pretrained_weights``): it is measured as it is, on the data's own split. ``wise`` (a pretrained model's run)
    puts the WiSE-FT ensemble ``(1 - wise) * zero-shot + wise * fine-tuned`` in place of the
    run's weights: 0 gives the checkpoint as it was before training, on the run's split.
    """
    pretrained = is_pretrained_spec(run)
    if pretrained:
        model, cfg = load_pretrained(str(run), pretrained_weights, device)
    else:
        model, cfg = load_model(run, which, device)
    if wise is not None:
        from crossalign.models.wise import apply_wise

        apply_wise(model, wise)
    if data is None:
        table, problems = PairTable(), []
    else:
        table, problems = prepare_table(data, cfg.data, run_dir=None if pretrained else run, quiet=quiet)
    cache_root = default_cache_dir(cfg.cache) if cfg.cache.enabled else None
    return RunData(model, cfg, table, problems, cache_root, device, None if pretrained else Path(run))


def embed_split(rd: RunData, sub: PairTable, progress: bool = True) -> EmbeddedTable:
    """Embed ``sub`` with the run's model, cache, data rules (``max_pixels``, ``strict``) and
    decoding workers (``runtime.num_workers``)."""
    return embed_table(rd.model, sub, cache_root=rd.cache_root, device=rd.device,
                       batch_size=rd.cfg.runtime.eval_batch_size, max_pixels=rd.cfg.data.max_pixels,
                       strict=rd.cfg.data.strict, progress=progress, workers=rd.cfg.runtime.num_workers)


def encode_texts(model: DualEncoder, texts: Sequence[str], device: str = "cpu",
                 batch_size: int = 128) -> np.ndarray:
    """Embeddings ``[len(texts), dim]`` of free text (prompts, queries); see ``embed_texts``."""
    return embed_texts(model, texts, device=device, batch_size=batch_size)


def select_split(table: PairTable, split: str) -> PairTable:
    """Rows of ``split``: a name, several names joined by commas, or ``all``."""
    names = "all" if split == "all" else [s.strip() for s in split.split(",") if s.strip()]
    sub = table.select(names)
    if len(sub) == 0:
        raise ConfigError(f"`split`: the {split!r} split has no rows (splits: {table.split_counts()})")
    return sub
