"""The search service: a thin FastAPI layer over :class:`crossalign.index.Index`.

Errors the user caused (a bad query, an unknown id, an upload that is not an image) are
answered with a 4xx and a message; anything else is logged with its traceback and answered
with a 500. Images are served only by their id in the index, never by a path.
"""

from __future__ import annotations

import functools
import json
import logging
import mimetypes
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from crossalign.errors import ConfigError, CrossalignError
from crossalign.index.search import RANKING, SCORE_KIND, Filters, Index, SearchResult
from crossalign.errors import UnknownItem

__all__ = ["create_app", "ServiceLimits"]

log = logging.getLogger("crossalign.serve")
STATIC = Path(__file__).parent / "static"
MAX_ID = 2**62  # ids are SQLite integers; larger numbers are simply unknown
Target = Literal["images", "captions"]


class ServiceLimits:
    """What one request may ask for.

    Args:
        max_k: the most results per query.
        max_query_chars: the longest text query.
        max_upload_bytes: the largest request body of an image upload (refused before it is
            read whole).
        max_thumb: the largest thumbnail side.
        page_k: the results the web page asks for (at most ``max_k``).
    """

    def __init__(self, max_k: int = 100, max_query_chars: int = 500,
                 max_upload_bytes: int = 10 * 1024 * 1024, max_thumb: int = 1024,
                 page_k: int = 24) -> None:
        if max_k < 1 or page_k < 1:
            raise ConfigError(f"the most results per query (--max-k) and the page's k must be "
                              f"positive, got {max_k} and {page_k}")
        self.max_k, self.max_query_chars = max_k, max_query_chars
        self.max_upload_bytes, self.max_thumb = max_upload_bytes, max_thumb
        self.page_k = min(page_k, max_k)
        self.default_k = min(10, max_k)  # k of a request that names none


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class _UploadLimit:
    """ASGI middleware: a body over the limit on ``path`` gets a 413 before it is read whole.

    A declared ``Content-Length`` over the limit is refused without reading; a body sent in
    chunks is counted as it arrives and refused at the first byte past the limit.
    """

    def __init__(self, app, path: str, limit: int) -> None:
        self.app, self.path, self.limit = app, path, limit

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"upload larger than {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replay = iter([{"type": "http.request", "body": b"".join(chunks), "more_body": False}])

        async def receive_again():
            return next(replay, {"type": "http.disconnect"})

        return await self.app(scope, receive_again, send)


def _hit_json(hit) -> dict:
    d = hit.to_dict()
    del d["path"]  # an image is named by its id and name, never by where it lies on the server
    d["image_url"] = f"/images/{hit.image_id}"
    d["thumb_url"] = f"/images/{hit.image_id}?size=256"
    return d


def _result_json(result: SearchResult, query: dict) -> dict:
    return {"query": query, "target": result.target, "seconds": result.seconds,
            "ranking": result.ranking, "score_kind": result.score_kind,
            "hits": [_hit_json(h) for h in result.hits]}


def _install_errors(app: FastAPI) -> None:
    from crossalign.errors import ImageError

    @app.exception_handler(UnknownItem)
    async def _unknown(request: Request, exc: UnknownItem):
        return _error(404, str(exc))

    @app.exception_handler(ImageError)
    async def _image(request: Request, exc: ImageError):
        return _error(413 if exc.kind == "too_large" else 415, str(exc))

    @app.exception_handler(CrossalignError)
    async def _user(request: Request, exc: CrossalignError):
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error (logged by the service)")


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
                                                 "hits scored below this")) -> None:
        if len(label) > MAX_LABEL_FILTERS or any(len(x) > 200 for x in label):
            raise HTTPException(422, f"at most {MAX_LABEL_FILTERS} label filters of at most 200 "
                                     f"characters each")
        self.filters = Filters.of(split, folder, since, until, label)
        self.min_score = min_score

    def echo(self) -> dict:
        f = self.filters
        return {"split": f.split or None, "folder": f.folder or None, "since": f.since or None,
                "until": f.until or None, "label": [f"{c}={v}" for c, v in f.labels],
                "min_score": self.min_score}


def _add_search_routes(app: FastAPI, index: Index, limits: ServiceLimits) -> None:
    @app.get("/search", summary="Search by text (and/or by an indexed image: more like this)")
    def search(q: str | None = Query(None, max_length=limits.max_query_chars,
                                     description="text query"),
               k: int = Query(limits.default_k, ge=1, le=limits.max_k), target: Target = "images",
               minus: str | None = Query(None, max_length=limits.max_query_chars,
                                         description="a text to push away"),
               like: int | None = Query(None, ge=0, le=MAX_ID,
                                        description="an image id: more like this"),
               narrow: _Narrowing = Depends()):
        if (q is None or not q.strip()) and like is None:
            raise HTTPException(422, "give a non-empty query q (or like=ID)")
        if minus is not None and not minus.strip():
            minus = None
        result = index.search(text=q if q and q.strip() else None, like=like, minus=minus, k=k,
                              target=target, filters=narrow.filters, min_score=narrow.min_score)
        return _result_json(result, {"q": q, "minus": minus, "like": like, "k": k,
                                     **narrow.echo()})

    @app.post("/search/image", summary="Search by an uploaded image (multipart field 'file')")
    def search_image(file: UploadFile = File(..., description="an image file"),
                     k: int = Query(limits.default_k, ge=1, le=limits.max_k),
                     target: Target = "images", narrow: _Narrowing = Depends()):
        data = file.file.read()
        result = index.search(image=data, k=k, target=target, filters=narrow.filters,
                              min_score=narrow.min_score)
        return _result_json(result, {"image": file.filename or "upload", "k": k, **narrow.echo()})


def _add_item_routes(app: FastAPI, index: Index, limits: ServiceLimits) -> None:
    from crossalign.data.transforms import jpeg_bytes, thumbnail

    @functools.lru_cache(maxsize=4096)
    def thumb(image_id: int, size: int) -> bytes:
        return jpeg_bytes(thumbnail(index.image(image_id).path, size))

    @app.get("/items/{item_id}", summary="An indexed image with its captions and labels")
    def item(item_id: int = PathParam(..., ge=0, le=MAX_ID)):
        rec = index.image(item_id)
        return {"id": rec.id, "name": rec.name, "split": rec.split, "folder": rec.folder,
                "date": rec.date, "labels": rec.labels, "captions": [c.text for c in rec.captions],
                "image_url": f"/images/{rec.id}", "thumb_url": f"/images/{rec.id}?size=256"}

    @app.get("/images/{item_id}", summary="An indexed image file, or its thumbnail (size=N)",
             response_class=Response)
    def image(item_id: int = PathParam(..., ge=0, le=MAX_ID),
              size: int | None = Query(None, ge=16, le=limits.max_thumb)):
        from crossalign.data.members import parse_ref, read_member, source_size

        rec = index.image(item_id)
        if source_size(rec.path) < 0:
            raise UnknownItem(f"image id {item_id}: its file is no longer there")
        if size is None:
            ref = parse_ref(rec.path)  # a member of a tar shard: its bytes, read in place
            kind = mimetypes.guess_type(ref.name if ref else rec.path)[0] or "application/octet-stream"
            if ref is not None:
                return Response(read_member(ref), media_type=kind)
            return FileResponse(rec.path, media_type=kind)
        return Response(thumb(int(item_id), int(size)), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})


Method = Literal["layercam", "gradcam++", "gradcam", "hirescam", "xgradcam", "eigencam"]
EXPLAIN_WAIT_S = 20  # a request waits this long for the explanation before it; then a 503
OVERLAY_SIDE = 384


def _explanation_json(expl) -> dict:
    """The explanation for the page: the heat overlay as a JPEG data URL, the words' scores."""
    from crossalign.explain.render import overlay_uri

    d = expl.to_json()
    return {"similarity": d["similarity"], "method": d["method"], "words": d["words"],
            "hottest": d["hottest"], "image_size": d["image_size"], "overlay": overlay_uri(expl, OVERLAY_SIDE)}


def _add_explain_route(app: FastAPI, index: Index, limits: ServiceLimits) -> None:
    import threading

    busy = threading.Semaphore(1)

    @functools.lru_cache(maxsize=128)
    def explained(image_id: int, q: str, method: str) -> dict:
        return _explanation_json(index.explain(image_id, q, method))

    @app.get("/explain", summary="Why an indexed image matches a text: a heat map over the image "
                                 "and a score per word")
    def explain(id: int = Query(..., ge=0, le=MAX_ID, description="an indexed image id"),
                q: str = Query(..., max_length=limits.max_query_chars, description="the text"),
                method: Method = "layercam"):
        if not q.strip():
            raise HTTPException(422, "give a non-empty text q")
        index.image(id)  # an unknown id is a 404 before any waiting
        if not busy.acquire(timeout=EXPLAIN_WAIT_S):
            raise HTTPException(503, "the service is busy explaining other matches; try again")
        try:
            return {"id": id, "q": q, **explained(int(id), q.strip(), method)}
        finally:
            busy.release()


def create_app(index: Index, limits: ServiceLimits | None = None) -> FastAPI:
    """The FastAPI application serving ``index`` (and the search page at ``/``)."""
    limits = limits or ServiceLimits()
    app = FastAPI(title="crossalign search", version="1",
                  description="Search an image collection by text or by image.")
    _install_errors(app)

    @app.get("/health", summary="Whether the index is usable (503 with the reasons if not), "
                                "and what it holds")
    def health():
        info = index.info
        about = {"images": info["n_images"], "captions": info["n_captions"],
                 "index": info["factory"], "model": info["weights_hash"][:12],
                 "version": index.store.version,
                 "text_runtime": getattr(index.embedder, "text_runtime_used", None)}
        problems = index.problems()
        if problems:
            return JSONResponse({"status": "unavailable", "detail": "; ".join(problems),
                                 "problems": problems, **about}, status_code=503)
        return {"status": "ok", **about}

    @app.get("/config", summary="What a request may ask for, and what the page asks for")
    def config():
        return {"k": limits.page_k, "default_k": limits.default_k, "max_k": limits.max_k,
                "max_query_chars": limits.max_query_chars,
                "max_upload_bytes": limits.max_upload_bytes, "max_thumb": limits.max_thumb,
                "ranking": RANKING, "score_kind": SCORE_KIND}

    _add_search_routes(app, index, limits)
    _add_item_routes(app, index, limits)
    _add_explain_route(app, index, limits)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_UploadLimit, path="/search/image", limit=limits.max_upload_bytes)
    return app
