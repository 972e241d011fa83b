"""Searching an index: text, images and items of the index as weighted query terms.

A query is a weighted sum of unit vectors, the way rclip combines its terms: each text or
image term adds ``weight * vector``, each term to push away (``minus``) subtracts its
vector, and the sum is normalised again. Exact (flat) indexes return the exact inner
products; approximate ones fetch more candidates and score those exactly against the stored
vectors, so every score printed is a true cosine similarity.

Search ranks by plain cosine (``evaluate``'s query-bank normalisation needs a bank of
training queries, which an index does not keep), and every result says so: a hit carries
``score`` (what ranked it) and ``cosine``, and a result its ``ranking`` and ``score_kind``.

An :class:`Index` follows the index folder while it serves: each call first looks whether
``CURRENT`` changed (one ``stat``), and if it did, one thread opens the new version while
the others go on with the old one; then the call pins the version served at its start and
uses that one alone. A version no longer served is closed when its last call ends, and its
folder removed when no other process holds it either (see :mod:`crossalign.index.store`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from crossalign.errors import ConfigError, RunError, UnknownItem
from crossalign.index._cutoff import Calibrated, cutoff_of
from crossalign.index._versions import read_current, relative_message
from crossalign.index.fusion import fuse
from crossalign.index.query import Query, Term, fts_match, gram_match, parse_query
from crossalign.index.store import Filters, IndexStore
from crossalign.index.recall import apply_params, approximate_top, tuned_params

__all__ = ["Index", "ServedVersion", "Hit", "SearchResult", "Filters", "open_index", "TARGETS",
           "RANKING", "SCORE_KIND", "MODES", "RANKINGS", "FUSION_WEIGHTS"]

log = logging.getLogger("crossalign.index")

TARGETS = ("images", "captions")
RANKING, SCORE_KIND = "plain", "cosine similarity"  # how search ranks, and what its scores are
MODES = ("vector", "keyword", "hybrid")
RANKINGS = {"vector": (RANKING, SCORE_KIND), "keyword": ("bm25", "BM25 relevance"),
            "hybrid": ("rrf", "reciprocal rank fusion score")}
FUSION_WEIGHTS = (1.0, 1.0)  # hybrid: the vector ranking's weight, the keyword ranking's
FUSION_DEPTH = 100  # hybrid: the least depth of each ranking fused (4 k when that is more)
# what an approximate index built without tuned parameters searches with: HNSW's breadth,
# IVF's lists visited
HNSW_EF_SEARCH = 128
IVF_NPROBE = 32
SUBSET_EXACT = 100_000  # a filter that keeps at most this many vectors is searched exactly
QUERY_CACHE = 1024  # text queries whose vectors are kept, the most recent first
RETRY_S = 1.0  # seconds before a version that failed to open is tried again (or CURRENT changes)


@dataclass
class Hit:
    """One result: an image (with its captions), or a caption (with its image)."""

    rank: int
    score: float  # what the ranking ordered by (vector mode: the cosine similarity)
    cosine: float | None  # cosine similarity to the query (None: a keyword search, no vector)
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
    # the calibrated probability that this is the query's match (None: not calibrated for it)
    probability: float | None = None
    # where the words matched (keyword and hybrid modes): [text, matched] pieces in order
    snippet: list = field(default_factory=list)
    ocr: str = ""  # the words read in the picture (an index built with --ocr)

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
    version: str = ""  # the version of the index that answered
    mode: str = "vector"  # vector, keyword or hybrid
    cutoff: dict = field(default_factory=dict)  # what cut the hits off: asked, and the cosine

    THUMB_SIDE = 128  # pixels: the longer side of a hit's picture in a notebook

    def _score_label(self) -> str:
        return "cos" if self.score_kind == SCORE_KIND else self.ranking

    def _summary(self) -> str:
        cut = ""
        if self.cutoff.get("cosine") is not None:
            asked = ", ".join(f"{k} {v}" for k, v in self.cutoff.items() if k != "cosine")
            cut = f"; cut off below cos {self.cutoff['cosine']:.4f} ({asked})"
        return (f"{len(self.hits)} {self.target} in {self.seconds * 1000:.1f} ms "
                f"({self.mode} search, ranking {self.ranking}: {self._score_label()} is "
                f"{self.score_kind}{cut})")

    @staticmethod
    def _extra(h: Hit) -> str:
        """What a hit carries beside its score: its cosine (when ranked otherwise) and its
        calibrated probability."""
        out = f"  cos {h.cosine:.4f}" if h.cosine is not None and h.cosine != h.score else ""
        return out + (f"  p {h.probability:.3f}" if h.probability is not None else "")

    def __str__(self) -> str:
        """The hits as ``crossalign search`` prints them: rank, score, path, first caption."""
        lines = []
        for h in self.hits:
            lines.append(f"{h.rank:>3}  {self._score_label()} {h.score:.4f}{self._extra(h)}  {h.path}")
            if h.snippet:
                lines.append("       " + "".join(f"[{t}]" if hit else t for t, hit in h.snippet))
            elif h.captions:
                more = f"  (+{len(h.captions) - 1} more)" if len(h.captions) > 1 else ""
                lines.append(f"       {h.captions[0]}{more}")
        if not self.hits:
            lines.append("nothing found (no item passes the filters and the cut-off)")
        return "\n".join(lines + [self._summary()])

    def _repr_pretty_(self, p, cycle: bool) -> None:  # IPython's plain-text display
        p.text(str(self))

    @staticmethod
    def _thumb_html(path: str, name: str, side: int) -> str:
        """The picture at ``path`` fitted into ``side`` pixels as an ``<img>`` with a JPEG data
        URI, or its name when it cannot be read."""
        import base64
        import html

        from crossalign.data.transforms import jpeg_bytes, thumbnail

        try:
            data = jpeg_bytes(thumbnail(path, side))
        except Exception:  # noqa: BLE001 - a file gone or unreadable since the build: its name
            label = html.escape(name or Path(path).name)
            return (f'<div style="width:{side}px;height:{side}px;display:flex;align-items:center;'
                    f'justify-content:center;background:#eee;color:#666;font-size:11px;'
                    f'word-break:break-all;text-align:center">{label}</div>')
        uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        return (f'<img src="{uri}" alt="{html.escape(name or Path(path).name)}" '
                f'style="max-width:{side}px;max-height:{side}px;display:block;margin:auto">')

    def _repr_html_(self) -> str:
        """The hits as a grid of thumbnails, each with its rank, score and first caption."""
        import html

        side = self.THUMB_SIDE
        cells = []
        for h in self.hits:
            caption = html.escape(h.captions[0]) if h.captions else ""
            cells.append(
                f'<figure style="width:{side}px;margin:0;font-size:12px;line-height:1.3" '
                f'title="{html.escape(h.path)}">{self._thumb_html(h.path, h.name, side)}'
                f"<figcaption><b>#{h.rank}</b> {html.escape(self._score_label())} {h.score:.4f}"
                f"<br>{caption}</figcaption></figure>")
        if not self.hits:
            cells.append("<p>nothing found (no item passes the filters and the cut-off)</p>")
        return (f'<div class="crossalign-search"><div style="display:flex;flex-wrap:wrap;gap:10px">'
                f'{"".join(cells)}</div><p style="font-size:12px;color:#666">'
                f"{html.escape(self._summary())}</p></div>")


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, bytes, Path, int, np.integer)):
        return [x]
    return list(x)


class ServedVersion:
    """One version of the index opened for searching: its store, the FAISS search breadth set
    on its indexes, its re-scoring depths, and how many calls are using it.

    Args:
        store: the version, opened.
        ef_search, nprobe: search breadths that override what the build tuned.
    """

    def __init__(self, store: IndexStore, ef_search: int | None = None,
                 nprobe: int | None = None) -> None:
        self.store = store
        self.rerank = {}  # candidates fetched per result by an approximate index, scored exactly
        for target in TARGETS:
            tuned, self.rerank[target] = tuned_params(store.info, target)
            params = {"efSearch": HNSW_EF_SEARCH, "nprobe": IVF_NPROBE, **tuned}
            if ef_search is not None:
                params["efSearch"] = ef_search
            if nprobe is not None:
                params["nprobe"] = nprobe
            apply_params(store.faiss[target], params)
        self._calibrated: dict[str, Calibrated] = {}
        self._calibrating = threading.Lock()
        self.pins = 0  # calls using this version now (counted under the Index's lock)
        self.retired = False  # another version is served: close this one when its calls end
        self._closed = False

    @property
    def version(self) -> str:
        return self.store.version

    @property
    def info(self) -> dict:
        return self.store.info

    def calibrated(self, target: str, kind: str) -> tuple[Calibrated | None, str]:
        """The calibration of ``target`` for a query of this ``kind`` (``text``: text terms
        alone; ``other``), or None and why there is none."""
        fitted = self.store.info.get("calibration") or {}
        if target not in fitted:
            return None, self.store.info.get("calibration_note") or (
                f"the index holds no calibration of its {target}")
        if kind != "text":
            return None, "it is fitted on text queries (captions), and this query has image terms"
        with self._calibrating:
            if target not in self._calibrated:
                self._calibrated[target] = Calibrated(self.store, target)
            return self._calibrated[target], ""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.store.close()


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """What tells a replaced or rewritten file from the one seen before, for one ``stat``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Index:
    """An index folder opened for searching, with the model of the run that built it; it
    serves the version ``CURRENT`` names, following it when a build replaces it.

    Every call uses one version from start to end (see :meth:`pinned`). A new version built
    with another model than the one embedding the queries is not switched to, nor one that
    cannot be opened: the version served goes on, and :meth:`problems` says why.

    Use :func:`open_index` to make one.
    """

    def __init__(self, store: IndexStore, embedder=None, ef_search: int | None = None,
                 nprobe: int | None = None) -> None:
        self.embedder, self.root = embedder, store.root
        self._breadth = (ef_search, nprobe)
        self._served = ServedVersion(store, ef_search, nprobe)
        self._state = threading.Lock()  # the version served, and every version's pins
        self._switching = threading.Lock()  # held by the one thread opening a new version
        self._seen: tuple | None = None  # CURRENT's stat when its name was last read
        self._retry_at: float | None = None  # when to try again a version that failed to open
        self._refused: str | None = None  # why the version CURRENT names is not served
        self._closed = False
        self._lock = threading.Lock()  # one query at a time through the model
        self._explain_lock = threading.Lock()
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()  # recent text query vectors
        self._cache_lock = threading.Lock()

    @contextmanager
    def pinned(self) -> Iterator[ServedVersion]:
        """The version served now, kept open until the block ends: a switch to a newer
        version goes on meanwhile, and this one is closed when its last call ends."""
        self._follow()
        with self._state:
            served = self._served
            served.pins += 1
        try:
            yield served
        finally:
            with self._state:
                served.pins -= 1
                last = served.retired and served.pins == 0
            if last:
                served.close()

    @property
    def store(self) -> IndexStore:
        """The store of the version served now (a call that must see one version throughout
        holds :meth:`Index.pinned` instead)."""
        self._follow()
        return self._served.store

    @property
    def version(self) -> str:
        """The name of the version served now."""
        return self.store.version

    @property
    def info(self) -> dict:
        return self.store.info

    @property
    def rerank(self) -> dict[str, int]:
        """Candidates per result of the version served that its approximate indexes fetch,
        to be scored exactly."""
        self._follow()
        return self._served.rerank

    def __len__(self) -> int:
        with self.pinned() as served:
            return len(served.store)

    def _follow(self) -> None:
        """Switch to the version ``CURRENT`` names when it changed. One thread opens it; the
        others meanwhile go on with the version served, so no call waits for a load."""
        key = _stat_key(self.root / "CURRENT")
        if self._closed or not self._due(key) or not self._switching.acquire(blocking=False):
            return
        try:
            if self._due(key):  # not done by another thread just before
                self._seen, self._retry_at = key, None
                self._check()
        finally:
            self._switching.release()

    def _due(self, key) -> bool:
        retry = self._retry_at is not None and time.monotonic() >= self._retry_at
        return key != self._seen or retry

    def _check(self) -> None:
        """Read the name in ``CURRENT`` and serve that version, if it can be served."""
        before, self._refused = self._refused, None
        served = self._served.version
        try:
            name = read_current(self.root)
        except (OSError, UnicodeDecodeError):
            return  # the store's problems() says so; the version served goes on
        if name == served:
            return
        try:
            new = self._open_current()
        except Exception as e:  # noqa: BLE001 - whatever a damaged version raises, calls go on
            why = relative_message(self.root, str(e) or type(e).__name__)
            self._refused = (f"CURRENT names {name}, which cannot be opened ({why}); still "
                             f"serving {served}")
            self._retry_at = time.monotonic() + RETRY_S
        else:
            if new.version == served:  # CURRENT names the version served again
                new.close()
                return
            self._refused = self._refusal(new, served)
            if self._refused is None:
                self._switch(new)
                log.info("%s: now serving %s (was %s)", self.root, new.version, served)
                return
            new.close()
        if self._refused != before:  # once, not at every try
            log.warning("%s: %s", self.root, self._refused)

    def _open_current(self) -> ServedVersion:
        store = IndexStore(self.root)
        try:
            return ServedVersion(store, *self._breadth)
        except BaseException:
            store.close()
            raise

    def _refusal(self, new: ServedVersion, served: str) -> str | None:
        """Why ``new`` must not be served (one line), or None."""
        if self.embedder is None:
            return None  # no queries to embed: any model's vectors can be searched by item
        theirs, ours = new.info.get("weights_hash", ""), self.embedder.weights_hash
        if theirs == ours:
            return None
        return (f"CURRENT names {new.version}, built with another model (weights {theirs[:12]}) "
                f"than the one embedding queries here ({ours[:12]}); still serving {served}")

    def _switch(self, new: ServedVersion) -> None:
        with self._state:
            if self._closed:
                old, last = new, True
            else:
                old, self._served = self._served, new
                old.retired = True
                last = old.pins == 0
        if last:
            old.close()

    def _model(self):
        if self.embedder is None:
            raise RunError(f"{self.root}: opened without a model; text and image queries "
                           f"need one")
        return self.embedder

    def _terms(self, store: IndexStore, text, image, like, minus, weights) -> np.ndarray:
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
        tv = self._text_vectors([str(t) for t in texts + minus], store.info["dim"])
        vecs, pushed = list(tv[:len(texts)]), list(tv[len(texts):])  # [dim] each
        with self._lock:
            for im in images:
                model = self._model()
                v = model.picture(im, "upload")
                vecs.append(v[0])
        for item in likes:
            v = store.vector("images", int(item))
            if v is None:
                raise UnknownItem(f"image id {item} is not in the index")
            vecs.append(v)
        q = sum(w * v for w, v in zip(weights, vecs)) - sum(pushed, np.zeros_like(vecs[0]))
        norm = float(np.linalg.norm(q))
        if norm < 1e-6:
            raise ConfigError("the query terms cancel out (their weighted sum is zero)")
        return (q / norm).astype(np.float32)

    def _text_vectors(self, texts: list[str], dim: int) -> np.ndarray:
        """``[len(texts), dim]`` vectors of text terms; recent ones come from memory (they
        hold for every version served: all are built with the same model)."""
        if not texts:
            return np.zeros((0, dim), np.float32)
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
               min_score: float | None = None, *, query: str | Query | None = None,
               mode: str = "vector", min_prob: float | None = None,
               coverage: float | None = None,
               fusion: Sequence[float] = FUSION_WEIGHTS) -> SearchResult:
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
            min_score: leave out hits below this cosine similarity (at most ``k`` remain).
            query: the text terms in one string, with their weights and the terms to push
                away (``beach +sunset:0.5 -people``; see :mod:`crossalign.index.query`), in place
                of ``text``, ``weights`` and ``minus``.
            mode: ``vector`` (by meaning), ``keyword`` (by words: captions, file names, labels
                and the words read in the pictures, ranked by BM25) or ``hybrid`` (both
                rankings fused by reciprocal rank fusion).
            min_prob: leave out hits whose calibrated probability of being the query's match
                is below this.
            coverage: keep the smallest set of hits that holds the query's match with this
                probability (split-conformal; at most ``k`` of them are returned).
            fusion: hybrid: the weights of the vector and the keyword ranking.
        """
        t0 = time.perf_counter()
        if target not in TARGETS:
            raise ConfigError(f"target must be 'images' or 'captions', got {target!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if mode not in MODES:
            raise ConfigError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}")
        if query is not None:
            if _as_list(text) or _as_list(minus) or weights is not None:
                raise ConfigError("give `query` (terms, weights and pushed terms in one string) "
                                  "or `text`/`weights`/`minus`, not both")
            parsed = query if isinstance(query, Query) else parse_query(query)
            text, weights, minus = parsed.texts, parsed.weights, None
        else:
            parsed = _as_query(text, minus, weights)
        kind = "text" if parsed.terms and not _as_list(image) and not _as_list(like) else "other"
        with self.pinned() as served:
            q = None
            if mode != "keyword":
                q = self._terms(served.store, text, image, like, minus, weights)
            elif kind != "text":
                raise ConfigError("a keyword search takes words only: no image or `like` terms")
            return self._search(served, q, k, target, filters, t0, mode=mode, query=parsed,
                                kind=kind, fusion=fusion,
                                limits=(min_score, min_prob, coverage))

    def search_vector(self, q: np.ndarray, k: int = 10, target: str = "images",
                      filters: Filters | None = None, min_score: float | None = None,
                      started: float | None = None) -> SearchResult:
        """The ``k`` nearest items to a query vector ``[dim]`` (normalised by the caller)."""
        t0 = time.perf_counter() if started is None else started
        with self.pinned() as served:
            return self._search(served, q, k, target, filters, t0, limits=(min_score, None, None))

    def _search(self, served: ServedVersion, q: np.ndarray | None, k: int, target: str,
                filters: Filters | None, t0: float, *, mode: str = "vector", query=None,
                kind: str = "other", fusion: Sequence[float] = FUSION_WEIGHTS,
                limits: tuple = (None, None, None)) -> SearchResult:
        store = served.store
        q = None if q is None else np.asarray(q, np.float32)
        calibrated, why_not = served.calibrated(target, kind)
        n = len(store.rows_matching(target, filters)) if filters else len(store.row_ids[target])
        cut = cutoff_of(q, calibrated, n, *limits, why_not=why_not)
        snippets: dict[int, list] = {}
        if mode == "vector":
            rows, scores = self._nearest(served, q, int(k), target, filters)
            cosines = scores
        else:
            depth = int(k) if mode == "keyword" and cut.cosine is None else max(FUSION_DEPTH, 4 * k)
            krows, kscores, snips = store.keyword_rows(target, fts_match(query), filters, depth,
                                                       gram_match(query))
            snippets = {int(r): _pieces(s) for r, s in zip(krows, snips)}
            if mode == "keyword":
                rows, scores, cosines = krows, kscores, None
            else:
                vrows, _ = self._nearest(served, q, depth, target, filters)
                rows, scores = fuse([vrows, krows], fusion)
                cosines = _cosines(store.vectors[target], rows, q)
        if cut.cosine is not None:
            keep = cosines >= cut.cosine
            rows, scores, cosines = rows[keep], scores[keep], cosines[keep]
        rows, scores = rows[:k], scores[:k]
        cosines = None if cosines is None else cosines[:k]
        probs = None if calibrated is None or cosines is None else calibrated.probability(q, cosines, n)
        hits = self._hits(store, rows, scores, target, cosines, probs, snippets)
        ranking, score_kind = RANKINGS[mode]
        return SearchResult(hits, target, time.perf_counter() - t0, ranking, score_kind,
                            version=served.version, mode=mode,
                            cutoff=cut.to_dict() if cut.asked else {})


    def _nearest(self, served: ServedVersion, q: np.ndarray, k: int, target: str,
                 filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS rows and exact scores of the nearest ``k`` vectors that pass ``filters``, best
        first. A filter that keeps few vectors is searched exactly over just those."""
        store = served.store
        index, vecs = store.faiss[target], store.vectors[target]
        exact = store.info["factory"][target] == "Flat"
        allowed = store.rows_matching(target, filters) if filters else None
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
        rows, scores = approximate_top(index, vecs, q[None, :], k, served.rerank[target], params)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def _hits(self, store: IndexStore, rows: np.ndarray, scores: np.ndarray, target: str,
              cosines: np.ndarray | None = None, probs: np.ndarray | None = None,
              snippets: dict | None = None) -> list[Hit]:
        ids = [int(store.row_ids[target][r]) for r in rows]
        cos = [None] * len(ids) if cosines is None else [float(c) for c in cosines]
        prob = [None] * len(ids) if probs is None else [float(p) for p in probs]
        snip = [(snippets or {}).get(int(r), []) for r in rows]
        if target == "captions":
            caps = store.captions(ids)
            images = store.images({c.image for c in caps.values()})
            return [_hit(rank, s, c, p, sn, "caption", cid, images[caps[cid].image], [caps[cid].text])
                    for rank, (cid, s, c, p, sn) in enumerate(zip(ids, scores, cos, prob, snip), 1)]
        images = store.images(ids)
        return [_hit(rank, s, c, p, sn, "image", i, images[i], [c_.text for c_ in images[i].captions])
                for rank, (i, s, c, p, sn) in enumerate(zip(ids, scores, cos, prob, snip), 1)]

    def problems(self) -> list[str]:
        """What makes the index unusable now (empty when nothing), in lines that name files
        relative to the index folder: a version ``CURRENT`` names that is not served, and why;
        the served version's files and counts (see :meth:`IndexStore.problems`); then a
        one-result search of each target by a stored vector, which must find an item."""
        with self.pinned() as served:
            refused = self._refused
            out = ([refused] if refused else []) + served.store.problems()
            if out:
                return out
            for target in TARGETS:
                if len(served.store.row_ids[target]) == 0:
                    continue
                try:
                    q = np.array(served.store.vectors[target][0], np.float32)  # [dim]
                    hits = self._search(served, q, 1, target, None, time.perf_counter()).hits
                except Exception as e:  # noqa: BLE001 - any failure here is what the check reports
                    out.append(f"a search of the {target} fails: {type(e).__name__}: "
                               f"{relative_message(self.root, str(e))}")
                    continue
                if len(hits) != 1 or not np.isfinite(hits[0].score):
                    out.append(f"a search of the {target} finds no item")
            return out

    def image(self, image_id: int):
        """The record of an indexed image; raises :class:`UnknownItem`."""
        with self.pinned() as served:
            rec = served.store.images([image_id]).get(int(image_id))
        if rec is None:
            raise UnknownItem(f"image id {image_id} is not in the index")
        return rec

    def explain(self, image_id: int, text: str, method: str = "layercam", steps: int = 32):
        """Why the indexed image ``image_id`` and ``text`` are close: an
        :class:`~crossalign.explain.pair.Explanation` (heat over the image, a score per word)."""
        from crossalign.explain.pair import explain_pair

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
        """Close the version served: now, or when the calls still using it end."""
        with self._state:
            self._closed = True
            served = self._served
            served.retired = True
            last = served.pins == 0
        if last:
            served.close()


def _hit(rank: int, score, cosine, prob, snippet, kind: str, item_id: int, im,
         captions: list[str]) -> Hit:
    return Hit(rank, float(score), cosine, kind, item_id, im.id, im.path, im.name, captions,
               im.labels, im.split, im.folder, im.date, prob, snippet, im.ocr or "")


def _pieces(snippet: str) -> list[list]:
    """A snippet with its matched words marked (``\\x02word\\x03``) as ``[text, matched]``
    pieces in order."""
    out = []
    for part in snippet.split("\x02"):
        word, sep, rest = part.partition("\x03")
        if sep:
            out.append([word, True])
            part = rest
        if part:
            out.append([part, False])
    return [p for p in out if p[0]]


def _cosines(vecs, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``[len(rows)]`` the exact cosines of stored rows to the query."""
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    order = np.argsort(rows)  # read the stored rows in order (a row file seeks less)
    out = np.empty(len(rows), np.float32)
    out[order] = np.asarray(vecs[rows[order]], np.float32) @ q
    return out


def _as_query(text, minus, weights) -> Query:
    """The query of separate text terms (their weights: the first ones of ``weights``), as the
    keyword search reads it; image terms have no words."""
    texts, pushed = [str(t) for t in _as_list(text)], [str(t) for t in _as_list(minus)]
    given = [float(w) for w in _as_list(weights)] if weights is not None else []
    terms = [Term(t, given[i] if i < len(given) else 1.0) for i, t in enumerate(texts)]
    return Query(terms + [Term(t, -1.0) for t in pushed])


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
                       f"folder (`run` RUN)")
    embedder = Embedder(run, which, device, text_runtime=text_runtime)
    if embedder.weights_hash != store.info["weights_hash"]:
        store.close()
        raise RunError(f"{path} was built with the model of {store.info['run']} (weights "
                       f"{store.info['weights_hash'][:12]}), and {run} holds another model "
                       f"({embedder.weights_hash[:12]}); its vectors would not match: rebuild with "
                       f"'crossalign index {run} ... --out {path}' or search with that run")
    return Index(store, embedder, ef_search, nprobe)
