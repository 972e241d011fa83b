"""FeatureCache: outputs of frozen towers, computed once, kept on disk, read in batches.

An entry is keyed by the tower (its name, a hash of its weights and its preprocessing)
and by the content of the input (the bytes of an image file, the text of a caption),
so a changed image is recomputed and a renamed one is not.

On disk, one folder per tower fingerprint holds

- segment files ``seg-<random>.bin``: raw rows of one dtype (float16 unless the cache
  root asks for float32, see :func:`cache_root`), each appended to by one writer only,
  in chunks, and memory-mapped by readers, so a store of millions of rows is never read
  whole into memory: the kernel pages in the rows a batch uses and may drop them again;
- ``store.sqlite``: the key index (key -> chunk and row) and, per chunk, its segment,
  its first row, its row count and the SHA-256 of its bytes.

A writer appends a chunk to its own segment file, flushes it to disk, and only then
lists the chunk and its keys in one SQLite transaction. So an interrupted extraction
keeps every finished chunk (a half-written one is bytes nobody lists), processes sharing
a cache never lose each other's chunks (SQLite serialises the transactions), and a
chunk whose bytes no longer match its checksum (flipped bits, truncation, a file put in
its place) is never used: it is marked bad, its entries count as missing and are
computed again. A chunk is checked the first time a process looks its keys up. Segment
bytes are interpreted only as numbers of the listed dtype; nothing in the cache is
unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from crossalign.config import CACHE_DTYPES, cache_root

__all__ = ["FeatureCache", "FeatureRows", "weights_hash", "tower_fingerprint", "text_key",
           "cache_root", "root_dtype", "CACHE_DTYPES"]

log = logging.getLogger("crossalign.features")

STORE = "store.sqlite"
SEGMENT_BYTES = 1 << 30  # a writer starts a new segment file past this size
STALE_SECONDS = 3600  # an unlisted segment this old was left by a killed process, not a slow one
_SQL_TIMEOUT = 600.0  # seconds a transaction waits for another process's
_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,
    dtype TEXT NOT NULL, width INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, seg INTEGER NOT NULL,
    start INTEGER NOT NULL, rows INTEGER NOT NULL, sha256 TEXT NOT NULL,
    bad INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, chunk INTEGER NOT NULL,
    row INTEGER NOT NULL) WITHOUT ROWID;
"""


def weights_hash(module: torch.nn.Module, salt: str = "") -> str:
    """The one hash of a module's weights: every tensor of its state dict, by name and in order,
    after ``salt`` (what else the hash must depend on)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(salt.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tower_fingerprint(tower: torch.nn.Module, preprocess: dict) -> str:
    """Hash of a tower's name, weights and preprocessing: the key of its cached outputs."""
    prep = json.dumps(preprocess, sort_keys=True, default=str)
    return weights_hash(tower, str(getattr(tower, "name", type(tower).__name__)) + prep)


def text_key(text: str) -> str:
    """Content hash of a caption."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def root_dtype(root: str | Path) -> str:
    """The dtype a cache root (from :func:`cache_root`) stores."""
    return "float32" if Path(root).name == "float32" else "float16"


def _disk(path: Path, e: BaseException):
    """A WriteError naming ``path`` for a full or read-only disk, else None."""
    from crossalign._io import DISK_ERRNOS, disk_error

    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        return disk_error(path, e)
    if isinstance(e, sqlite3.OperationalError) and any(
            s in str(e) for s in ("disk is full", "readonly", "read-only", "unable to open")):
        from crossalign.errors import WriteError

        return WriteError(f"{path}: cannot write the feature cache ({e})")
    return None


class FeatureRows:
    """Rows of a :class:`FeatureCache`, read when indexed: ``rows[idx]`` is a float32
    ``[len(idx), width]`` array for an index array or slice, ``np.asarray(rows)`` all of
    them. Holds only where each row is (two small integers a row), never the rows."""

    def __init__(self, cache: "FeatureCache", seg: np.ndarray, row: np.ndarray, width: int) -> None:
        self.cache, self.seg, self.row, self.width = cache, seg, row, width

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.seg), self.width)

    @property
    def dtype(self):
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.seg)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[np.asarray([idx])][0]
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
        return self.cache.gather(self.seg[idx], self.row[idx], self.width)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


class FeatureCache:
    """Key -> feature vector store for one tower fingerprint.

    Args:
        root: cache folder shared by all towers (see :func:`cache_root` for the dtype).
        fingerprint: :func:`tower_fingerprint` of the tower whose outputs are stored.
        dtype: how rows are stored; by default the root's (:func:`root_dtype`).
    """

    def __init__(self, root: str | Path, fingerprint: str, dtype: str | None = None) -> None:
        self.dir = Path(root) / fingerprint
        self.dtype = dtype or root_dtype(root)
        self._db: sqlite3.Connection | None = None
        self._maps: dict[int, np.ndarray] = {}  # segment id -> memory map of its listed rows
        self._segs: dict[int, tuple[str, str, int]] = {}  # segment id -> (name, dtype, width)
        self._checked: set[int] = set()  # chunks whose checksum held in this process
        self._out = None  # (segment id, file, rows) this process appends to

    # --- the index -------------------------------------------------------------------------

    def _conn(self, write: bool = False) -> sqlite3.Connection | None:
        """The store's SQLite connection; None when there is no store and ``write`` is false."""
        if self._db is None:
            path = self.dir / STORE
            if not write and not path.exists():
                return None
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                try:
                    with _locked(self.dir):  # one process at a time creates it and turns on WAL
                        db = _open_store(path)
                except sqlite3.DatabaseError as e:
                    if isinstance(e, sqlite3.OperationalError):  # locked, full, read-only: not damage
                        raise
                    log.warning("%s: unreadable cache index (%s); it is kept as %s.damaged and "
                                "its features will be computed again", path, e, path.name)
                    os.replace(path, path.with_name(path.name + ".damaged"))
                    for side in ("-wal", "-shm"):
                        path.with_name(path.name + side).unlink(missing_ok=True)
                    with _locked(self.dir):
                        db = _open_store(path)
            except (OSError, sqlite3.Error) as e:
                err = _disk(path, e)
                if err is not None:
                    raise err from e
                raise
            self._db = db
        return self._db

    def segments(self) -> list[dict]:
        """The listed segment files: ``name``, ``rows`` (listed, usable) and ``chunks``."""
        db = self._conn()
        if db is None:
            return []
        return [{"name": n, "rows": r or 0, "chunks": c} for n, r, c in db.execute(
            "SELECT segments.name, sum(chunks.rows), count(chunks.id) FROM segments "
            "LEFT JOIN chunks ON chunks.seg = segments.id AND chunks.bad = 0 "
            "GROUP BY segments.id ORDER BY segments.id")]

    def close(self) -> None:
        """Close the index and the segment files (reopened when next used)."""
        if self._out is not None:
            self._out[1].close()
            self._out = None
        if self._db is not None:
            self._db.close()
            self._db = None
        self._maps.clear()

    def refresh(self) -> None:
        """Forget what was mapped, so rows other processes listed since are seen."""
        self._maps.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __len__(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        return db.execute("SELECT count(*) FROM entries JOIN chunks ON chunks.id = entries.chunk "
                          "WHERE chunks.bad = 0").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        return not self.missing([key])

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys not yet stored (in input order, without repeats)."""
        keys = list(dict.fromkeys(keys))
        seg, _ = self._locate(keys)
        return [k for k, s in zip(keys, seg.tolist()) if s < 0]

    def _locate(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Segment id and row of each key (-1, -1 where it is missing or its chunk is bad)."""
        seg = np.full(len(keys), -1, np.int32)
        row = np.full(len(keys), -1, np.int64)
        db = self._conn()
        if db is None or not keys:
            return seg, row
        db.execute("CREATE TEMP TABLE IF NOT EXISTS want (pos INTEGER PRIMARY KEY, key TEXT NOT NULL)")
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM want")
            db.executemany("INSERT INTO want VALUES (?, ?)", enumerate(keys))
            found = db.execute(
                "SELECT want.pos, entries.chunk, chunks.seg, chunks.start + entries.row "
                "FROM want JOIN entries ON entries.key = want.key "
                "JOIN chunks ON chunks.id = entries.chunk WHERE chunks.bad = 0").fetchall()
            db.execute("DELETE FROM want")
        finally:
            db.execute("COMMIT")
        if not found:
            return seg, row
        pos, chunk, s, r = (np.asarray(c, np.int64) for c in zip(*found))
        bad = self._check(set(np.unique(chunk).tolist()))
        ok = ~np.isin(chunk, list(bad)) if bad else np.ones(len(pos), bool)
        seg[pos[ok]], row[pos[ok]] = s[ok], r[ok]
        return seg, row

    def _check(self, chunks: set[int]) -> set[int]:
        """Check the not yet checked ``chunks`` against their checksums; the bad ones are
        marked so in the index (their entries count as missing) and returned."""
        todo = sorted(chunks - self._checked)
        bad = set()
        db = self._conn()
        for lo in range(0, len(todo), 500):
            part = todo[lo:lo + 500]
            q = ",".join("?" * len(part))
            for cid, sid, start, n, sha in db.execute(
                    f"SELECT id, seg, start, rows, sha256 FROM chunks WHERE id IN ({q})", part):
                why = self._verify(sid, start, n, sha)
                if why is None:
                    self._checked.add(cid)
                    continue
                name = self._segment(sid)[0]
                log.warning("%s: rows %d-%d %s; their %d features will be computed again",
                            self.dir / name, start, start + n - 1, why, n)
                bad.add(cid)
        if bad:
            try:
                db.executemany("UPDATE chunks SET bad = 1 WHERE id = ?", [(c,) for c in bad])
            except sqlite3.Error as e:  # a read-only cache: this process still skips them
                log.warning("%s: cannot mark damaged chunks (%s)", self.dir / STORE, e)
        return bad

    def _verify(self, sid: int, start: int, n: int, sha: str) -> str | None:
        """Why rows ``start..start+n`` of segment ``sid`` cannot be used, or None."""
        try:
            mm = self._map(sid, start + n)
        except (OSError, ValueError) as e:
            return f"cannot be read ({getattr(e, 'strerror', None) or e})"
        if mm is None:
            return "are missing (the segment file is shorter than its index says)"
        if hashlib.sha256(memoryview(np.ascontiguousarray(mm[start:start + n])).cast("B")).hexdigest() != sha:
            return "do not match their checksum (damaged or replaced)"
        return None

    def _segment(self, sid: int) -> tuple[str, str, int]:
        if sid not in self._segs:
            self._segs[sid] = self._conn().execute(
                "SELECT name, dtype, width FROM segments WHERE id = ?", (sid,)).fetchone()
        return self._segs[sid]

    def _map(self, sid: int, rows: int) -> np.ndarray | None:
        """A read-only memory map of at least ``rows`` rows of segment ``sid`` (None when
        the file is shorter)."""
        mm = self._maps.get(sid)
        if mm is not None and len(mm) >= rows:
            return mm
        name, dtype, width = self._segment(sid)
        path = self.dir / name
        itemsize = np.dtype(dtype).itemsize * width
        have = path.stat().st_size // itemsize
        if have < rows:
            return None
        mm = np.memmap(path, dtype=dtype, mode="r", shape=(have, width)) if have else np.zeros((0, width), dtype)
        self._maps[sid] = mm
        return mm

    # --- reading -------------------------------------------------------------------------

    def rows(self, keys: list[str]) -> FeatureRows:
        """The rows of ``keys``, read when indexed; every key must be present."""
        seg, row = self._locate(list(keys))
        if (seg < 0).any():
            raise KeyError(keys[int(np.flatnonzero(seg < 0)[0])])
        width = self._segment(int(seg[0]))[2] if len(seg) else 0
        return FeatureRows(self, seg, row, width)

    def get(self, keys: list[str]) -> np.ndarray:
        """``[len(keys), width]`` float32 features; every key must be present."""
        return self.rows(keys)[:]

    def gather(self, seg: np.ndarray, row: np.ndarray, width: int) -> np.ndarray:
        """Float32 rows at (segment id, row) pairs, read from the memory maps."""
        out = np.empty((len(seg), width), np.float32)
        if not len(seg):
            return out
        order = np.argsort(seg, kind="stable")
        sorted_seg = seg[order]
        cuts = np.flatnonzero(np.diff(sorted_seg)) + 1
        for part in np.split(order, cuts):
            sid = int(seg[part[0]])
            rows = row[part]
            mm = self._map(sid, int(rows.max()) + 1)
            if mm is None:
                raise OSError(f"{self.dir / self._segment(sid)[0]}: shorter than its index says")
            out[part] = mm[rows]
        return out

    def entries(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every usable (key, float32 vector), in no set order."""
        db = self._conn()
        if db is None:
            return
        keys = [k for (k,) in db.execute("SELECT key FROM entries")]
        seg, row = self._locate(keys)
        for s in range(0, len(keys), 4096):
            ok = seg[s:s + 4096] >= 0
            sub = np.asarray(keys[s:s + 4096])[ok]
            if len(sub):
                width = self._segment(int(seg[s:s + 4096][ok][0]))[2]
                yield from zip(sub.tolist(), self.gather(seg[s:s + 4096][ok], row[s:s + 4096][ok], width))

    # --- writing -------------------------------------------------------------------------

    def put(self, keys: list[str], feats: np.ndarray) -> None:
        """Store a batch of features as one chunk of this process's segment, then list it.

        Raises:
            WriteError: the cache folder cannot be written (full or read-only disk).
        """
        if not len(keys):
            return
        feats = np.ascontiguousarray(feats, dtype=self.dtype)
        if feats.ndim != 2 or len(feats) != len(keys):
            raise ValueError(f"{len(keys)} keys for features of shape {feats.shape}")
        db = self._conn(write=True)
        data = memoryview(feats).cast("B")
        sid, f, start, name = self._segment_for(feats.shape[1], len(data))
        try:
            f.seek(start * feats.shape[1] * feats.itemsize)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            self._out = None
            f.close()
            err = _disk(self.dir / name, e)
            if err is not None:
                raise err from e
            raise
        try:
            sid = self._commit(sid, name, feats.shape[1], start, keys, hashlib.sha256(data).hexdigest())
        except BaseException:
            if sid is None:  # an unlisted new segment: left for the stale cleanup
                f.close()
            raise
        self._out = (sid, f, start + len(keys), name)

    def _segment_for(self, width: int, nbytes: int):
        """(segment id, open file, first free row, name) for a chunk of ``nbytes``; a new
        segment file when this process has none yet or its segment is full."""
        if self._out is not None:
            sid, f, rows, name = self._out
            if self._segment(sid)[2] == width and (rows * width * np.dtype(self.dtype).itemsize
                                                   + nbytes <= SEGMENT_BYTES):
                return sid, f, rows, name
            f.close()
            self._out = None
        name = f"seg-{uuid.uuid4().hex[:16]}.bin"  # unique: processes never write one file twice
        path = self.dir / name
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = _open_segment(path)
        except OSError as e:
            err = _disk(path, e)
            if err is not None:
                raise err from e
            raise
        return None, f, 0, name

    def _commit(self, sid: int | None, name: str, width: int, start: int, keys: list[str],
                sha: str) -> int:
        """List a written chunk and its keys (a new segment too) in one transaction; the
        segment's id."""
        db = self._conn(write=True)
        new = sid is None
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if new:
                    sid = db.execute("INSERT INTO segments (name, dtype, width) VALUES (?, ?, ?)",
                                     (name, self.dtype, width)).lastrowid
                    self._segs[sid] = (name, self.dtype, width)
                cid = db.execute("INSERT INTO chunks (seg, start, rows, sha256) VALUES (?, ?, ?, ?)",
                                 (sid, start, len(keys), sha)).lastrowid
                db.executemany("INSERT OR REPLACE INTO entries (key, chunk, row) VALUES (?, ?, ?)",
                               ((k, cid, r) for r, k in enumerate(keys)))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite has rolled back already after some errors
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            err = _disk(self.dir / STORE, e)
            if err is not None:
                raise err from e
            raise
        self._checked.add(cid)
        self._maps.pop(sid, None)
        if new:
            self._drop_stale()
        return sid

    def _drop_stale(self) -> None:
        """Remove unlisted segments and temporary files no live writer can still be finishing."""
        listed = {n for (n,) in self._conn().execute("SELECT name FROM segments")}
        now = time.time()
        for path in [*self.dir.glob("seg-*.bin"), *self.dir.glob(".*.tmp")]:
            try:
                if path.name not in listed and now - path.stat().st_mtime > STALE_SECONDS:
                    path.unlink()
            except FileNotFoundError:  # another process cleaned it first
                pass


def _open_segment(path: Path):
    """A new segment file, open for writing; never one another process made."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), "r+b")


def _open_store(path: Path) -> sqlite3.Connection:
    """Connect to (or create) the store's index; raises DatabaseError when it is damaged."""
    db = sqlite3.connect(path, timeout=_SQL_TIMEOUT, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        db.executescript(_SCHEMA)
        db.execute("SELECT count(*) FROM chunks").fetchone()
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the cache folder's lock (``fcntl.flock`` on ``.lock``), across processes."""
    from crossalign._io import disk_error, DISK_ERRNOS

    try:
        f = open(folder / ".lock", "a+b")
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(folder / ".lock", e) from e
        raise
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
