"""Atomic, checksummed file writes: a crash never leaves a half-written result behind.

Every result is written to a temporary file beside its target and renamed over it, so
a reader sees the old file or the new one, never a mix. A write the disk refuses (full,
over quota, read-only, no permission) raises :class:`WriteError` naming the path, and
the file that was there before is left as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from crossalign.errors import WriteError

__all__ = ["DISK_ERRNOS", "disk_error", "atomic_path", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "sha256_bytes", "sha256_file"]

# what a disk answers when it cannot take a file: the user's to fix, not a bug
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.EFBIG})


def disk_error(path: str | Path, err: OSError) -> WriteError:
    """The :class:`WriteError` for ``err`` raised while writing ``path``."""
    why = err.strerror or str(err)
    out = WriteError(f"{path}: cannot write ({why}); files written before are unchanged")
    out.errno, out.filename = err.errno, str(path)  # still readable as the OSError it is
    return out


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    Raises:
        WriteError: the disk refused the write; ``path`` keeps its earlier content.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(path, e) from e
        raise
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are files others may read
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno in DISK_ERRNOS:
            raise disk_error(path, e) from e
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to ``path`` atomically (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` atomically, pretty-printed."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the checksum stored beside what was written)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
