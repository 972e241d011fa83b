"""Searching an index: text, images and items of the index as weighted query terms.

A query is a weighted sum of unit vectors, the way rclip combines its terms: each text or
image term adds ``weight * vector``, each term to push away (``minus``) subtracts its
vector, and the sum is normalised again. Exact (flat) indexes return the exact inner
products; approximate ones fetch more candidates and score those exactly against the stored
vectors, so every score printed is a true cosine similarity.

Search ranks by plain cosine (``evaluate``'s query-bank normalisation needs a bank of
training queries, which an index does not keep), and every result says so: a hit carries
``score`` (what ranked it) and ``cosine``, and a result its ``ranking`` and ``score_kind``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from crossalign.errors import ConfigError, RunError, UnknownItem
from crossalign.index.store import Filters, IndexStore
from crossalign.index.tune import apply_params, approximate_top, tuned_params

__all__ = ["Index", "Hit", "SearchResult", "Filters", "open_index", "TARGETS", "RANKING",
           "SCORE_KIND"]

TARGETS = ("images", "captions")
RANKING, SCORE_KIND = "plain", "cosine similarity"  # how search ranks, and what its scores are
# what an approximate index built without tuned parameters searches with: HNSW's breadth,
# IVF's lists visited
HNSW_EF_SEARCH = 128
IVF_NPROBE = 32
SUBSET_EXACT = 100_000  # a filter that keeps at most this many vectors is searched exactly
QUERY_CACHE = 1024  # text queries whose vectors are kept, the most recent first


@dataclass
class Hit:
    """One result: an image (with its captions), or a caption (with its image)."""

    rank: int
    score: float  # what the ranking ordered by (plain ranking: the cosine similarity)
    cosine: float  # cosine similarity to the query
    kind: str  # "image" or "caption"
    id: int  # id of the image or caption
    image_id: int
    path: str
    name: str
    captions: list[str] = field(default_factory=list)  # an image's captions; a caption hit: its text
    labels: dict = field(default_factory=dict)
    split: str = ""
    folder: str = ""  # the image's folder relative to its source
    date: str = ""  # when the picture was taken (EXIF), else its file's mtime

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    """The hits of one query, best first, how they were ranked, and how long the search took."""

    hits: list[Hit]
    target: str
    seconds: float
    ranking: str = RANKING  # which ranking produced the hits' scores
    score_kind: str = SCORE_KIND  # what those scores are


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, bytes, Path, int, np.integer)):
        return [x]
    return list(x)


class Index:
    """An index folder opened for searching, with the model of the run that built it.

    Use :func:`open_index` to make one.
    """

    def __init__(self, store: IndexStore, embedder=None, ef_search: int | None = None,
                 nprobe: int | None = None) -> None:
        self.store, self.embedder = store, embedder
        self._lock = threading.Lock()  # one query at a time through the model
        self._explain_lock = threading.Lock()
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()  # recent text query vectors
        self._cache_lock = threading.Lock()
        self.rerank = {}  # candidates fetched per result by an approximate index, scored exactly
        for target in TARGETS:
            tuned, self.rerank[target] = tuned_params(store.info, target)
            params = {"efSearch": HNSW_EF_SEARCH, "nprobe": IVF_NPROBE, **tuned}
            if ef_search is not None:
                params["efSearch"] = ef_search
            if nprobe is not None:
                params["nprobe"] = nprobe
            apply_params(store.faiss[target], params)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def info(self) -> dict:
        return self.store.info

    def _model(self):
        if self.embedder is None:
            raise RunError(f"{self.store.root}: opened without a model; text and image queries "
                           f"need one")
        return self.embedder

    def _terms(self, text, image, like, minus, weights) -> np.ndarray:
        """The query vector ``[dim]``: weighted terms minus the ones pushed away, normalised."""
        texts, images, likes, minus = (_as_list(text), _as_list(image), _as_list(like),
                                       _as_list(minus))
        if any(not str(t).strip() for t in texts + minus):
            raise ConfigError("a text query term is empty")
        n = len(texts) + len(images) + len(likes)
        if n == 0:
            raise ConfigError("give a text, an image or an item to search by")
        weights = [1.0] * n if weights is None else [float(w) for w in _as_list(weights)]
        if len(weights) != n:
            raise ConfigError(f"{len(weights)} weights for {n} query terms (texts, then images, "
                              f"then items)")
        tv = self._text_vectors([str(t) for t in texts + minus])  # [texts + minus, dim]
        vecs, pushed = list(tv[:len(texts)]), list(tv[len(texts):])
        with self._lock:
            for im in images:
                model = self._model()
                v = model.picture(im, "upload")
                vecs.append(v[0])
        for item in likes:
            v = self.store.vector("images", int(item))
            if v is None:
                raise UnknownItem(f"image id {item} is not in the index")
            vecs.append(v)
        q = sum(w * v for w, v in zip(weights, vecs)) - sum(pushed, np.zeros_like(vecs[0]))
        norm = float(np.linalg.norm(q))
        if norm < 1e-6:
            raise ConfigError("the query terms cancel out (their weighted sum is zero)")
        return (q / norm).astype(np.float32)

    def _text_vectors(self, texts: list[str]) -> np.ndarray:
        """``[len(texts), dim]`` vectors of text terms; recent ones come from memory."""
        if not texts:
            return np.zeros((0, self.store.info["dim"]), np.float32)
        with self._cache_lock:
            got = {t: self._texts[t] for t in texts if t in self._texts}
        missing = [t for t in dict.fromkeys(texts) if t not in got]
        if missing:
            model = self._model()
            if model.parallel_text:  # a session that takes calls from several threads
                got.update(zip(missing, model.text(missing)))
            else:
                with self._lock:
                    got.update(zip(missing, model.text(missing)))
        with self._cache_lock:
            for t in texts:
                self._texts[t] = got[t]
                self._texts.move_to_end(t)
            while len(self._texts) > QUERY_CACHE:
                self._texts.popitem(last=False)
        return np.stack([got[t] for t in texts])

    def search(self, text: str | Sequence[str] | None = None,
               image: str | Path | bytes | Sequence | None = None, k: int = 10,
               target: str = "images", weights: Sequence[float] | None = None,
               minus: str | Sequence[str] | None = None,
               like: int | Sequence[int] | None = None, filters: Filters | None = None,
               min_score: float | None = None) -> SearchResult:
        """The ``k`` images (or captions) nearest the query.

        Args:
            text: one or more text terms.
            image: one or more image terms: paths or the bytes of an image file.
            k: how many results.
            target: ``images`` or ``captions``.
            weights: one weight per term, texts first, then images, then ``like`` items.
            minus: text terms to push away.
            like: ids of indexed images to search by ("more like this").
            filters: which images may be returned (a caption: when its image may).
            min_score: leave out hits scored below this (at most ``k`` remain).
        """
        t0 = time.perf_counter()
        if target not in TARGETS:
            raise ConfigError(f"target must be 'images' or 'captions', got {target!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        q = self._terms(text, image, like, minus, weights)
        return self.search_vector(q, k, target, filters, min_score, t0)

    def search_vector(self, q: np.ndarray, k: int = 10, target: str = "images",
                      filters: Filters | None = None, min_score: float | None = None,
                      started: float | None = None) -> SearchResult:
        """The ``k`` nearest items to a query vector ``[dim]`` (normalised by the caller)."""
        t0 = time.perf_counter() if started is None else started
        rows, scores = self._nearest(np.asarray(q, np.float32), int(k), target, filters)
        if min_score is not None:
            keep = scores >= float(min_score)
            rows, scores = rows[keep], scores[keep]
        return SearchResult(self._hits(rows, scores, target), target, time.perf_counter() - t0)

    def _nearest(self, q: np.ndarray, k: int, target: str,
                 filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS rows and exact scores of the nearest ``k`` vectors that pass ``filters``, best
        first. A filter that keeps few vectors is searched exactly over just those."""
        index, vecs = self.store.faiss[target], self.store.vectors[target]
        exact = self.store.info["factory"][target] == "Flat"
        allowed = self.store.rows_matching(target, filters) if filters else None
        if index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed is not None and (exact or len(allowed) <= SUBSET_EXACT):
            return _top(allowed, np.asarray(vecs[allowed], np.float32) @ q, k)
        if exact:
            scores, rows = index.search(q[None, :], min(index.ntotal, k))  # [1, k]
            keep = rows[0] >= 0
            return rows[0][keep], scores[0][keep]
        selector = None if allowed is None else _selector(allowed)  # alive while FAISS uses it
        params = None if selector is None else _params(index, selector)
        rows, scores = approximate_top(index, vecs, q[None, :], k, self.rerank[target], params)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def _hits(self, rows: np.ndarray, scores: np.ndarray, target: str) -> list[Hit]:
        ids = [int(self.store.row_ids[target][r]) for r in rows]
        if target == "captions":
            caps = self.store.captions(ids)
            images = self.store.images({c.image for c in caps.values()})
            return [_hit(rank, s, "caption", cid, images[caps[cid].image], [caps[cid].text])
                    for rank, (cid, s) in enumerate(zip(ids, scores), 1)]
        images = self.store.images(ids)
        return [_hit(rank, s, "image", i, images[i], [c.text for c in images[i].captions])
                for rank, (i, s) in enumerate(zip(ids, scores), 1)]

    def problems(self) -> list[str]:
        """What makes the index unusable now (empty when nothing): its files and counts (see
        :meth:`IndexStore.problems`), then a one-result search of each target by a stored vector,
        which must find an item of the index."""
        out = self.store.problems()
        if out:
            return out
        for target in TARGETS:
            if len(self.store.row_ids[target]) == 0:
                continue
            try:
                q = np.array(self.store.vectors[target][0], np.float32)  # [dim]
                hits = self.search_vector(q, 1, target).hits
            except Exception as e:  # noqa: BLE001 - any failure here is what the check reports
                out.append(f"a search of the {target} fails: {type(e).__name__}: {e}")
                continue
            if len(hits) != 1 or not np.isfinite(hits[0].score):
                out.append(f"a search of the {target} finds no item")
        return out

    def image(self, image_id: int):
        """The record of an indexed image; raises :class:`UnknownItem`."""
        rec = self.store.images([image_id]).get(int(image_id))
        if rec is None:
            raise UnknownItem(f"image id {image_id} is not in the index")
        return rec

    def explain(self, image_id: int, text: str, method: str = "layercam", steps: int = 32):
        """Why the indexed image ``image_id`` and ``text`` are close: an
        :class:`~crossalign.explain.Explanation` (heat over the image, a score per word)."""
        from crossalign.explain import explain_pair

        if not str(text).strip():
            raise ConfigError("the text to explain is empty")
        from crossalign.data.members import source_size

        rec = self.image(image_id)
        if source_size(rec.path) < 0:
            raise UnknownItem(f"image id {image_id}: its file is no longer there")
        model = self._model()
        with self._explain_lock:  # one at a time: each runs the towers backwards, on every core
            return explain_pair(model.model, rec.path, str(text), method, steps, model.cfg.data.max_pixels)

    def close(self) -> None:
        self.store.close()


def _hit(rank: int, score, kind: str, item_id: int, im, captions: list[str]) -> Hit:
    return Hit(rank, float(score), float(score), kind, item_id, im.id, im.path, im.name, captions,
               im.labels, im.split, im.folder, im.date)


def _top(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``rows`` by ``scores``, best first (ties: the lower row first)."""
    if len(rows) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        part = part[np.argsort(rows[part], kind="stable")]  # row order, so ties stay stable
        order = part[np.argsort(-scores[part], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order].astype(np.float32)


def _selector(rows: np.ndarray):
    """A FAISS selector of these rows (sorted, int64)."""
    import faiss

    return faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(np.ascontiguousarray(rows, np.int64)))


def _params(index, selector):
    """Search parameters of ``index`` (its current efSearch / nprobe) restricted to ``selector``."""
    import faiss

    if hasattr(index, "hnsw"):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError, AttributeError):
        return faiss.SearchParameters(sel=selector)
    return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)


def open_index(path: str | Path, run: str | Path | None = None, *, model: bool = True,
               which: str = "best", device: str = "cpu", ef_search: int | None = None,
               nprobe: int | None = None, text_runtime: str = "torch") -> Index:
    """Open the index at ``path`` for searching.

    Args:
        run: the run whose model embeds the queries; default: the run that built the index.
            A run with other weights is refused (its vectors would not match the index's).
        model: load the model (off: only searches by vector or by indexed item).
        ef_search: HNSW's search breadth (more: better recall, slower); default: what the
            build tuned to its recall target.
        nprobe: IVF lists visited per query; default: what the build tuned.
        text_runtime: what embeds text queries: ``torch``, ``onnx`` (ONNX Runtime) or
            ``auto`` (ONNX Runtime where the text tower can run there); see
            :class:`~crossalign.index._vectors.Embedder`.
    """
    store = IndexStore(path)
    if not model:
        return Index(store, None, ef_search, nprobe)
    from crossalign.index._vectors import Embedder
    from crossalign.runs import is_run_folder

    run = Path(run) if run is not None else Path(store.info["run"])
    if not is_run_folder(run):
        store.close()
        raise RunError(f"{run}: the run that built the index {path} is not there; pass the run "
                       f"folder (--run RUN)")
    embedder = Embedder(run, which, device, text_runtime=text_runtime)
    if embedder.weights_hash != store.info["weights_hash"]:
        store.close()
        raise RunError(f"{path} was built with the model of {store.info['run']} (weights "
                       f"{store.info['weights_hash'][:12]}), and {run} holds another model "
                       f"({embedder.weights_hash[:12]}); its vectors would not match: rebuild with "
                       f"'crossalign index {run} ... --out {path}' or search with that run")
    return Index(store, embedder, ef_search, nprobe)
