"""``crossalign.serve``: the search service (FastAPI on uvicorn) and its web page.

``serve(INDEX)`` opens the index with the model of the run that built it and answers on
127.0.0.1:8000 unless told otherwise; ``create_app(index)`` gives the application alone
(for tests, or to mount elsewhere).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["serve", "create_app"]


def create_app(index, limits=None):
    """The FastAPI application over an opened :class:`crossalign.index.Index`."""
    from crossalign.serve.app import create_app as _create

    return _create(index, limits)


def serve(index: str | Path, host: str = "127.0.0.1", port: int = 8000, run: str | Path | None = None,
          device: str = "cpu", max_upload_bytes: int = 10 * 1024 * 1024, max_k: int = 100,
          log_level: str = "info", text_runtime: str = "auto") -> None:
    """Serve the index at ``index`` over HTTP until stopped (Ctrl-C).

    Args:
        host: the address to listen on; the default answers this machine only.
        run: the run whose model embeds queries (default: the one that built the index).
        max_upload_bytes: the largest image upload.
        max_k: the most results one query may ask for.
        text_runtime: what embeds text queries (``auto``: ONNX Runtime where the text tower
            can run there, else torch; ``onnx``; ``torch``).
    """
    import faiss
    import uvicorn

    from crossalign.index import open_index
    from crossalign.serve.app import ServiceLimits

    faiss.omp_set_num_threads(1)  # one query per request: threads would only contend
    ix = open_index(index, run, device=device, text_runtime=text_runtime)
    app = create_app(ix, ServiceLimits(max_k=max_k, max_upload_bytes=max_upload_bytes))
    ix.search(text="warm up", k=1)  # the first pass through the model is slow; not a user's
    print(f"serving {index} ({len(ix)} images; text queries through "
          f"{ix.embedder.text_runtime_used}) on http://{host}:{port}/  (API docs at /docs)")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        ix.close()
