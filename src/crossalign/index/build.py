"""``crossalign.index.build_index``: embed a collection into an index folder, incrementally.

The sources of an index (a data set in any layout the readers know, or plain folders of
images) are recorded in it. Building again rescans them: files whose content hash is
already in the index keep their vectors, new or changed files are embedded, entries whose
files are gone are dropped. With several processes (``torchrun``, or ``--nproc``) each
embeds its share of the new items and process 0 writes the index.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from crossalign.data.members import parse_ref, source_hash
from crossalign.data.transforms import file_date, list_images
from crossalign.data.validate import outside_roots
from crossalign.errors import ConfigError, InputNotFound
from crossalign.index._vectors import Embedder
from crossalign.index.recall import DEFAULT_RECALL
from crossalign.index.store import CaptionRecord, ImageRecord, IndexStore, is_index, write_version

__all__ = ["build_index", "build_from_embeddings", "BuildSummary"]

log = logging.getLogger("crossalign.index")


@dataclass
class BuildSummary:
    """What a build did."""

    index: Path
    version: str
    images: int  # images in the index now
    captions: int
    embedded_images: int  # images that went through the image tower in this build
    embedded_captions: int
    removed_images: int  # entries dropped because their files are gone (or unreadable)
    failed: dict[str, str]  # path -> why it was left out
    factory: dict[str, str]  # the FAISS index of each target
    seconds: float
    tuned: dict[str, dict] = field(default_factory=dict)  # approximate targets: Tuned.to_dict()
    ocr_read: int = 0  # pictures whose words were read in this build (--ocr)
    calibration: str = ""  # the search cut-off's calibration, or why there is none


def _plan_source(emb: Embedder, k: int, src: dict, quiet: bool) -> list[ImageRecord]:
    """The images (and captions) a source holds now; ids and hashes are filled in later."""
    path = Path(src["path"])
    if src["kind"] == "embeddings":
        raise ConfigError(f"this index was built from the embedding partitions in {path}; build it again "
                          f"with --from-embeddings (after 'crossalign embed' has written the new ones)")
    if not path.exists():
        raise InputNotFound(f"{path}: no such {'folder' if src['kind'] == 'images' else 'data set'}")
    if src["kind"] == "images":
        if not path.is_dir():
            raise ConfigError(f"{path}: `images` takes a folder of images")
        found = list_images(path)
        # the rule every command follows: a link whose file lies outside the folder is not read,
        # so the service can never show it
        leaving = outside_roots([str(p) for p in found], [str(path)])
        for message in leaving.values():
            log.warning("%s", message)
        return [ImageRecord(-1, str(p.resolve()), p.relative_to(path).as_posix(), "", k,
                            folder=_folder_in(p, path))
                for p in found if str(p) not in leaving]
    table = emb.read_table(path, src.get("format", ""), src["split"], quiet=quiet)
    by_id: dict[str, ImageRecord] = {}
    for r, iid in enumerate(table.image_id):
        if iid not in by_id:
            labels = {c: v[r] for c, v in table.labels.items() if v[r] is not None}
            ref = parse_ref(table.image_path[r])  # a shard member: kept as it is, in its shard's folder
            file = Path(ref.shard if ref else table.image_path[r]).resolve()
            by_id[iid] = ImageRecord(-1, str(ref) if ref else str(file), iid, "", k, table.split[r], labels,
                                     folder=_folder_in(file, path.resolve()))
        by_id[iid].captions.append(CaptionRecord(-1, -1, table.caption[r], table.origin[r]))
    return list(by_id.values())


def _folder_in(file: Path, root: Path) -> str:
    """The folder of ``file`` relative to ``root`` ("" at its top, or for a file outside it)."""
    try:
        folder = file.parent.relative_to(root).as_posix()
    except ValueError:
        return ""
    return "" if folder == "." else folder


def _hash_all(images: list[ImageRecord]) -> tuple[list[ImageRecord], dict[str, str]]:
    """Fill each content hash and date; a file that cannot be read is left out (path ->
    message)."""
    kept, failed, seen = [], {}, set()
    for im in images:
        if im.path in seen:  # the same file through two sources: the first one keeps it
            continue
        seen.add(im.path)
        try:
            im.content_hash = source_hash(im.path)  # a file, or a member of a tar shard
            im.date = file_date(im.path)
            kept.append(im)
        except OSError as e:
            failed[im.path] = f"{im.path}: cannot read image file ({e.strerror or e})"
    return kept, failed


def _shard(items: Sequence, dist) -> list:
    return list(items[dist.rank::dist.world_size]) if dist is not None else list(items)


def _embed_new(emb: Embedder, paths: list[str], texts: list[str], parts: Path, dist,
               progress: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """Vectors of the new images (by path) and new captions (by text), shared over processes."""
    my_paths, my_texts = _shard(paths, dist), _shard(texts, dist)
    img, failed = emb.images(my_paths, progress)
    ok = [p for p in dict.fromkeys(my_paths) if p not in failed]
    cap = emb.captions(my_texts, progress)
    if dist is None or dist.world_size == 1:
        return dict(zip(ok, img)), dict(zip(my_texts, cap)), failed
    import json

    import torch

    parts.mkdir(parents=True, exist_ok=True)
    np.savez(parts / f"part-{dist.rank}.npz", paths=np.array(ok, dtype=str), images=img,
             texts=np.array(my_texts, dtype=str), captions=cap,
             failed=np.array(json.dumps(failed)))
    torch.distributed.barrier()
    if not dist.is_main:  # process 0 alone reads the parts and writes the index
        return {}, {}, {}
    images, captions, failed = {}, {}, {}
    for r in range(dist.world_size):
        with np.load(parts / f"part-{r}.npz", allow_pickle=False) as z:
            images.update(zip(z["paths"].tolist(), z["images"]))
            captions.update(zip(z["texts"].tolist(), z["captions"]))
            failed.update(json.loads(str(z["failed"])))
    return images, captions, failed


def _reusable(old: IndexStore | None, emb: Embedder) -> tuple[dict, dict, dict]:
    """Old vectors that still hold: content hash -> image row (a moved file keeps its vector),
    caption text -> row; and the id of every indexed path."""
    if old is None:
        return {}, {}, {}
    records = old.all_images()
    ids = {im.path: im.id for im in records}
    if old.info.get("weights_hash") != emb.weights_hash:
        log.warning("%s was built with another model; every item is embedded again", old.root)
        return {}, {}, ids
    images = {im.content_hash: r for r, im in enumerate(records)}
    texts, row = {}, 0
    for im in records:
        for c in im.captions:
            texts.setdefault(c.text, row)
            row += 1
    return images, texts, ids


def _sources(old: IndexStore | None, data, images, add, split: str, fmt: str) -> list[dict]:
    """The sources of the new version: the ones named, or the old ones, plus ``add``."""
    def full(p) -> str:
        return str(Path(p).expanduser().resolve())

    named = []
    if data is not None:
        named.append(dict(kind="data", path=full(data), split=split, format=fmt))
    if images is not None:
        named.append(dict(kind="images", path=full(images), split="all", format=""))
    extra = [dict(kind="images", path=full(a), split="all", format="") for a in add]
    if named:
        return named + extra
    if old is None:
        raise ConfigError("give `data` DIR or `images` FOLDER (there is no index to update yet)")
    known = {s["path"] for s in old.sources}
    return old.sources + [s for s in extra if s["path"] not in known]


def _assign_ids(images: list[ImageRecord], old_ids: dict[str, int], next_id: int) -> None:
    """Stable ids: a path already indexed keeps its id; captions are numbered in order."""
    cid = 0
    for im in images:
        im.id = old_ids.get(im.path, -1)
        if im.id < 0:
            im.id, next_id = next_id, next_id + 1
    for im in images:
        for c in im.captions:
            c.id, c.image, cid = cid, im.id, cid + 1


def build_index(run: str | Path | Embedder, out: str | Path, *, data: str | Path | None = None,
                images: str | Path | None = None, add: Sequence[str | Path] = (), split: str = "all",
                data_format: str = "", index_type: str | None = None, which: str = "best",
                device: str = "cpu", progress: bool = True, dist=None,
                recall: float = DEFAULT_RECALL, ocr: bool | None = None) -> BuildSummary | None:
    """Build or update the index at ``out`` with the model of ``run``.

    Args:
        run: a run folder, or an :class:`Embedder` already opened on one.
        out: the index folder (created, or updated when it holds an index).
        data: a data set in any layout the readers know: its images and captions.
        images: a folder of images, searched recursively (no captions needed).
        add: further image folders to add to the index's sources.
        split: with ``data``, which split to index (``all``, ``test``, ``train,val`` ...).
        data_format: with ``data``, the layout (empty: the run's ``data.format``).
        index_type: ``flat`` (exact), ``hnsw``, ``ivfpq`` or ``auto`` (by size); default: what
            the index had, ``auto`` for a new one.
        dist: a DistInfo to share the embedding out over processes.
        recall: an approximate index's search parameters are tuned to reach this recall@10
            against exact search (measured on a sample of the index's own vectors).
        ocr: read the words in each picture into the keyword index (cached by content hash);
            default: what the index did, off for a new one.

    Returns:
        A :class:`BuildSummary` (None on processes other than the first).
    """
    t0 = time.perf_counter()
    if data is not None and images is not None:
        raise ConfigError("give `data` or `images`, not both (use `add` for more image folders)")
    out = Path(out)
    old = _open_old(out)
    emb = run if isinstance(run, Embedder) else Embedder(run, which, device)
    sources = _sources(old, data, images, add, split, data_format)
    planned = [im for k, s in enumerate(sources) for im in _plan_source(emb, k, s, not progress)]
    planned, failed = _hash_all(planned)
    old_images, old_texts, old_ids = _reusable(old, emb)
    new_paths = [im.path for im in planned if im.content_hash not in old_images]
    new_texts = list(dict.fromkeys(c.text for im in planned for c in im.captions
                                   if c.text not in old_texts))
    token = hashlib.blake2b("\n".join(new_paths + new_texts).encode(), digest_size=6).hexdigest()
    vec_new, cap_new, bad = _embed_new(emb, new_paths, new_texts, out / f".parts-{token}", dist,
                                       progress)
    if dist is not None and not dist.is_main:
        _wait(dist)
        return None
    failed.update(bad)
    kept = [im for im in planned if im.path not in bad]
    image_vecs = _gather_images(kept, old, old_images, vec_new, emb.dim)
    caption_vecs = _gather_captions(kept, old, old_texts, cap_new, emb.dim)
    _assign_ids(kept, old_ids, 1 + max(old_ids.values(), default=-1))
    if index_type is None:
        index_type = old.info.get("index_type", "auto") if old is not None else "auto"
    info = {"run": str(emb.run.resolve()), "weights_hash": emb.weights_hash, "dim": emb.dim,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    read, info = _enrich(emb, old, kept, info, ocr, progress)
    version = write_version(out, info, sources, kept, image_vecs, caption_vecs, index_type, recall)
    _clean_parts(out)
    _wait(dist)
    for msg in bad.values():
        log.warning("%s; left out of the index", msg)
    if old is not None:
        old.close()
    factory, tuned = _factories(out)
    return BuildSummary(out, version, len(kept), len(caption_vecs), len(new_paths), len(new_texts),
                        len(set(old_ids) - {im.path for im in kept}), failed, factory,
                        time.perf_counter() - t0, tuned, read, _calibration_line(info))


def _enrich(emb: Embedder, old: IndexStore | None, kept: list[ImageRecord], info: dict,
            ocr: bool | None, progress: bool) -> tuple[int, dict]:
    """The words read in the pictures (``ocr``; default: as the old index did) and the
    calibration of the cut-off, added to ``kept`` and ``info``; how many pictures were read."""
    from crossalign.index._enrich import fit_from_run, read_words

    if ocr is None:
        ocr = bool(old.info.get("ocr", False)) if old is not None else False
    read = read_words(kept, old, progress) if ocr else 0
    calibration, note = fit_from_run(emb, old, progress)
    info = {**info, "ocr": bool(ocr), "calibration": calibration}
    return read, {**info, "calibration_note": note} if note else info


def _calibration_line(info: dict) -> str:
    from crossalign.index.calibrate import Calibration

    fitted = info.get("calibration", {}).get("images")
    if fitted:
        return Calibration.from_dict(fitted).summary()
    return f"calibration: none ({info.get('calibration_note') or 'not fitted'})"


def _open_old(out: Path) -> IndexStore | None:
    """The index already at ``out`` (None for a new or empty folder); any other folder is refused."""
    if is_index(out):
        return IndexStore(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not an index; give a new or empty folder as `out`")
    return None


def _factories(out: Path) -> tuple[dict[str, str], dict[str, dict]]:
    store = IndexStore(out)
    try:
        return dict(store.info["factory"]), dict(store.info.get("search", {}))
    finally:
        store.close()


def _gather_images(kept: list[ImageRecord], old: IndexStore | None, old_images: dict,
                   new: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """``[len(kept), dim]``: old vectors where the file is unchanged, new ones elsewhere."""
    out = np.zeros((len(kept), dim), np.float32)
    for r, im in enumerate(kept):
        hit = old_images.get(im.content_hash)
        out[r] = old.vectors["images"][hit] if hit is not None else new[im.path]
    return out


def _gather_captions(kept: list[ImageRecord], old: IndexStore | None, old_texts: dict,
                     new: dict[str, np.ndarray], dim: int) -> np.ndarray:
    texts = [c.text for im in kept for c in im.captions]
    out = np.zeros((len(texts), dim), np.float32)
    for r, t in enumerate(texts):
        out[r] = old.vectors["captions"][old_texts[t]] if t in old_texts else new[t]
    return out


def _clean_parts(out: Path) -> None:
    import shutil

    for p in out.glob(".parts-*"):
        shutil.rmtree(p, ignore_errors=True)


def _wait(dist) -> None:
    if dist is not None and dist.world_size > 1:
        import torch

        torch.distributed.barrier()


def _records_of(part, seen: set[str]) -> tuple[list[ImageRecord], np.ndarray, np.ndarray]:
    """One partition's images (those not seen in an earlier one), their vectors, and their
    captions' vectors in the order the records list them."""
    keep = [k for k, m in enumerate(part.images) if m["path"] not in seen]
    records, rows = [], {}
    for k in keep:
        m = part.images[k]
        seen.add(m["path"])
        rows[k] = len(records)
        records.append(ImageRecord(-1, m["path"], m["image_id"], m["content_hash"], 0, m["split"],
                                   m["labels"], [], date=m["date"]))
    order = [[] for _ in records]
    for c_row, c in enumerate(part.captions):
        if c["image"] in rows:
            records[rows[c["image"]]].captions.append(CaptionRecord(-1, -1, c["caption"], c["origin"]))
            order[rows[c["image"]]].append(c_row)
    flat = [r for rs in order for r in rs]
    return records, part.image_emb[keep], part.text_emb[flat]


def build_from_embeddings(run: str | Path | Embedder, out: str | Path, parts: str | Path, *,
                          index_type: str | None = None, which: str = "best", device: str = "cpu",
                          recall: float = DEFAULT_RECALL) -> BuildSummary:
    """Build (or replace) the index at ``out`` from the partitions ``crossalign embed`` wrote
    under ``parts``; nothing is embedded again. Every partition must come from ``run``'s
    model (its weights hash), so query vectors match. An image in two partitions is kept once.
    """
    from crossalign.embed.partitions import list_partitions, read_partition

    t0, out = time.perf_counter(), Path(out)
    folders = list_partitions(parts)
    if not folders:
        raise InputNotFound(f"{parts}: no finished embedding partitions (part-NNNNN/done.json); "
                            f"run 'crossalign embed' first")
    old = _open_old(out)
    emb = run if isinstance(run, Embedder) else Embedder(run, which, device)
    kept, seen = [], set()
    where = out if out.is_dir() else out.parent  # beside the index: the same disk, not /tmp
    where.mkdir(parents=True, exist_ok=True)
    # the vectors gather on disk, a partition at a time, so memory holds one partition and
    # the index being built, never every vector twice over
    with _Spool(where, "images", emb.dim) as img_spool, _Spool(where, "captions", emb.dim) as cap_spool:
        for folder in folders:
            part = read_partition(folder)
            if part.weights_hash != emb.weights_hash:
                raise ConfigError(f"{folder}: embedded by another model ({part.weights_hash[:12]}) than "
                                  f"{emb.run} ({emb.weights_hash[:12]}); embed it again with this run")
            records, iv, cv = _records_of(part, seen)
            kept += records
            img_spool.add(iv), cap_spool.add(cv)
            del part, iv, cv
        return _finish_from_embeddings(emb, out, parts, old, kept, img_spool.array(), cap_spool.array(),
                                       index_type, recall, t0)


class _Spool:
    """Float32 rows appended to a temporary file in ``folder``, then memory-mapped whole."""

    def __init__(self, folder: Path, name: str, dim: int) -> None:
        import uuid

        self.path = folder / f".{name}-{uuid.uuid4().hex[:8]}.spool.tmp"
        self.dim, self.rows = dim, 0

    def __enter__(self) -> "_Spool":
        self.f = self._disk(lambda: open(self.path, "wb"))
        return self

    def _disk(self, fn):
        from crossalign._io import DISK_ERRNOS, disk_error

        try:
            return fn()
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise disk_error(self.path, e) from e
            raise

    def add(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, self.dim)
        self._disk(lambda: self.f.write(memoryview(rows).cast("B")))
        self.rows += len(rows)

    def array(self) -> np.ndarray:
        self._disk(self.f.flush)
        if not self.rows:
            return np.zeros((0, self.dim), np.float32)
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.rows, self.dim))

    def __exit__(self, *exc) -> None:
        self.f.close()
        self.path.unlink(missing_ok=True)


def _finish_from_embeddings(emb, out: Path, parts, old, kept, image_vecs, caption_vecs, index_type,
                            recall, t0) -> BuildSummary:
    old_ids = {im.path: im.id for im in old.all_images()} if old is not None else {}
    _assign_ids(kept, old_ids, 1 + max(old_ids.values(), default=-1))
    if index_type is None:
        index_type = old.info.get("index_type", "auto") if old is not None else "auto"
    info = {"run": str(emb.run.resolve()), "weights_hash": emb.weights_hash, "dim": emb.dim,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _, info = _enrich(emb, old, kept, info, False, False)
    sources = [dict(kind="embeddings", path=str(Path(parts).resolve()), split="all", format="")]
    version = write_version(out, info, sources, kept, image_vecs, caption_vecs, index_type, recall)
    if old is not None:
        old.close()
    factory, tuned = _factories(out)
    return BuildSummary(out, version, len(kept), len(caption_vecs), 0, 0,
                        len(set(old_ids) - {im.path for im in kept}), {}, factory,
                        time.perf_counter() - t0, tuned, 0, _calibration_line(info))
