"""``crossalign.index``, ``search``, ``serve`` and ``duplicates``: a collection made searchable,
searched, shared and cleaned."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from crossalign.errors import ConfigError

__all__ = ["index", "search", "serve", "duplicates"]


def _quiet_faiss() -> None:
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports every CPU variant tried


def index(run: str | Path, out: str | Path | None = None, *, data: str | Path | None = None,
          images: str | Path | None = None, add: Sequence[str | Path] = (), from_embeddings: str | Path | None = None,
          split: str = "all", format: str = "", index_type: str | None = None, recall: float = 0.95,
          ocr: bool | None = None, checkpoint: str = "best", nproc: int = 0, device: str = "auto",
          progress: bool = True):
    """Embed a collection with a trained run into an index folder: FAISS vectors plus SQLite
    metadata (``crossalign index``). Run again to update it: only new or changed files are
    embedded, and entries whose files are gone are dropped.

    Args:
        run: a run folder.
        out: the index folder to create or update.
        data: a data set in any layout (images and captions).
        images: a folder of images, searched recursively.
        add: more image folders.
        from_embeddings: the partitions :func:`crossalign.embed` wrote (nothing is embedded again).
        split: with ``data``: which split.
        format: with ``data``: its layout (default: detected).
        index_type: ``flat`` (exact), ``hnsw`` or ``ivfpq`` (approximate), or ``auto`` by size
            (default: what the index had, auto for a new one).
        recall: hnsw / ivfpq: the recall@10 against exact search the search is set to reach,
            measured on a sample of the index's own vectors.
        ocr: read the words in each picture (PP-OCR) into the keyword index, cached by content
            hash (default: what the index did, off for a new one).
        checkpoint: ``best`` or ``last``.
        nproc: share the embedding over this many processes on this machine (torchrun).
        device: ``cpu`` or ``cuda``.
        progress: progress bars.

    Returns:
        A :class:`~crossalign.index.build.BuildSummary`; None where the work ran in other
        processes (``nproc``, or a process of torchrun's other than the first).
    """
    from crossalign.distributed import resolve_device
    from crossalign.index.build import build_from_embeddings, build_index

    device = resolve_device(device)

    if not out:
        raise ConfigError("give `out`: the index folder to create or update")
    _quiet_faiss()
    if from_embeddings:
        if data or images or add or ocr:
            raise ConfigError("`from_embeddings` builds from partitions alone; leave out `data`, `images`, "
                              "`add` and `ocr`")
        return build_from_embeddings(run, out, from_embeddings, index_type=index_type, which=checkpoint,
                                     device=device, recall=recall)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from crossalign.api._training import _torchrun

        argv = [str(run), "--out", str(out), "--split", split, "--recall", f"{recall!r}",
                "--checkpoint", checkpoint, "--device", device]
        argv += ["--data", str(data)] if data else []
        argv += ["--images", str(images)] if images else []
        argv += [a for folder in add for a in ("--add", str(folder))]
        argv += ["--format", format] if format else []
        argv += ["--index-type", index_type] if index_type else []
        argv += [] if ocr is None else ["--ocr" if ocr else "--no-ocr"]
        _torchrun("index", argv, nproc)
        return None
    from crossalign.distributed import cleanup_distributed, init_distributed

    dist = init_distributed(backend="gloo" if device == "cpu" else "auto")
    try:
        return build_index(run, out, data=data, images=images, add=list(add), split=split, data_format=format,
                           index_type=index_type, which=checkpoint, device=device, progress=progress,
                           dist=dist if dist.world_size > 1 else None, recall=recall, ocr=ocr)
    finally:
        cleanup_distributed()


def search(index: str | Path, text: str | Sequence[str] = (), *, image: str | Path | Sequence = (),
           like: Sequence[int] = (), minus: str | Sequence[str] = (), weights: str | Sequence[float] | None = None,
           query: str | None = None, mode: str = "vector", fusion: str | Sequence[float] | None = None,
           k: int = 10, target: str = "images", min_score: float | None = None, min_prob: float | None = None,
           coverage: float | None = None, split: str | None = None,
           folder: str | None = None, since: str | None = None, until: str | None = None,
           label: str | Sequence[str] = (), run: str | Path | None = None, device: str = "auto"):
    """The nearest images (or captions) of an index to a query (``crossalign search``).

    Several terms add up; ``minus`` pushes a term away; ``weights`` weighs each term; ``query``
    says all three in one string (``"beach +sunset:0.5 -people"``). ``mode`` searches by
    meaning, by words, or both.

    Args:
        index: an index folder written by :func:`index`.
        text: text terms.
        image: image terms (files, bytes or PIL images).
        like: images of the index, by id, as terms.
        minus: text terms to push away.
        weights: one weight per term, in order: texts, then images, then ``like`` items.
        query: text terms, their weights and terms to push away in one string, in place of
            ``text``, ``weights`` and ``minus``: terms are split at words starting with ``+``
            or ``-``, ``:W`` weighs one, quotes make a phrase (``"red car":2 -people``).
        mode: ``vector`` (by meaning), ``keyword`` (by words: captions, file names, labels, the
            words read in the pictures; BM25) or ``hybrid`` (both, reciprocal rank fusion).
        fusion: hybrid: the weights of the vector and the keyword ranking (default ``1,1``).
        k: how many results.
        target: ``images`` or ``captions``.
        min_score: leave out hits below this cosine similarity (one cut for every query).
        min_prob: leave out hits whose calibrated probability of being the query's match is
            below this (the index calibrates on the run's validation pairs when it is built).
        coverage: keep the smallest set of hits that holds the query's match with this
            probability (split-conformal prediction; at most ``k`` are returned).
        split: only images of these splits (``"train,val"``).
        folder: only images in this folder of the collection (or below it).
        since: only pictures taken on or after this date (``YYYY-MM-DD``).
        until: only pictures taken on or before this date.
        label: only images with these labels (``"COLUMN=VALUE"``, all must hold).
        run: the run whose model embeds the query (default: the one that built the index).
        device: ``cpu`` or ``cuda``.

    Returns:
        A :class:`~crossalign.index.search.SearchResult` (``.hits``, each with rank, score,
        path and captions).
    """
    from crossalign.api._scoring import numbers
    from crossalign.distributed import resolve_device
    from crossalign.index.search import FUSION_WEIGHTS, Filters, open_index

    device = resolve_device(device)

    _quiet_faiss()
    one = lambda v: [v] if isinstance(v, (str, Path, bytes)) or hasattr(v, "convert") else list(v)  # noqa: E731
    filters = Filters.of(split, folder, since, until, one(label))
    # a keyword search of words alone needs no model: the index opens without one
    words_only = mode == "keyword" and not one(image) and not list(like)
    opened = open_index(index, run, device=device, model=not words_only)
    try:
        return opened.search(text=one(text), image=one(image), like=list(like), minus=one(minus),
                             weights=None if weights is None else numbers(weights, float, "weights"), k=k,
                             target=target, filters=filters, min_score=min_score, query=query, mode=mode,
                             min_prob=min_prob, coverage=coverage,
                             fusion=FUSION_WEIGHTS if fusion is None else numbers(fusion, float, "fusion"))
    finally:
        opened.close()


def serve(index: str | Path, *, host: str = "127.0.0.1", port: int = 8000, run: str | Path | None = None,
          token_file: str | Path | None = None, no_auth: bool = False, allow_host: Sequence[str] = (),
          workers: int = 1, max_upload_mb: float = 10.0, max_pixels: int = 40_000_000, max_k: int = 100,
          max_connections: int = 256, log_queries: bool = False, secure_cookie: bool = False,
          text_runtime: str = "auto", device: str = "auto", progress: bool = True) -> None:
    """Serve an index over HTTP with a search page until stopped (``crossalign serve``).

    With a token (``CROSSALIGN_TOKEN`` in the environment, or ``token_file``) every route but
    ``/health`` asks for it; an address other than loopback is refused without one unless
    ``no_auth`` says so.

    Args:
        index: an index folder.
        host: the address to listen on (default 127.0.0.1: this machine only).
        port: the port.
        run: the run whose model embeds queries (default: the one that built the index).
        token_file: a file whose first line is the token.
        no_auth: serve an address other than loopback without a token, on purpose.
        allow_host: host names answered besides the loopback names and ``host``.
        workers: worker processes, each with the index open.
        max_upload_mb: the largest image upload, in MB.
        max_pixels: the most pixels of an uploaded image, read from its header.
        max_k: the most results one query may ask for.
        max_connections: open connections per worker; past it, 503 at once.
        log_queries: write each request's query string into the access log.
        secure_cookie: mark the sign-in cookie Secure (HTTPS through a reverse proxy).
        text_runtime: what embeds text queries: ``onnx``, ``torch`` or ``auto``.
        device: ``cpu`` or ``cuda``.
        progress: the access log and start-up lines at INFO (else warnings only).
    """
    from crossalign.distributed import resolve_device
    from crossalign.serve import serve as _serve

    device = resolve_device(device)

    _serve(index, host=host, port=port, run=run, device=device, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
           max_k=max_k, log_level="info" if progress else "warning", text_runtime=text_runtime,
           token_file=token_file, no_auth=no_auth, allow_hosts=tuple(allow_host), workers=workers,
           max_pixels=max_pixels, log_queries=log_queries, secure_cookie=secure_cookie,
           max_connections=max_connections)


def duplicates(index: str | Path, *, threshold: float | None = None, max_hash_distance: int = 10,
               min_correlation: float = 0.9, neighbours: int = 10, calibration_sample: int = 50,
               run: str | Path | None = None, device: str = "auto", out: str | Path | None = None):
    """True duplicates (same content) and near-duplicate pairs of an index's images
    (``crossalign duplicates``). Each image's nearest ``neighbours`` by difference hash, at most
    ``max_hash_distance`` bits apart, and by image vector, at cosine ``threshold`` or more, are
    candidates; a candidate is a near-duplicate when the two pictures, aligned by their
    keypoints, correlate at ``min_correlation`` or more. With ``out``, a page of them and
    their JSON are written into that folder.

    Args:
        index: an index folder written by :func:`index`.
        threshold: the cosine from which images are candidates; default: calibrated on the
            collection: copies are planted of ``calibration_sample`` of its images (halved,
            quartered, cropped, re-encoded, rotated, colour-shifted), those the hash misses
            are embedded with the index's run, and the threshold is the lower end of their
            cosines to their originals.
        max_hash_distance: the bits within which images are candidates by difference hash.
        min_correlation: the aligned pictures' correlation from which a candidate is a copy.
        neighbours: each image's nearest this many, in either space, are its candidates.
        calibration_sample: images of the index copied to calibrate the threshold.
        run: the run that embeds the planted copies (default: the one that built the index);
            not loaded when ``threshold`` is given.
        device: ``cpu`` or ``cuda``.
        out: a folder for ``duplicates.html`` and ``duplicates.json``.

    Returns:
        A :class:`~crossalign.index.duplicates.Duplicates` (``.exact``, ``.near``,
        ``.calibration``, ``.page``; ``.summary()`` says how the pairs were chosen).
    """
    import json

    from crossalign._io import atomic_write_text
    from crossalign.distributed import resolve_device
    from crossalign.index.duplicates import find_duplicates, write_duplicates_page
    from crossalign.index.search import open_index

    _quiet_faiss()
    opened = open_index(index, run, model=threshold is None, device=resolve_device(device))
    try:
        with opened.pinned() as served:  # one version of the index throughout
            dup = find_duplicates(served.store, threshold, max_hash_distance, min_correlation,
                                  neighbours, opened.embedder, calibration_sample)
        if out:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            dup.page = write_duplicates_page(dup, folder / "duplicates.html")
            atomic_write_text(folder / "duplicates.json", json.dumps(dup.to_dict(), indent=2))
    finally:
        opened.close()
    return dup
