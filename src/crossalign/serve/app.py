"""The search service: a thin FastAPI layer over :class:`crossalign.index.search.Index`.

Errors the user caused (a bad query, an unknown id, an upload that is not an image) are
answered with a 4xx and a message; anything else is logged with its traceback and answered
with a 500 (by ``guard.Front``). No answer carries a path of the server, an object's repr or a
traceback: images are served only by their id in the index, and every message passes
:func:`public` first.

In front of the routes (``guard.py``): the host allow-list, the token, the security headers,
a request id, the metrics. Heavy work (decoding an upload, embedding a query, drawing a
thumbnail, explaining a match) runs in bounded pools (``work.py``) and is refused with a 503
at once when they are full.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from crossalign.errors import ConfigError, CrossalignError, ImageError, UnknownItem
from crossalign.index.query import Query as TextQuery, Term, parse_query
from crossalign.index.search import (FUSION_WEIGHTS, MODES, RANKING, SCORE_KIND, Filters, Hit, Index,
                                     SearchResult)
from crossalign.serve.guard import Access, Front, HostCheck, TokenCheck, UploadLimit
from crossalign.serve.work import Busy, PoolSizes, WorkPool

__all__ = ["create_app", "ServiceLimits", "public", "THUMB_SIZES"]

STATIC = Path(__file__).parent / "static"
MAX_ID = 2**62  # ids are SQLite integers; larger numbers are simply unknown
Target = Literal["images", "captions"]
Mode = Literal[MODES]
THUMB_SIZES = (64, 128, 256, 512, 1024)  # a thumbnail asked for is drawn at the next of these
POOLS = {"query": PoolSizes(slots=4, queue=64, wait_s=5.0),  # text queries, more like this
         "upload": PoolSizes(slots=1, queue=4, wait_s=5.0),  # decode and embed an upload
         "thumb": PoolSizes(slots=2, queue=64, wait_s=5.0),  # a page asks for 24 at once
         "explain": PoolSizes(slots=1, queue=2, wait_s=30.0)}  # seconds of every core each
POOL_WORK = {"query": "searching", "upload": "reading uploads", "thumb": "drawing thumbnails",
             "explain": "explaining other matches"}
CACHE_BYTES = {"thumb": 64 * 2**20, "explain": 16 * 2**20}


class ServiceLimits:
    """What one request may ask for.

    Args:
        max_k: the most results per query.
        max_query_chars: the longest text query.
        max_upload_bytes: the largest request body of an image upload (refused before it is
            read whole).
        max_thumb: the largest thumbnail side.
        page_k: the results the web page asks for (at most ``max_k``).
        max_pixels: the most pixels of an uploaded image, read from its header before any
            decoding.
    """

    def __init__(self, max_k: int = 100, max_query_chars: int = 500,
                 max_upload_bytes: int = 10 * 1024 * 1024, max_thumb: int = 1024,
                 page_k: int = 24, max_pixels: int = 40_000_000) -> None:
        if max_k < 1 or page_k < 1 or max_pixels < 1:
            raise ConfigError(f"the most results per query (`max_k`), the page's k and the pixel "
                              f"limit (`max_pixels`) must be positive, got {max_k}, {page_k} and "
                              f"{max_pixels}")
        self.max_k, self.max_query_chars = max_k, max_query_chars
        self.max_upload_bytes, self.max_thumb = max_upload_bytes, max_thumb
        self.page_k = min(page_k, max_k)
        self.default_k = min(10, max_k)  # k of a request that names none
        self.max_pixels = max_pixels


_PATH = re.compile(r"(?<![\w.:/])(?:~|\.{1,2})?/(?:[^\s'\"/<>]+/)+([^\s'\"/<>]*)")
_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def public(message: str) -> str:
    """A message fit for a client: absolute paths cut to their last part, object reprs out."""
    message = _REPR.sub("the upload", str(message))
    return _PATH.sub(lambda m: m.group(1) or "a folder of the server", message)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": public(message)}, status_code=status, headers=headers)


class _ByteCache:
    """A least-recently-used map bounded by the bytes of its values (thread-safe)."""

    def __init__(self, max_bytes: int, size=len) -> None:
        self.max_bytes, self.size, self.bytes = max_bytes, size, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value) -> None:
        n = self.size(value)
        if n > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self.bytes -= self.size(self._items.pop(key))
            self._items[key] = value
            self.bytes += n
            while self.bytes > self.max_bytes:
                self.bytes -= self.size(self._items.popitem(last=False)[1])


_HIT_FIELDS = [f.name for f in dataclasses.fields(Hit) if f.name != "path"]  # an image is
# named by its id and name, never by where it lies on the server


def _hit_json(hit) -> dict:
    d = {name: getattr(hit, name) for name in _HIT_FIELDS}  # shallow: asdict copies deeply
    d["image_url"] = f"/images/{hit.image_id}"
    d["thumb_url"] = f"/images/{hit.image_id}?size=256"
    return d


def _result_json(result: SearchResult, query: dict) -> dict:
    """The answer to a search, of plain JSON types (sent as it is: FastAPI's generic encoder
    would take longer than the search)."""
    return {"query": query, "target": result.target, "seconds": result.seconds,
            "mode": result.mode, "ranking": result.ranking, "score_kind": result.score_kind,
            "cutoff": result.cutoff, "hits": [_hit_json(h) for h in result.hits]}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(UnknownItem)
    async def _unknown(request: Request, exc: UnknownItem):
        return _error(404, str(exc))

    @app.exception_handler(ImageError)
    async def _image(request: Request, exc: ImageError):
        return _error(413 if exc.kind == "too_large" else 415, str(exc))

    @app.exception_handler(CrossalignError)
    async def _user(request: Request, exc: CrossalignError):
        return _error(400, str(exc))


MAX_LABEL_FILTERS = 8


class _Narrowing:
    """The query parameters every search takes beside its query: filters and a cut-off."""

    def __init__(self, split: str | None = Query(None, max_length=200,
                                                 description="only images of these splits "
                                                             "(comma-separated)"),
                 folder: str | None = Query(None, max_length=500, description="only images in "
                                            "this folder of the collection (or below it)"),
                 since: str | None = Query(None, max_length=19, description="only pictures taken "
                                           "(EXIF date, else file date) on or after YYYY-MM-DD"),
                 until: str | None = Query(None, max_length=19, description="... on or before"),
                 label: list[str] = Query([], description="COLUMN=VALUE: only images with that "
                                          "label (repeatable, all must hold)"),
                 min_score: float | None = Query(None, ge=-1.0, le=1.0, description="leave out "
                                                 "hits below this cosine similarity"),
                 min_prob: float | None = Query(None, gt=0.0, lt=1.0, description="leave out "
                                                "hits whose calibrated probability of being the "
                                                "query's match is below this"),
                 coverage: float | None = Query(None, gt=0.0, lt=1.0, description="keep the "
                                                "smallest set of hits that holds the query's "
                                                "match with this probability (conformal)")) -> None:
        if len(label) > MAX_LABEL_FILTERS or any(len(x) > 200 for x in label):
            raise HTTPException(422, f"at most {MAX_LABEL_FILTERS} label filters of at most 200 "
                                     f"characters each")
        self.filters = Filters.of(split, folder, since, until, label)
        self.limits = {"min_score": min_score, "min_prob": min_prob, "coverage": coverage}

    def echo(self) -> dict:
        f = self.filters
        return {"split": f.split or None, "folder": f.folder or None, "since": f.since or None,
                "until": f.until or None, "label": [f"{c}={v}" for c, v in f.labels],
                **self.limits}


def _add_search_routes(app: FastAPI, index: Index, limits: ServiceLimits,
                       pools: dict[str, WorkPool]) -> None:
    from crossalign.data.transforms import check_upload

    @app.get("/search", summary="Search by text (and/or by an indexed image: more like this)")
    async def search(q: str | None = Query(None, max_length=limits.max_query_chars,
                                           description='text query: terms split at words starting '
                                           'with + or -, ":W" weighs one, quotes make a phrase '
                                           '("beach +sunset:0.5 -people")'),
                     k: int = Query(limits.default_k, ge=1, le=limits.max_k),
                     target: Target = "images",
                     minus: str | None = Query(None, max_length=limits.max_query_chars,
                                               description="a text to push away"),
                     like: int | None = Query(None, ge=0, le=MAX_ID,
                                              description="an image id: more like this"),
                     mode: Mode = Query("vector", description="vector (by meaning), keyword (by "
                                        "words, BM25) or hybrid (both, rank fusion)"),
                     fusion: str | None = Query(None, max_length=40, description="hybrid: the "
                                                "weights of the vector and keyword rankings, V,K"),
                     narrow: _Narrowing = Depends()):
        if (q is None or not q.strip()) and like is None:
            raise HTTPException(422, "give a non-empty query q (or like=ID)")
        query = _query_of(q, minus)
        weights = _fusion_of(fusion)

        def run():
            return index.search(query=query, like=like, k=k, target=target, mode=mode,
                                fusion=weights, filters=narrow.filters, **narrow.limits)

        result = await pools["query"].run(run)
        return JSONResponse(_result_json(result, {"q": q, "minus": minus, "like": like, "k": k,
                                                  "mode": mode, "fusion": fusion,
                                                  **narrow.echo()}))

    @app.post("/search/image", summary="Search by an uploaded image (multipart field 'file')")
    async def search_image(file: UploadFile = File(..., description="an image file"),
                           k: int = Query(limits.default_k, ge=1, le=limits.max_k),
                           target: Target = "images", narrow: _Narrowing = Depends()):
        data = await file.read()

        def run():
            check_upload(data, limits.max_pixels)  # from the header, before any decoding
            return index.search(image=data, k=k, target=target, filters=narrow.filters,
                                **narrow.limits)

        result = await pools["upload"].run(run)
        return JSONResponse(_result_json(result, {"image": file.filename or "upload", "k": k,
                                                  **narrow.echo()}))


def _query_of(q: str | None, minus: str | None) -> TextQuery | None:
    """The query of the page's box (its grammar: :mod:`crossalign.index.query`) and a text to
    push away; None for a search by an indexed image alone."""
    query = parse_query(q) if q and q.strip() else None
    if minus and minus.strip():
        if query is None:
            raise HTTPException(422, "minus pushes a text away from a query: give q too")
        query.terms.append(Term(minus.strip(), -1.0))
    return query


def _fusion_of(fusion: str | None) -> tuple[float, ...]:
    if fusion is None or not fusion.strip():
        return FUSION_WEIGHTS
    try:
        return tuple(float(x) for x in fusion.split(","))
    except ValueError:
        raise HTTPException(422, f"fusion: two numbers V,K, got {fusion!r}") from None


def _snap(size: int, largest: int) -> int:
    """The thumbnail side drawn for a request of ``size``: the next of :data:`THUMB_SIZES` (at
    most ``largest``), so that a client cannot make a new thumbnail per pixel."""
    allowed = [s for s in THUMB_SIZES if s <= largest] or [largest]
    return next((s for s in allowed if s >= size), allowed[-1])


def _add_item_routes(app: FastAPI, index: Index, limits: ServiceLimits,
                     pools: dict[str, WorkPool]) -> None:
    from crossalign.data.members import parse_ref, read_member, source_size
    from crossalign.data.transforms import jpeg_bytes, thumbnail

    thumbs = _ByteCache(CACHE_BYTES["thumb"])
    private = {"Cache-Control": "private, max-age=3600"}

    @app.get("/items/{item_id}", summary="An indexed image with its captions and labels")
    def item(item_id: int = PathParam(..., ge=0, le=MAX_ID)):
        rec = index.image(item_id)
        return {"id": rec.id, "name": rec.name, "split": rec.split, "folder": rec.folder,
                "date": rec.date, "labels": rec.labels, "captions": [c.text for c in rec.captions],
                "image_url": f"/images/{rec.id}", "thumb_url": f"/images/{rec.id}?size=256"}

    def draw(path: str, key: tuple) -> bytes:
        data = jpeg_bytes(thumbnail(path, key[1]))
        thumbs.put(key, data)
        return data

    @app.get("/images/{item_id}", summary="An indexed image file, or its thumbnail (size=N, drawn "
                                          "at the next of 64, 128, 256, 512, 1024)",
             response_class=Response)
    async def image(item_id: int = PathParam(..., ge=0, le=MAX_ID),
                    size: int | None = Query(None, ge=16, le=limits.max_thumb)):
        rec = index.image(item_id)
        if size is not None:
            key = (rec.content_hash, _snap(size, limits.max_thumb))
            data = thumbs.get(key)
            if data is None:
                if source_size(rec.path) < 0:
                    raise UnknownItem(f"image id {item_id}: its file is no longer there")
                data = await pools["thumb"].run(draw, rec.path, key)
            return Response(data, media_type="image/jpeg", headers=private)
        if source_size(rec.path) < 0:
            raise UnknownItem(f"image id {item_id}: its file is no longer there")
        ref = parse_ref(rec.path)  # a member of a tar shard: its bytes, read in place
        kind = mimetypes.guess_type(ref.name if ref else rec.path)[0] or "application/octet-stream"
        if ref is not None:
            return Response(read_member(ref), media_type=kind, headers=private)
        return FileResponse(rec.path, media_type=kind, headers=private)


Method = Literal["layercam", "gradcam++", "gradcam", "hirescam", "xgradcam", "eigencam"]
OVERLAY_SIDE = 384


def _explanation_json(expl) -> dict:
    """The explanation for the page: the heat overlay as a JPEG data URL, the words' scores."""
    from crossalign.explain.render import overlay_uri

    d = expl.to_json()
    return {"similarity": d["similarity"], "method": d["method"], "words": d["words"],
            "hottest": d["hottest"], "image_size": d["image_size"],
            "overlay": overlay_uri(expl, OVERLAY_SIDE)}


def _add_explain_route(app: FastAPI, index: Index, limits: ServiceLimits,
                       pools: dict[str, WorkPool]) -> None:
    explained = _ByteCache(CACHE_BYTES["explain"], size=lambda d: len(d["overlay"]) + 1024)

    def explain_now(key: tuple) -> dict:
        d = _explanation_json(index.explain(key[1], key[2], key[3]))
        explained.put(key, d)
        return d

    @app.get("/explain", summary="Why an indexed image matches a text: a heat map over the image "
                                 "and a score per word")
    async def explain(id: int = Query(..., ge=0, le=MAX_ID, description="an indexed image id"),
                      q: str = Query(..., max_length=limits.max_query_chars,
                                     description="the text"),
                      method: Method = "layercam"):
        if not q.strip():
            raise HTTPException(422, "give a non-empty text q")
        rec = index.image(id)  # an unknown id is a 404 before any waiting
        key = (rec.content_hash, int(id), q.strip(), method)
        d = explained.get(key)  # an answer given before never waits for a slot
        if d is None:
            d = await pools["explain"].run(explain_now, key)
        return JSONResponse({"id": id, "q": q, **d})


def _abilities(index: Index) -> dict:
    """What the served version can do beyond a vector search: keywords, a calibrated cut-off,
    words read in its pictures."""
    with index.pinned() as served:
        info = served.info
        return {"modes": list(MODES) if served.store.has_keywords else ["vector"],
                "calibrated": bool((info.get("calibration") or {}).get("images")),
                "ocr": bool(info.get("ocr"))}


def _add_service_routes(app: FastAPI, index: Index, limits: ServiceLimits, metrics) -> None:
    @app.get("/health", summary="Whether the index is usable (503 with the reasons if not), "
                                "and what it holds")
    def health():
        with index.pinned() as served:  # the figures of one version
            info, version = served.info, served.version
        about = {"images": info["n_images"], "captions": info["n_captions"],
                 "index": info["factory"], "model": info["weights_hash"][:12],
                 "version": version,
                 "text_runtime": getattr(index.embedder, "text_runtime_used", None)}
        problems = [public(p) for p in index.problems()]
        if problems:
            return JSONResponse({"status": "unavailable", "detail": "; ".join(problems),
                                 "problems": problems, **about}, status_code=503)
        return {"status": "ok", **about}

    @app.get("/config", summary="What a request may ask for, what the page asks for, and the "
                                "index version served")
    def config():
        return {"k": limits.page_k, "default_k": limits.default_k, "max_k": limits.max_k,
                "max_query_chars": limits.max_query_chars,
                "max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                "max_thumb": limits.max_thumb, "thumb_sizes": [s for s in THUMB_SIZES
                                                               if s <= limits.max_thumb],
                "ranking": RANKING, "score_kind": SCORE_KIND, "version": index.version,
                **_abilities(index)}

    @app.get("/metrics", summary="The service's metrics in the Prometheus text format",
             response_class=Response)
    def prometheus():
        from crossalign.serve.metrics import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)


def create_app(index: Index, limits: ServiceLimits | None = None, access: Access | None = None,
               log_queries: bool = False) -> FastAPI:
    """The FastAPI application serving ``index`` (and the search page at ``/``).

    Args:
        limits: what one request may ask for.
        access: the token and the host names answered (default: no token, loopback names).
        log_queries: put each request's query string into the access log.
    """
    from crossalign.serve.docs import add_docs_routes
    from crossalign.serve.login import add_login_routes
    from crossalign.serve.metrics import Metrics

    limits, access = limits or ServiceLimits(), access or Access()
    app = FastAPI(title="crossalign search", version="1", docs_url=None, redoc_url=None,
                  redirect_slashes=False,  # its redirect would be built from the Host header
                  description="Search an image collection by text or by image.")
    pools = {name: WorkPool(POOL_WORK[name], sizes) for name, sizes in POOLS.items()}
    metrics = Metrics(index, pools)
    app.state.pools, app.state.metrics = pools, metrics
    _install_errors(app)
    _add_service_routes(app, index, limits, metrics)
    _add_search_routes(app, index, limits, pools)
    _add_item_routes(app, index, limits, pools)
    _add_explain_route(app, index, limits, pools)
    add_login_routes(app, access)
    add_docs_routes(app)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # added last = outermost: Front sees every answer, then hosts, then the token
    app.add_middleware(UploadLimit, path="/search/image", limit=limits.max_upload_bytes)
    app.add_middleware(TokenCheck, access=access)
    app.add_middleware(HostCheck, access=access)
    app.add_middleware(Front, metrics=metrics, log_queries=log_queries)
    return app
