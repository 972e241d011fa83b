"""An index on disk: FAISS indexes over image and caption vectors plus SQLite metadata.

One folder holds everything::

    INDEX/
      CURRENT              the name of the live version (replaced atomically)
      v-<token>/
        .held              an empty lock file: whoever has the version open holds it shared
        meta.sqlite        info, sources, images (path, content hash, labels), captions
        images.npy         [n_images, dim] L2-normalised (FAISS row order); float32 (memory-
                           mapped), or float16 for IVF-PQ, whose candidates are re-scored
                           against rows read from it one by one (``_rows.RowFile``)
        captions.npy       [n_captions, dim]
        images.faiss       FAISS index over images.npy (inner product = cosine)
        captions.faiss
      .v-<token>.tmp/      a version being written (held by its build), or what a killed build
                           or an interrupted removal left behind

A build writes a whole new version beside the live one and then replaces ``CURRENT``, so
a build killed half-way leaves the previous index as it was. Item ids are stable across
versions: an unchanged image keeps its id; FAISS row ``r`` maps to an id through the
``row`` column.

Versions are held, and removed only when nobody holds them, across processes: see
:mod:`crossalign.index._versions`.

Index types (``index_type``), as FAISS factory strings over inner product:

========  ==========================================================================
flat      ``Flat``: exact search (the default below 100,000 vectors)
hnsw      ``HNSW32``: a graph, approximate, for 100,000 to 1,000,000 vectors
ivfpq     ``IVF{nlist},PQ{dim/4}x8``: inverted lists over compressed codes, above that
auto      chosen by the number of vectors with those thresholds and by memory, as autofaiss
          does: HNSW only where its graph and vectors take at most a quarter of this
          machine's memory (each of the two targets), IVF-PQ (compressed codes in memory,
          the float16 vectors on disk, read a candidate row at a time) otherwise
========  ==========================================================================

An approximate index's search breadth (HNSW ``efSearch``, IVF ``nprobe``) and re-scoring
depth are tuned at build time to a recall target (``--recall``, 0.95 by default) and kept in
``info["search"]`` with the recall measured.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from crossalign._io import atomic_path, atomic_write_bytes, atomic_write_text
from crossalign.errors import ConfigError, InputNotFound
from crossalign.index._filters import Filters
from crossalign.index._rows import RowFile
from crossalign.index._versions import (hold_version, is_index, new_folder, read_current,
                                        relative_message, remove_unheld)
from crossalign.index.recall import DEFAULT_RECALL, set_recall

__all__ = ["IndexStore", "ImageRecord", "CaptionRecord", "Filters", "write_version", "resolve_index_type",
           "KEYWORD_TABLES",
           "factory_string", "INDEX_TYPES", "AUTO_FLAT_BELOW", "AUTO_HNSW_BELOW", "is_index", "hnsw_bytes",
           "machine_memory", "MATCH_CACHE_BYTES"]

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
AUTO_FLAT_BELOW = 100_000  # exact search stays fast (a few ms per query at 256-d) below this
AUTO_HNSW_BELOW = 1_000_000  # HNSW's memory (vectors + graph) is still moderate below this
AUTO_MEMORY_SHARE = 0.25  # of the machine's memory, the most one target's HNSW may take
IVFPQ_MIN = 1_000  # fewer vectors cannot train 256 PQ centroids and the coarse lists well
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 80
TUNE_OTHER, TUNE_OWN = 400, 200  # tuning queries from the other target, and from the target
MATCH_CACHE_BYTES = 64 * 1024 ** 2  # the most bytes of filtered row lists one open version keeps

_SCHEMA = """
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sources (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL,
                      split TEXT NOT NULL, format TEXT NOT NULL);
CREATE TABLE images (id INTEGER PRIMARY KEY, row INTEGER UNIQUE NOT NULL, source INTEGER NOT NULL,
                     path TEXT UNIQUE NOT NULL, name TEXT NOT NULL, content_hash TEXT NOT NULL,
                     split TEXT NOT NULL, labels TEXT NOT NULL, folder TEXT NOT NULL DEFAULT '',
                     date TEXT NOT NULL DEFAULT '', ocr TEXT);
CREATE TABLE captions (id INTEGER PRIMARY KEY, row INTEGER UNIQUE NOT NULL,
                       image INTEGER NOT NULL REFERENCES images(id), text TEXT NOT NULL,
                       origin TEXT NOT NULL);
CREATE INDEX captions_image ON captions(image);
CREATE VIRTUAL TABLE image_words USING fts5(caption_words, file_name, label_words, picture_words,
                                            tokenize = 'porter unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE caption_words USING fts5(text, tokenize = 'porter unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE picture_grams USING fts5(picture_words, tokenize = 'trigram');
"""
# the keyword index: one document per image (rowid = its FAISS row) of its captions, its file
# name, its label values and the words read in the picture; one per caption (rowid = its row);
# and the words read in pictures again as character trigrams, which match a word the reader got
# nearly right ("Thinne" for "Thinner") where the words table needs it whole
KEYWORD_TABLES = {"images": "image_words", "captions": "caption_words"}
GRAM_WEIGHT = 0.5  # a picture's trigram BM25 counts this much beside its words' BM25


@dataclass
class CaptionRecord:
    """One caption of an indexed image."""

    id: int
    image: int  # id of its image
    text: str
    origin: str = ""  # "file:row" it was read from


@dataclass
class ImageRecord:
    """One indexed image and what is known about it."""

    id: int
    path: str  # absolute path of the file
    name: str  # the image id of the data set, or the path relative to the folder
    content_hash: str
    source: int = 0
    split: str = ""
    labels: dict = field(default_factory=dict)
    captions: list[CaptionRecord] = field(default_factory=list)
    folder: str = ""  # the file's folder relative to its source ("" at the source's top)
    date: str = ""  # when the picture was taken (EXIF) or else its file's mtime, ISO 8601
    ocr: str | None = None  # the words read in the picture (``index --ocr``); None: not read


def _open_vectors(path: Path, dtype: str | None):
    """An index's stored vectors: float16 ones (IVF-PQ's, re-scored a few scattered rows per
    query, from files that may be larger than memory) read row by row (:class:`RowFile`), float32
    ones memory-mapped."""
    if dtype == "float16":
        return RowFile(path)
    return np.load(path, mmap_mode="r")


def _read_faiss(path: Path, factory: str | None):
    """A stored FAISS index. A flat one is memory-mapped where FAISS can do that: its vectors
    stay in the page cache, one copy shared by every process serving the index, instead of a
    private copy in each. The approximate ones are read into memory."""
    import faiss

    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if factory == "Flat" else 0
    return faiss.read_index(str(path), flags)


def machine_memory() -> int:
    """This machine's physical memory in bytes."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8 * 1024 ** 3


def hnsw_bytes(n: int, dim: int) -> int:
    """Resident bytes of an HNSW index over ``n`` vectors and the float32 vectors it is
    re-scored against: two copies of the vectors, ``2 * M`` links per node on the ground
    layer (a 4-byte id each) and about 10 % more for the upper layers."""
    return int(n * (2 * 4 * dim + 1.1 * 2 * HNSW_M * 4))


def resolve_index_type(index_type: str, n: int, dim: int = 256, memory: int | None = None) -> str:
    """``flat``, ``hnsw`` or ``ivfpq`` for ``n`` vectors of width ``dim`` (``auto`` decides by
    size, and by ``memory``, this machine's by default: HNSW only where it fits
    :data:`AUTO_MEMORY_SHARE` of it)."""
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"`index_type` must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    if index_type != "auto":
        return index_type
    if n < AUTO_FLAT_BELOW:
        return "flat"
    memory = machine_memory() if memory is None else memory
    fits = hnsw_bytes(n, dim) <= AUTO_MEMORY_SHARE * memory
    return "hnsw" if n < AUTO_HNSW_BELOW and fits else "ivfpq"


def factory_string(kind: str, n: int, dim: int) -> str:
    """The FAISS factory string of an index type for ``n`` vectors of width ``dim``."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M}"
    nlist = max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 or 1))  # >= 39 points per list
    m = next(m for m in (dim // 4, dim // 2, dim, 1) if m >= 1 and dim % m == 0)
    return f"IVF{nlist},PQ{m}x8"


def _build_faiss(vectors: np.ndarray, kind: str, seed: int = 0):
    """A FAISS index over ``vectors`` ([n, dim], normalised) for inner-product search."""
    import faiss

    n, dim = vectors.shape
    if kind == "ivfpq" and n < IVFPQ_MIN:
        raise ConfigError(f"`index_type` ivfpq needs at least {IVFPQ_MIN} vectors to train its "
                          f"quantizers, and this index has {n}; use flat or hnsw")
    index = faiss.index_factory(dim, factory_string(kind, n, dim), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, min(n, 100_000), replace=False))]
        index.train(sample)
    if n:
        index.add(vectors)
    return index


def _write_faiss(index, path: Path) -> None:
    import faiss

    # written through Python's file (faiss.write_index to a path only prints an error from its
    # final flush, so a full disk would leave a truncated index behind and the build would go
    # on), a megabyte at a time: no serialized copy of the whole index is ever held
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))


def _write_db(path: Path, info: dict, sources: list[dict], images: list[ImageRecord]) -> None:
    """The metadata of one version, in one transaction; rows follow the order of ``images``.

    The database is built in memory and written by Python, so a full or read-only disk is
    a :class:`~crossalign.errors.WriteError` naming the file, as for every other file.
    """
    con = sqlite3.connect(":memory:")
    try:
        with con:
            con.executescript(_SCHEMA)
            con.executemany("INSERT INTO info VALUES (?, ?)",
                            [(k, json.dumps(v)) for k, v in info.items()])
            con.executemany("INSERT INTO sources VALUES (?, ?, ?, ?, ?)",
                            [(k, s["kind"], s["path"], s.get("split", ""), s.get("format", ""))
                             for k, s in enumerate(sources)])
            con.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(im.id, r, im.source, im.path, im.name, im.content_hash, im.split,
                              json.dumps(im.labels, default=str), im.folder, im.date, im.ocr)
                             for r, im in enumerate(images)])
            caps = [c for im in images for c in im.captions]
            con.executemany("INSERT INTO captions VALUES (?, ?, ?, ?, ?)",
                            [(c.id, r, c.image, c.text, c.origin) for r, c in enumerate(caps)])
            con.executemany("INSERT INTO image_words(rowid, caption_words, file_name, label_words, "
                            "picture_words) VALUES (?, ?, ?, ?, ?)",
                            [(r, "\n".join(c.text for c in im.captions), im.name,
                              " ".join(str(v) for v in im.labels.values()), im.ocr or "")
                             for r, im in enumerate(images)])
            con.executemany("INSERT INTO caption_words(rowid, text) VALUES (?, ?)",
                            [(r, c.text) for r, c in enumerate(caps)])
            con.executemany("INSERT INTO picture_grams(rowid, picture_words) VALUES (?, ?)",
                            [(r, im.ocr) for r, im in enumerate(images) if im.ocr])
        data = con.serialize()
    finally:
        con.close()
    atomic_write_bytes(path, data)


def _tuning_queries(own: np.ndarray, other: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Queries to tune an index on: vectors of the other target (text queries of an image index:
    the hard case, never in the index), and some of its own (more like this); and the group of
    each ("other" / "own"), which must each reach the recall."""
    rng = np.random.default_rng(seed)
    take = lambda x, m: x[np.sort(rng.choice(len(x), min(m, len(x)), replace=False))]  # noqa: E731
    others = take(other, TUNE_OTHER) if len(other) else other[:0]
    owns = take(own, TUNE_OWN if len(other) else TUNE_OWN + TUNE_OTHER)
    groups = np.array(["other"] * len(others) + ["own"] * len(owns))
    return np.concatenate([others, owns]).astype(np.float32), groups


def write_version(root: str | Path, info: dict, sources: list[dict], images: list[ImageRecord],
                  image_vecs: np.ndarray, caption_vecs: np.ndarray, index_type: str = "auto",
                  recall: float = DEFAULT_RECALL) -> str:
    """Write a new version of the index at ``root`` and make it the live one.

    ``caption_vecs`` rows follow the captions of ``images`` in order. An approximate index's
    search parameters are tuned to reach ``recall`` (recall@10 against exact search; see
    :mod:`crossalign.index.recall`) and recorded in ``info["search"]``. Returns the version name.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_caps = sum(len(im.captions) for im in images)
    if len(image_vecs) != len(images) or len(caption_vecs) != n_caps:
        raise ValueError(f"{len(images)} images / {n_caps} captions but {len(image_vecs)} / "
                         f"{len(caption_vecs)} vectors")
    if not 0 < recall <= 1:
        raise ConfigError(f"`recall` must be in (0, 1], got {recall}")
    counts = {"images": len(images), "captions": n_caps}
    dim = int(info["dim"])
    kinds = {t: resolve_index_type(index_type, n, dim) if n else "flat" for t, n in counts.items()}
    info = {**info, "index_type": index_type, "n_images": len(images), "n_captions": n_caps,
            "factory": {t: factory_string(kinds[t], n, dim) for t, n in counts.items()},
            "vector_dtype": {t: "float16" if kinds[t] == "ivfpq" else "float32" for t in counts},
            "search": {}}
    name, tmp_dir, held = new_folder(root)
    try:
        _write_targets(tmp_dir, info, kinds, image_vecs, caption_vecs, recall)
        _write_db(tmp_dir / "meta.sqlite", info, sources, images)
        tmp_dir.rename(root / name)
        atomic_write_text(root / "CURRENT", name + "\n")
    finally:
        if held is not None:
            held.close()  # a build that failed leaves its folder to the next removal
    remove_unheld(root)  # what readers still hold stays, for the last of them to remove
    return name


def _write_targets(folder: Path, info: dict, kinds: dict, image_vecs: np.ndarray,
                   caption_vecs: np.ndarray, recall: float) -> None:
    """Each target's stored vectors and FAISS index, tuned where approximate (recorded in
    ``info["search"]``)."""
    dim = int(info["dim"])
    vecs = {t: np.ascontiguousarray(v, dtype=np.float32).reshape(-1, dim)
            for t, v in (("images", image_vecs), ("captions", caption_vecs))}
    for target, other in (("images", "captions"), ("captions", "images")):
        index = _build_faiss(vecs[target], kinds[target])
        stored = vecs[target].astype(info["vector_dtype"][target], copy=False)
        _write_npy(folder / f"{target}.npy", stored)
        if kinds[target] != "flat":
            queries, groups = _tuning_queries(vecs[target], vecs[other])
            tuned = set_recall(index, stored, queries, recall, groups=groups)
            info["search"][target] = tuned.to_dict()
        _write_faiss(index, folder / f"{target}.faiss")
        del index  # one target's index in memory at a time

class IndexStore:
    """The live version of an index folder, opened read-only and held (see the module
    docstring) until :meth:`close`.

    Args:
        root: the index folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not is_index(self.root):
            raise InputNotFound(f"{self.root}: not an index (no CURRENT file); build one with "
                                f"'crossalign index RUN --images FOLDER --out {self.root}'")
        self._lock = threading.Lock()
        self._match_lock = threading.Lock()
        self._held = self._con = None
        while True:
            self.version = read_current(self.root)
            try:
                self._held = hold_version(self.root / self.version)
                return self._open(self.root / self.version)
            except (OSError, RuntimeError, sqlite3.Error):
                self._let_go()
                # a build switched CURRENT and removed this version before it was held: open
                # the one named now; the version still named failing is a damaged index
                if read_current(self.root) == self.version:
                    raise

    def _open(self, vdir: Path) -> None:
        if not (vdir / "meta.sqlite").is_file():
            raise InputNotFound(f"{vdir}: the index version named by CURRENT is missing")
        self._con = sqlite3.connect(f"{(vdir / 'meta.sqlite').resolve().as_uri()}?mode=ro", uri=True,
                                    check_same_thread=False)
        self.info = {k: json.loads(v) for k, v in self._rows("SELECT key, value FROM info")}
        have = {r[1] for r in self._rows("PRAGMA table_info(images)")}
        # an index written before images had a folder and a date reads them as unknown
        self._image_cols = ("id, row, source, path, name, content_hash, split, labels, " +
                            ("folder, date" if {"folder", "date"} <= have else "'', ''") +
                            (", ocr" if "ocr" in have else ", NULL"))
        tables = {r[0] for r in self._rows("SELECT name FROM sqlite_master WHERE type='table'")}
        self.has_keywords = set(KEYWORD_TABLES.values()) <= tables
        self.has_grams = "picture_grams" in tables and bool(self.info.get("ocr"))
        # (target, normalised Filters) -> FAISS rows, the least recently used first
        self._matching: OrderedDict[tuple[str, Filters], np.ndarray] = OrderedDict()
        self._matching_bytes, self.match_cache_bytes = 0, MATCH_CACHE_BYTES
        self._label_columns: list[str] | None = None
        self.sources = [dict(kind=r[1], path=r[2], split=r[3], format=r[4])
                        for r in self._rows("SELECT * FROM sources ORDER BY id")]
        self.vectors = {t: _open_vectors(vdir / f"{t}.npy", self.info.get("vector_dtype", {}).get(t))
                        for t in ("images", "captions")}
        self.faiss = {t: _read_faiss(vdir / f"{t}.faiss", self.info.get("factory", {}).get(t))
                      for t in ("images", "captions")}
        self.row_ids = {t: np.array([r[0] for r in self._rows(f"SELECT id FROM {t} ORDER BY row")],
                                    dtype=np.int64) for t in ("images", "captions")}
        self.id_rows = {t: {int(i): r for r, i in enumerate(self.row_ids[t])} for t in self.row_ids}

    def _rows(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, tuple(args)).fetchall()

    def _let_go(self) -> None:
        """Close the version's files and its lock (what is open of it so far)."""
        if self._con is not None:
            self._con.close()
        for v in getattr(self, "vectors", {}).values():
            if isinstance(v, RowFile):
                v.close()
        if self._held is not None:
            self._held.close()
            self._held = None

    def close(self) -> None:
        """Let go of the version; when ``CURRENT`` names another one by now, remove the
        versions nobody holds any more (this one too, if this was its last reader)."""
        self._let_go()
        try:
            superseded = read_current(self.root) != self.version
        except (OSError, UnicodeDecodeError):
            return
        if superseded:
            remove_unheld(self.root)

    def problems(self) -> list[str]:
        """What makes the open version unusable now, looked up on disk; empty when nothing.
        Files are named relative to the index folder (a client may read these lines).

        ``CURRENT`` must be readable, the version's files must be there, and every count must
        agree: the metadata's, the SQLite rows, the FAISS indexes, the vectors in memory and
        those in the files on disk.
        """
        try:
            read_current(self.root)
        except OSError as e:
            return [f"CURRENT: not readable ({e.strerror or type(e).__name__})"]
        except UnicodeDecodeError:
            return ["CURRENT: not readable (not UTF-8 text)"]
        vdir = self.root / self.version
        files = ["meta.sqlite"] + [f"{t}.{ext}" for t in ("images", "captions")
                                   for ext in ("npy", "faiss")]
        gone = [f"{self.version}/{name}" for name in files if not (vdir / name).is_file()]
        if gone:
            return [f"{', '.join(gone)} missing"]
        out = []
        for t in ("images", "captions"):
            try:
                on_disk = np.load(vdir / f"{t}.npy", mmap_mode="r").shape[0]  # reads the header only
                rows = self._rows(f"SELECT count(*) FROM {t}")[0][0]
            except (OSError, ValueError, sqlite3.Error) as e:
                why = relative_message(self.root, str(e))
                out.append(f"{self.version}: the {t} cannot be read ({why})")
                continue
            counts = {"metadata": self.info[f"n_{t}"], "SQLite rows": rows, f"{t}.npy": on_disk,
                      "vectors open": self.vectors[t].shape[0], "FAISS": self.faiss[t].ntotal}
            if len(set(counts.values())) > 1:
                out.append(f"{self.version}: the {t} counts disagree: "
                           + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return out

    def __len__(self) -> int:
        return len(self.row_ids["images"])

    def _image(self, row: tuple, captions: list[CaptionRecord]) -> ImageRecord:
        iid, _, source, path, name, chash, split, labels, folder, date, ocr = row
        return ImageRecord(iid, path, name, chash, source, split, json.loads(labels), captions,
                           folder, date, ocr)

    def images(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        """The records of these image ids (unknown ids are left out), captions included."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        caps: dict[int, list[CaptionRecord]] = {}
        for cid, _, image, text, origin in self._rows(
                f"SELECT * FROM captions WHERE image IN ({marks}) ORDER BY row", ids):
            caps.setdefault(image, []).append(CaptionRecord(cid, image, text, origin))
        rows = self._rows(f"SELECT {self._image_cols} FROM images WHERE id IN ({marks})", ids)
        return {r[0]: self._image(r, caps.get(r[0], [])) for r in rows}

    def captions(self, ids: Iterable[int]) -> dict[int, CaptionRecord]:
        """The caption records of these caption ids (unknown ids are left out)."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        rows = self._rows(f"SELECT * FROM captions WHERE id IN ({','.join('?' * len(ids))})", ids)
        return {r[0]: CaptionRecord(r[0], r[2], r[3], r[4]) for r in rows}

    def all_images(self) -> list[ImageRecord]:
        """Every image with its captions, in row order (what an incremental build starts from)."""
        caps: dict[int, list[CaptionRecord]] = {}
        for cid, _, image, text, origin in self._rows("SELECT * FROM captions ORDER BY row"):
            caps.setdefault(image, []).append(CaptionRecord(cid, image, text, origin))
        rows = self._rows(f"SELECT {self._image_cols} FROM images ORDER BY row")
        return [self._image(r, caps.get(r[0], [])) for r in rows]

    def words_by_hash(self) -> dict[str, str]:
        """The words read in each picture (``--ocr``) by its content hash; pictures never read
        are left out."""
        if "ocr" not in self._image_cols:
            return {}
        return dict(self._rows("SELECT content_hash, ocr FROM images WHERE ocr IS NOT NULL"))

    def vector(self, target: str, item_id: int) -> np.ndarray | None:
        """The stored vector ``[dim]`` of an image or caption id, or None for an unknown id."""
        row = self.id_rows[target].get(int(item_id))
        return None if row is None else np.array(self.vectors[target][row], dtype=np.float32)

    def label_columns(self) -> list[str]:
        """The label columns the images carry (read once: a version never changes)."""
        if self._label_columns is None:
            rows = self._rows("SELECT DISTINCT j.key FROM images, json_each(images.labels) AS j")
            self._label_columns = sorted(r[0] for r in rows)
        return self._label_columns

    def rows_matching(self, target: str, filters: Filters) -> np.ndarray:
        """The FAISS rows of ``target`` (sorted) whose images pass ``filters``.

        Raises :class:`ConfigError` for a label column no image has, and for a folder or date
        filter on an index written before images had those.
        """
        key = (target, filters.normalised())
        with self._match_lock:
            if key in self._matching:
                self._matching.move_to_end(key)
                return self._matching[key]
        if (filters.folder or filters.since or filters.until) and "folder" not in self._image_cols:
            raise ConfigError(f"{self.root} was built before images had folders and dates; update "
                              f"it with 'crossalign index RUN --out {self.root}' to filter by them")
        known = set(self.label_columns()) if filters.labels else set()
        for column, _ in filters.labels:
            if column not in known:
                raise ConfigError(f"no image has a label column {column!r}; the index has: "
                                  f"{', '.join(sorted(known)) or 'none'}")
        where, args = key[1].where()
        if target == "images":
            sql = f"SELECT row FROM images WHERE {where} ORDER BY row"
        else:
            sql = (f"SELECT captions.row FROM captions JOIN images ON captions.image = images.id "
                   f"WHERE {where} ORDER BY captions.row")
        rows = np.array([r[0] for r in self._rows(sql, args)], dtype=np.int64)
        rows.flags.writeable = False  # one array shared by every search with this filter
        self._remember(key, rows)
        return rows

    def keyword_rows(self, target: str, match: str, filters: Filters | None, limit: int,
                     grams: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The FAISS rows of ``target`` whose words match the FTS5 expression ``match`` and
        whose images pass ``filters``, best first by BM25, at most ``limit``; their scores
        (higher is better: BM25 negated, as SQLite's is lower-better); and a snippet of each,
        the matched words between ``\\x02`` and ``\\x03``.

        ``grams``: an expression over character trigrams of the words read in pictures (an
        index built with ``--ocr``); a picture's trigram BM25 times :data:`GRAM_WEIGHT` is added
        to its score, so that a word read nearly right still finds its picture.

        Raises :class:`ConfigError` for an index written before it had a keyword index, and
        for an expression SQLite refuses.
        """
        if not self.has_keywords:
            raise ConfigError(f"{self.root} was built before it had a keyword index; update it "
                              f"with 'crossalign index RUN --out {self.root}' to search by words")
        table = KEYWORD_TABLES[target]
        found = self._match(table, target, match, filters, limit, True)
        if grams and target == "images" and self.has_grams:
            score = {r: s for r, s, _ in found}
            snippet = {r: sn for r, _, sn in found}
            for r, s, text in self._match("picture_grams", target, grams, filters, limit, False):
                score[r] = score.get(r, 0.0) + GRAM_WEIGHT * s
                snippet.setdefault(r, text)
            rows = sorted(score, key=lambda r: (-score[r], r))[:limit]
            found = [(r, score[r], snippet[r]) for r in rows]
        rows = np.array([r[0] for r in found], dtype=np.int64)
        return rows, np.array([r[1] for r in found], dtype=np.float32), [r[2] for r in found]

    def _match(self, table: str, target: str, match: str, filters: Filters | None, limit: int,
               snippets: bool) -> list[tuple[int, float, str]]:
        """(row, negated BM25, snippet or the document's text) of ``table``'s best matches."""
        where, args = (filters.normalised().where() if filters else ("1", []))
        join = (f"JOIN images ON images.row = {table}.rowid" if target == "images" else
                f"JOIN captions ON captions.row = {table}.rowid "
                f"JOIN images ON images.id = captions.image")
        text = f"snippet({table}, -1, char(2), char(3), '…', 12)" if snippets else f"{table}.picture_words"
        sql = (f"SELECT {table}.rowid, -bm25({table}), {text} FROM {table} {join} "
               f"WHERE {table} MATCH ? AND ({where}) ORDER BY 2 DESC, {table}.rowid LIMIT ?")
        try:
            return [(int(r), float(s), t) for r, s, t in self._rows(sql, [match, *args, int(limit)])]
        except sqlite3.OperationalError as e:
            raise ConfigError(f"the keyword query cannot be read ({e})") from None

    def _remember(self, key: tuple[str, Filters], rows: np.ndarray) -> None:
        """Keep ``rows`` for ``key``, dropping the least recently used lists until all the kept
        ones fit in ``match_cache_bytes``; a list larger than that is not kept."""
        with self._match_lock:
            if key in self._matching or rows.nbytes > self.match_cache_bytes:
                return
            self._matching[key] = rows
            self._matching_bytes += rows.nbytes
            while self._matching_bytes > self.match_cache_bytes:
                _, dropped = self._matching.popitem(last=False)
                self._matching_bytes -= dropped.nbytes
