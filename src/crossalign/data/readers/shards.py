"""webdataset tar shards, read as a stream, for collections too large for a folder.

A shard holds samples as consecutive members sharing a key: ``000123.jpg`` (or ``.png``,
``.webp`` ...) with ``000123.txt`` (one caption per line), optionally ``000123.json``
(scalar fields become labels) and ``000123.cls`` (label ``class``). Shards (``.tar``,
``.tar.gz``, ``.tgz``) are read with tarfile's streaming mode: one member at a time, no
seeking, never a whole shard in memory. A shard named ``train-000.tar`` (or kept in a
``train/`` folder) gives its split.

Where the images stay: in an uncompressed shard (``.tar``) an image member is named by a
reference, ``<shard>#tar:<offset>:<size>:<member>`` (:mod:`crossalign.data.members`), which
every stage opens as it opens a path: image loading, the feature cache's content key, report
thumbnails, the index and the search service read the member's bytes in place with one
``pread``. The stream skips the image bytes while reading (only captions and labels are
read), and no image is written to disk. A compressed shard cannot be read at an offset,
so its images (and every image with ``data.shard_images=extract``) are written once into a
content-addressed folder, ``<extract dir>/<ab>/<sha256 of the bytes>.<ext>``; the extract dir
is ``data.extract_dir`` or ``extracted/`` in the feature cache folder. A damaged shard
costs the samples after the damage, not the run.
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
from crossalign.data.members import member_ref
from crossalign.errors import DataError
from crossalign.data.splits import normalize_split, split_from_name
from crossalign.data.table import PairTable

__all__ = ["read_webdataset", "shard_files", "expand_braces", "extract_dir", "in_place", "SHARD_EXTS"]

SHARD_EXTS = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTS}


def expand_braces(pattern: str) -> list[str]:
    """webdataset's shard patterns: ``train-{000..099}.tar`` (zero-padded as written) and
    ``{train,val}-000.tar``, several in one pattern."""
    import re

    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, tail, body = pattern[:m.start()], pattern[m.end():], m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [x for o in options for x in expand_braces(head + o + tail)]


def shard_files(root: Path) -> list[Path]:
    """``root`` itself, the shards a brace pattern names, or every shard under folder
    ``root``, sorted."""
    if "{" in str(root) and not root.exists():
        files = [Path(p) for p in expand_braces(str(root))]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{root}: {len(missing)} of {len(files)} shards are missing (first: {missing[0]})")
        return files
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


def in_place(shard: Path, cfg: DataConfig) -> bool:
    """Whether the images of ``shard`` are read in place (an uncompressed shard, and
    ``data.shard_images`` is ``reference``)."""
    return cfg.shard_images == "reference" and shard.name.lower().endswith(".tar")


BLOCK = 512


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").strip()
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    return int(field or b"0", 8)


def _header(buf: bytes, where: str) -> tuple[str, int, bytes]:
    """``(name, size, type)`` of one 512-byte ustar header; raises ``tarfile.ReadError``."""
    stored = _octal(buf[148:156])
    if stored != sum(buf[:148]) + 8 * 32 + sum(buf[156:]):
        raise tarfile.ReadError(f"bad header checksum at {where}")
    name = buf[:100].split(b"\0", 1)[0]
    if buf[257:262] == b"ustar" and buf[345:500].strip(b"\0"):
        name = buf[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape"), _octal(buf[124:136]), buf[156:157]


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any."""
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        _, _, rec = line.partition(" ")
        if rec.startswith("path="):
            return rec[5:]
    return None


def _members(shard: Path, skip_images: bool) -> Iterator[tuple[str, bytes | None, int, int]]:
    """``(name, bytes or None, data offset, size)`` of each regular member of an uncompressed
    shard, read header by header: image bytes are seeked over, not read."""
    total = shard.stat().st_size
    with open(shard, "rb") as f:
        pos, long_name = 0, None
        while pos + BLOCK <= total:
            buf = f.read(BLOCK)
            if buf == b"\0" * BLOCK:
                return  # end of archive
            name, size, kind = _header(buf, f"{shard}:{pos}")
            data_at, pos = pos + BLOCK, pos + BLOCK + -(-size // BLOCK) * BLOCK
            if data_at + size > total:
                raise tarfile.ReadError(f"unexpected end of data in member {name!r}")
            if kind in (b"L", b"x"):  # GNU long name, pax header: they name the next member
                raw = f.read(size)
                long_name = raw.rstrip(b"\0").decode("utf-8", "surrogateescape") if kind == b"L" else _pax_path(raw)
            elif kind in (b"0", b"\0", b"7"):
                name, long_name = long_name or name, None
                skip = skip_images and _key_ext(name)[1] in _IMAGE_EXTS
                yield name, None if skip else f.read(size), data_at, size
            else:  # folders, links, global headers: nothing to read
                long_name = None if kind != b"g" else long_name
            f.seek(pos)
        if pos != total:  # cut inside a header or a member's padding: not the end a tar writer leaves
            raise tarfile.ReadError(f"unexpected end of data at offset {min(pos, total)}")


def _streamed(shard: Path) -> Iterator[tuple[str, bytes | None, int, int]]:
    """The same for a compressed shard, through tarfile's streaming mode."""
    with tarfile.open(shard, mode="r|*") as tf:
        for member in tf:
            if member.isfile():
                yield member.name, tf.extractfile(member).read(), member.offset_data, member.size


def _samples(shard: Path, in_place: bool) -> Iterator[tuple[str, dict[str, tuple]]]:
    """``(key, {ext: (member name, bytes or None, offset, size)})`` per sample, one member at
    a time; in place (an uncompressed shard), image bytes are not read (None)."""
    key, parts = None, {}
    for name, data, offset, size in (_members(shard, True) if in_place else _streamed(shard)):
        k, ext = _key_ext(name)
        if k != key and parts:
            yield key, parts
            parts = {}
        key = k
        parts[ext] = (name, data, offset, size)
    if parts:
        yield key, parts


def _labels(parts: dict[str, tuple]) -> dict:
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
    name, data, offset, size = parts[image_ext]
    path = member_ref(shard, offset, size, name) if data is None else _store(data, image_ext, dest)
    if cap_ext not in parts:
        uncaptioned.append(f"{shard}:{name}")
        return
    member, raw = parts[cap_ext][:2]
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
    roots, extracted = [str((root if root.is_dir() else root.parent).resolve())], False
    for shard in shards:
        split = split_from_name(shard.name) or normalize_split(shard.parent.name)
        key, here = None, in_place(shard, cfg)
        extracted = extracted or not here
        shard = shard.resolve()  # references name the shard wherever the command runs
        try:
            for key, parts in _samples(shard, here):
                _add_sample(out, shard, key, parts, split, dest, cfg.caption_column or "txt", uncaptioned)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            after = f" after sample {key!r}" if key else ""
            out.skip("bad_shard", str(shard), f"shard is damaged{after} ({type(e).__name__}: {e}); "
                                              f"the rest of this shard")
    return out.finish(format="webdataset", root=str(root), uncaptioned=uncaptioned,
                      extract_dir=str(dest) if extracted else "", image_roots=roots + [str(dest)] * extracted)
