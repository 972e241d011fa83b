"""Images that live inside tar shards, named by reference instead of copied out.

A reference is a string that every stage can carry where it would carry a path:
``<shard path>#tar:<offset>:<size>:<member name>``. ``offset`` and ``size`` locate the
member's bytes in an uncompressed shard, so reading one back is one ``pread``: no scan of
the shard, no copy on disk. The shard path comes first, so the data-folder rule
(:func:`crossalign.data.validate.outside_roots`) applies to it as to any path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MARK", "MemberRef", "member_ref", "parse_ref", "read_member", "source_size", "source_hash",
           "is_ref"]

MARK = "#tar:"


@dataclass(frozen=True)
class MemberRef:
    """Where one member's bytes lie in a shard."""

    shard: str
    offset: int
    size: int
    name: str

    def __str__(self) -> str:
        return f"{self.shard}{MARK}{self.offset}:{self.size}:{self.name}"


def member_ref(shard: str | Path, offset: int, size: int, name: str) -> str:
    """The reference string of a member (``offset``: where its data starts in the shard)."""
    return str(MemberRef(str(shard), int(offset), int(size), name))


def is_ref(path: object) -> bool:
    return isinstance(path, str) and MARK in path


def parse_ref(path: object) -> MemberRef | None:
    """The reference in ``path``, or None for a plain path."""
    if not is_ref(path):
        return None
    shard, _, rest = str(path).rpartition(MARK)
    offset, size, name = (rest.split(":", 2) + ["", ""])[:3]
    if not (offset.isdigit() and size.isdigit() and shard):
        return None
    return MemberRef(shard, int(offset), int(size), name)


def read_member(ref: MemberRef | str) -> bytes:
    """The member's bytes. Raises ``OSError`` when the shard is gone or shorter than the
    reference says (it changed since it was read)."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    fd = os.open(r.shard, os.O_RDONLY)
    try:
        data = os.pread(fd, r.size, r.offset)
    finally:
        os.close(fd)
    if len(data) != r.size:
        raise OSError(f"{r.shard} ends before member {r.name} (it changed since it was read)")
    return data


def source_size(path: str) -> int:
    """Bytes of a file or a referenced member; -1 when it is not there."""
    r = parse_ref(path)
    try:
        if r is None:
            return os.stat(path).st_size if os.path.isfile(path) else -1
        return r.size if os.stat(r.shard).st_size >= r.offset + r.size else -1
    except OSError:
        return -1


def source_hash(path: str) -> str:
    """SHA-256 of a file's or a referenced member's bytes (raises ``OSError``)."""
    from crossalign._io import sha256_file

    r = parse_ref(path)
    if r is None:
        return sha256_file(path)
    return hashlib.sha256(read_member(r)).hexdigest()
