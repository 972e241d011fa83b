"""``crossalign.check``, ``convert``, ``synth`` and ``towers``: data folders made, checked and
converted, and the towers crossalign can build."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from crossalign.errors import ConfigError, DataError

__all__ = ["check", "convert", "synth", "towers"]


def _data_config(config, overrides: Sequence[str], format: str, strict: bool):
    from crossalign.api._training import recipe_config

    sets = list(overrides)
    if format != "auto":
        sets.append(f"data.format={format}")
    if strict:
        sets.append("data.strict=true")
    return recipe_config(config, sets)


def check(data: str | Path, *, format: str = "auto", config=None, overrides: Sequence[str] = (),
          json: str | Path | None = None, strict: bool = False, no_images: bool = False, workers: int = 0) -> dict:
    """Everything wrong with a data set, named by file and row (``crossalign check``): counts,
    splits, captions per image, bad rows and unreadable images.

    Args:
        data: a data folder or file, any supported layout.
        format: the layout (``auto`` detects it); config, overrides: its ``data`` settings.
        json: also write the report to this JSON file.
        strict: raise if any row would be skipped.
        no_images: do not decode images (only check that they exist).
        workers: processes that decode images (0: all cores).

    Returns:
        The report as a dict (``ok``, ``rows_skipped``, ``problems``, ...).
    """
    from crossalign._io import atomic_write_json
    from crossalign.data.doctor import check_data
    from crossalign.models.text import token_counter

    cfg = _data_config(config, overrides, format, False)
    report = check_data(data, cfg.data, cfg.model.text.max_tokens, lambda: token_counter(cfg.model.text),
                        images=not no_images, workers=workers)
    if json and str(json) != "-":  # '-' also means none
        atomic_write_json(json, report)
    if strict and not report["ok"]:
        raise DataError(f"{data}: {report['rows_skipped']} row(s) would be skipped (`strict`)")
    return report


def convert(src: str | Path, *, out: str | Path | None = None, format: str = "auto", config=None,
            overrides: Sequence[str] = (), strict: bool = False, progress: bool = True):
    """Write any supported layout as ``images/ + captions.txt + splits/`` (``crossalign convert``).

    Returns:
        ``(table, problems)``: the :class:`~crossalign.data.table.PairTable` written and the
        problems of the rows skipped (each names its file and row).
    """
    from crossalign.data.convert import convert_to_folder

    if not out:
        raise ConfigError("give `out`: the new folder to write")
    return convert_to_folder(src, out, _data_config(config, overrides, format, strict).data, quiet=not progress)


def synth(*, out: str | Path | None = None, n: int = 600, seed: int = 0, size: int = 128) -> Path:
    """Generate the built-in shapes data set (``crossalign synth``): ``n`` images of coloured
    shapes, ``size`` pixels a side, five captions each, into ``out``; returns the folder."""
    from crossalign.data.synthetic import make_shapes_dataset

    if not out:
        raise ConfigError("give `out`: the folder to write")
    return Path(make_shapes_dataset(out, n, seed, size))


def towers(name: str | None = None, *, modality: str | None = None) -> list[dict]:
    """The towers crossalign can build (``crossalign towers``): every registered one with its
    width, parameter count, weights and preprocessing, the library prefixes (``timm:``,
    ``hf:``), then the pretrained models; or, given ``name``, that one tower alone (prefixed
    names too: ``timm:resnet50``)."""
    from crossalign.models.pretrained import PRETRAINED_KINDS
    from crossalign.models.registry import describe, describe_models

    if name:
        return [describe(name)]
    if modality not in (None, "image", "text"):
        raise ConfigError(f"`modality` is image or text, got {modality!r}")
    rows = describe_models(modality)
    pretrained = [{"name": f"{prefix}:", "modality": "pretrained", "description": text}
                  for prefix, text in PRETRAINED_KINDS.items()]
    return rows + ([] if modality else pretrained)
