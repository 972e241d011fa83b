"""webdataset tar shards, read as a stream, for collections too large for a folder.

A shard holds samples as consecutive members sharing a key: ``000123.jpg`` (or ``.png``,
``.webp`` ...) with ``000123.txt`` (one caption per line), optionally ``000123.json``
(scalar fields become labels) and ``000123.cls`` (label ``class``). Shards (``.tar``,
``.tar.gz``, ``.tgz``) are read with tarfile's streaming mode: one member at a time, no
seeking, never a whole shard in memory. A shard named ``train-000.tar`` (or kept in a
``train/`` folder) gives its split.

Where the images go: everything downstream (the feature cache key, image loading, report
thumbnails, the search service) opens images by path. So while the stream passes, each
image member is written once into a content-addressed folder,
``<extract dir>/<ab>/<blake2b of the bytes>.<ext>``; the extract dir is ``data.extract_dir``
or ``extracted/`` in the feature cache folder (:func:`crossalign.config.default_cache_dir`).
An image already there is not written again, so reading the shards a second time costs
only the stream, and because the file is named by its content,
:func:`crossalign._io.sha256_file` and :func:`crossalign.data.transforms.load_image`
work on it unchanged. A damaged shard costs the samples after the damage, not the run.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

from crossalign._io import atomic_path, sha256_bytes
from crossalign.config import CacheConfig, DataConfig, default_cache_dir
from crossalign.data.readers._base import RowBuilder
from crossalign.data.transforms import IMAGE_EXTS
from crossalign.errors import DataError
from crossalign.data.splits import normalize_split, split_from_name
from crossalign.data.table import PairTable

__all__ = ["read_webdataset", "shard_files", "extract_dir", "SHARD_EXTS"]

SHARD_EXTS = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTS}


def shard_files(root: Path) -> list[Path]:
    """``root`` itself, or every shard under folder ``root``, sorted."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.name.lower().endswith(SHARD_EXTS) and p.is_file())


def extract_dir(cfg: DataConfig) -> Path:
    """Folder for images extracted from shards (``data.extract_dir`` or ``<cache>/extracted``)."""
    return Path(cfg.extract_dir).expanduser() if cfg.extract_dir else default_cache_dir(CacheConfig()) / "extracted"


def _key_ext(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def _store(data: bytes, ext: str, dest: Path) -> Path:
    """Write ``data`` to its content-addressed path (once) and return that path."""
    digest = sha256_bytes(data)
    path = dest / digest[:2] / f"{digest}.{ext}"
    if not path.is_file():
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except OSError as e:  # the extract folder, not the shard, is at fault: stop with its name
            raise DataError(f"{path}: cannot write an image extracted from a shard ({e.strerror or e}); "
                            f"set data.extract_dir to a writable folder") from None
    return path


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """``(key, {ext: (member name, bytes)})`` per sample, streaming one member at a time."""
    with tarfile.open(shard, mode="r|*") as tf:
        key, parts = None, {}
        for member in tf:
            if not member.isfile():
                continue
            k, ext = _key_ext(member.name)
            if k != key and parts:
                yield key, parts
                parts = {}
            key = k
            parts[ext] = (member.name, tf.extractfile(member).read())
        if parts:
            yield key, parts


def _labels(parts: dict[str, tuple[str, bytes]]) -> dict:
    labels: dict = {}
    if "json" in parts:
        try:
            obj = json.loads(parts["json"][1].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if isinstance(obj, dict):
            labels.update({k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))})
    if "cls" in parts:
        labels["class"] = parts["cls"][1].decode("utf-8", errors="replace").strip()
    return labels


def _add_sample(out: RowBuilder, shard: Path, key: str, parts: dict, split: str, dest: Path,
                cap_ext: str, uncaptioned: list[str]) -> None:
    image_ext = next((e for e in parts if e in _IMAGE_EXTS), None)
    if image_ext is None:
        out.skip("missing_image", f"{shard}:{key}", f"sample has no image member ({sorted(parts)})")
        return
    name, data = parts[image_ext]
    path = _store(data, image_ext, dest)
    if cap_ext not in parts:
        uncaptioned.append(f"{shard}:{name}")
        return
    member, raw = parts[cap_ext]
    lines = [ln for ln in raw.decode("utf-8", errors="surrogateescape").splitlines() if ln.strip()]
    labels = _labels(parts)
    split = normalize_split(labels.pop("split", "")) or split
    for n, caption in enumerate(lines or [""], 1):
        out.add(name, path, caption, split, f"{shard}:{member}:{n}", **labels)


def read_webdataset(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read webdataset tar shards (``.jpg``/``.png`` + ``.txt`` per key) as a stream."""
    root, cfg = Path(root), cfg or DataConfig()
    shards = shard_files(root)
    if not shards:
        raise DataError(f"{root}: no tar shards (.tar, .tar.gz, .tgz) found")
    dest, out, uncaptioned = extract_dir(cfg), RowBuilder(), []
    for shard in shards:
        split = split_from_name(shard.name) or normalize_split(shard.parent.name)
        key = None
        try:
            for key, parts in _samples(shard):
                _add_sample(out, shard, key, parts, split, dest, cfg.caption_column or "txt", uncaptioned)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            after = f" after sample {key!r}" if key else ""
            out.skip("bad_shard", str(shard), f"shard is damaged{after} ({type(e).__name__}: {e}); "
                                              f"the rest of this shard")
    return out.finish(format="webdataset", root=str(root), uncaptioned=uncaptioned,
                      extract_dir=str(dest), image_roots=[str(dest)])
