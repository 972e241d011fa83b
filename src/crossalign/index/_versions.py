"""Versions of an index folder: which one ``CURRENT`` names, and who holds which.

Versions are held, and removed only when nobody holds them, across processes:

- A reader takes a shared ``flock`` on ``v-<token>/.held`` before it opens any file of the
  version and keeps it until it closes the version (:func:`hold_version`). A build holds its
  new folder the same way, from the moment the folder exists until ``CURRENT`` names it.
- A folder is removed (:func:`remove_unheld`) only by one who gets ``LOCK_EX | LOCK_NB`` on
  its ``.held`` and then reads a ``CURRENT`` that does not name it; anything else is left
  for later. The build removes after it replaces ``CURRENT``, and so does a reader that has
  just closed a version ``CURRENT`` no longer names: the last one to let go removes it.
- Under that lock the remover first renames ``v-<token>`` to ``.v-<token>.tmp``, so a reader
  that read the old name in ``CURRENT`` finds no folder rather than half of one, and reads
  ``CURRENT`` again; one that opened ``.held`` just before waits for the lock, finds the file
  unlinked, and does the same.
- ``.v-<token>.tmp`` folders nobody holds (killed builds, interrupted removals) go too. A
  process that cannot write the index folder removes nothing.

``flock`` locks belong to open files, so they work between threads of one process as between
processes, and a killed process's locks go with it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from crossalign.errors import InputNotFound

__all__ = ["is_index", "read_current", "relative_message", "hold_version", "remove_unheld",
           "new_folder", "HELD"]

HELD = ".held"  # the lock file of a version folder


def is_index(root: str | Path) -> bool:
    """True when ``root`` holds an index (a ``CURRENT`` file naming a version)."""
    return (Path(root) / "CURRENT").is_file()


def read_current(root: str | Path) -> str:
    """The name of the version ``CURRENT`` names; raises ``OSError`` or ``UnicodeDecodeError``
    when it cannot be read."""
    return (Path(root) / "CURRENT").read_text(encoding="utf-8").strip()


def relative_message(root: str | Path, text: str) -> str:
    """``text`` with the index folder's own path left out, so that a file in a message shown to
    a client is named relative to the index (``v-abc/images.npy``), never where it lies."""
    root = Path(root)
    prefixes = {str(root.resolve()), str(root.absolute())}
    if str(root) != ".":
        prefixes.add(str(root))
    for prefix in sorted(prefixes, key=len, reverse=True):  # the longest first
        text = text.replace(prefix + os.sep, "")
    return text


def _open_held(vdir: Path) -> int | None:
    """A descriptor of ``vdir``'s lock file, made when the folder has none (a version written
    before versions were held); None where it cannot be made (a folder this process may not
    write). Raises :class:`InputNotFound` when the folder is gone."""
    held = vdir / HELD
    try:
        return os.open(held, os.O_RDONLY)
    except FileNotFoundError:
        pass
    try:
        return os.open(held, os.O_RDONLY | os.O_CREAT, 0o644)
    except FileNotFoundError:
        raise InputNotFound(f"{vdir}: the index version named by CURRENT is missing") from None
    except OSError:
        return None


def hold_version(vdir: str | Path) -> BinaryIO | None:
    """A shared lock on the version folder ``vdir``, held until the returned file is closed
    (None for a version without a lock file in a folder this process may not write: nobody
    can remove that one either).

    Raises :class:`InputNotFound` when the folder is gone, or was removed while this waited
    for the lock (read ``CURRENT`` again).
    """
    vdir = Path(vdir)
    fd = _open_held(vdir)
    if fd is None:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a removal in progress
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        raise InputNotFound(f"{vdir}: the index version named by CURRENT is missing (removed)")
    return os.fdopen(fd, "rb")  # a file object: a store dropped without close() lets go too


def _removable(name: str) -> bool:
    return name.startswith("v-") or (name.startswith(".v-") and name.endswith(".tmp"))


def remove_unheld(root: str | Path) -> None:
    """Remove every version folder of ``root`` that nobody holds and ``CURRENT`` does not
    name, and the ``.v-*.tmp`` folders nobody holds; leave the others for later (see the
    module docstring). Removes nothing where this process may not write ``root``."""
    root = Path(root)
    if not os.access(root, os.W_OK):
        return
    try:
        folders = sorted(p for p in root.iterdir() if _removable(p.name) and p.is_dir())
    except OSError:
        return
    for vdir in folders:
        _remove_if_unheld(root, vdir)


def _remove_if_unheld(root: Path, vdir: Path) -> None:
    try:
        fd = _open_held(vdir)
    except InputNotFound:  # removed by another meanwhile
        return
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if vdir.name.startswith("v-"):
            try:
                if read_current(root) == vdir.name:
                    return
            except (OSError, UnicodeDecodeError):
                return  # which version is live cannot be told: keep them all
            vdir = vdir.rename(root / f".{vdir.name}.tmp")
        shutil.rmtree(vdir, ignore_errors=True)
    except OSError:  # held (EWOULDBLOCK), or already gone
        return
    finally:
        os.close(fd)  # after the removal: a reader waiting for the lock then finds it unlinked


def new_folder(root: Path) -> tuple[str, Path, BinaryIO | None]:
    """A new version's name, its folder ``.v-<token>.tmp`` and the lock that holds it, taken
    as soon as the folder exists so that no remover takes it for a killed build's."""
    while True:
        name = f"v-{uuid.uuid4().hex[:12]}"
        tmp_dir = root / f".{name}.tmp"
        tmp_dir.mkdir()
        try:
            return name, tmp_dir, hold_version(tmp_dir)
        except InputNotFound:  # a removal took the empty folder before it was held
            continue
