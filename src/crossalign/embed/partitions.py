"""Embedding partitions: one task's vectors and metadata, written as a unit a scheduler can
retry.

A partition is a folder ``part-<unit>`` holding ``images.npy`` ``[n_images, dim]`` and
``texts.npy`` ``[n_captions, dim]`` (float32, unit rows), ``images.parquet`` (image id, path
or shard reference, split, content hash, date, labels as JSON) and ``captions.parquet``
(image row, caption, origin), and ``done.json`` (counts, the model's weights hash, the
SHA-256 of every file). It is written into a temporary folder and renamed into place in one
step, so a partition exists whole or not at all: a killed task leaves nothing a reader
would take, and a task run again skips every partition already there. Any scheduler can
run the tasks (Slurm arrays, torchrun, Spark); they share nothing but the output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Partition", "partition_name", "is_done", "write_partition", "read_partition", "list_partitions",
           "DONE"]

DONE = "done.json"
FILES = ("images.npy", "texts.npy", "images.parquet", "captions.parquet")


@dataclass
class Partition:
    """One partition read back."""

    name: str
    weights_hash: str
    image_emb: np.ndarray  # [n_images, dim]
    text_emb: np.ndarray  # [n_captions, dim]
    images: list[dict]  # image_id, path, split, content_hash, date, labels (dict)
    captions: list[dict]  # image (row of images), caption, origin


def partition_name(unit: int) -> str:
    return f"part-{unit:05d}"


def is_done(out: str | Path, unit: int) -> bool:
    """Whether the partition of ``unit`` was written whole."""
    return (Path(out) / partition_name(unit) / DONE).is_file()


def _write_parquet(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def write_partition(out: str | Path, unit: int, weights_hash: str, image_emb: np.ndarray,
                    text_emb: np.ndarray, images: list[dict], captions: list[dict]) -> bool:
    """Write partition ``unit`` under ``out`` atomically; False when another task already had.

    Raises:
        WriteError: the disk refused the write (nothing of the partition is left).
    """
    from crossalign._io import DISK_ERRNOS, atomic_write_json, disk_error, sha256_file

    out = Path(out)
    final = out / partition_name(unit)
    tmp = out / f".{final.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "images.npy", np.ascontiguousarray(image_emb, np.float32))
        np.save(tmp / "texts.npy", np.ascontiguousarray(text_emb, np.float32))
        _write_parquet(tmp / "images.parquet", {
            "image_id": [m["image_id"] for m in images], "path": [m["path"] for m in images],
            "split": [m["split"] for m in images], "content_hash": [m["content_hash"] for m in images],
            "date": [m["date"] for m in images],
            "labels": [json.dumps(m["labels"], sort_keys=True, default=str) for m in images]})
        _write_parquet(tmp / "captions.parquet", {
            "image": [int(c["image"]) for c in captions], "caption": [c["caption"] for c in captions],
            "origin": [c["origin"] for c in captions]})
        atomic_write_json(tmp / DONE, {"version": 1, "unit": unit, "weights_hash": weights_hash,
                                       "images": len(images), "captions": len(captions),
                                       "sha256": {f: sha256_file(tmp / f) for f in FILES}})
        try:
            os.rename(tmp, final)  # one step; fails when the folder exists (another task won)
        except OSError:
            if is_done(out, unit):
                return False
            raise
        return True
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(tmp, e) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_partition(folder: str | Path) -> Partition:
    """A whole partition, its files checked against ``done.json``.

    Raises:
        DataError: a file is missing or does not match its checksum.
    """
    import pyarrow.parquet as pq

    from crossalign._io import sha256_file
    from crossalign.errors import DataError

    folder = Path(folder)
    done = json.loads((folder / DONE).read_text(encoding="utf-8"))
    for name, digest in done["sha256"].items():
        if not (folder / name).is_file() or sha256_file(folder / name) != digest:
            raise DataError(f"{folder / name}: missing or damaged (its checksum in {DONE} does not match); "
                            f"delete {folder} and run its embed task again")
    imgs = pq.read_table(folder / "images.parquet").to_pylist()
    for m in imgs:
        m["labels"] = json.loads(m["labels"])
    return Partition(folder.name, done["weights_hash"], np.load(folder / "images.npy", allow_pickle=False),
                     np.load(folder / "texts.npy", allow_pickle=False), imgs,
                     pq.read_table(folder / "captions.parquet").to_pylist())


def list_partitions(out: str | Path) -> list[Path]:
    """Finished partitions under ``out``, in unit order (temporary folders are not listed)."""
    return sorted(p for p in Path(out).glob("part-*") if (p / DONE).is_file())
