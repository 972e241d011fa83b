"""``crossalign.serve``: the search service (FastAPI on uvicorn) and its web page.

``serve(INDEX)`` opens the index with the model of the run that built it and answers on
127.0.0.1:8000 unless told otherwise; ``create_app(index)`` gives the application alone
(for tests, or to mount elsewhere).

Sharing it: a token (``CROSSALIGN_TOKEN`` in the environment, or ``token_file``) is asked of
every request but ``/health``; an address other than loopback is refused without one unless
``no_auth`` says so. Host names other than the loopback ones and the listening address are
answered only when allowed (``allow_hosts``). ``workers`` starts that many processes, each
with the index open; it follows rebuilds of the index by itself.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path

from crossalign.errors import ConfigError

__all__ = ["serve", "create_app", "app_from_environment", "read_token"]

TOKEN_ENV = "CROSSALIGN_TOKEN"
OPTIONS_ENV = "CROSSALIGN_SERVE_OPTIONS"  # how serve() hands its options to worker processes
MIN_TOKEN_CHARS = 16
MAX_CONNECTIONS = 256  # per process: past this, uvicorn answers 503 at once
MAX_HEADER_BYTES = 16 * 1024  # a request whose headers are larger is refused
KEEP_ALIVE_S = 5


def create_app(index, limits=None, access=None, log_queries: bool = False):
    """The FastAPI application over an opened :class:`crossalign.index.search.Index` (see
    :func:`crossalign.serve.app.create_app`)."""
    from crossalign.serve.app import create_app as _create

    return _create(index, limits, access, log_queries)


def read_token(token_file: str | Path | None = None) -> str | None:
    """The service's token: the first line of ``token_file``, else ``CROSSALIGN_TOKEN``,
    else None. Raises :class:`ConfigError` for a missing, empty or short token."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as e:
            raise ConfigError(f"{path}: cannot read a token from it ({type(e).__name__})") from None
        where = str(path)
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
        where = TOKEN_ENV
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: the token has {len(token)} characters; use at least "
                          f"{MIN_TOKEN_CHARS} (python -c \"import secrets; "
                          f"print(secrets.token_urlsafe(32))\")")
    return token


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _open(options: dict):
    """The index and the app of ``options`` (see :func:`serve`)."""
    import faiss

    from crossalign.index.search import open_index
    from crossalign.serve.app import ServiceLimits
    from crossalign.serve.guard import Access

    faiss.omp_set_num_threads(1)  # one query per request: threads would only contend
    ix = open_index(options["index"], options["run"], device=options["device"],
                    text_runtime=options["text_runtime"])
    access = Access(token=os.environ.get(TOKEN_ENV) or None, hosts=tuple(options["hosts"]),
                    secure_cookie=options["secure_cookie"])
    app = create_app(ix, ServiceLimits(**options["limits"]), access, options["log_queries"])
    ix.search(text="warm up", k=1)  # the first pass through the model is slow; not a user's
    import gc

    # the models and libraries loaded so far live as long as the process: kept out of the
    # collector's full passes, which would otherwise walk them all while holding the GIL
    gc.collect()
    gc.freeze()
    return ix, app


def _configure_logging(level: str) -> None:
    """One line per request and per problem, each with its request id."""
    from crossalign.serve.guard import RequestIdFilter

    logger = logging.getLogger("crossalign.serve")
    if not any(getattr(h, "_crossalign", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] "
                                               "%(message)s"))
        handler.addFilter(RequestIdFilter())
        handler._crossalign = True
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if level in ("info", "debug") else logging.WARNING)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports every CPU variant


def app_from_environment():
    """The app of one worker process: its options come from :data:`OPTIONS_ENV` (uvicorn calls
    this in each worker of ``serve(..., workers=N)``)."""
    options = json.loads(os.environ[OPTIONS_ENV])
    _configure_logging(options["log_level"])
    _, app = _open(options)
    return app


def _check_exposure(host: str, token: str | None, no_auth: bool) -> None:
    if token is None and not no_auth and not _is_loopback(host):
        raise ConfigError(f"`host` {host} opens the service to other machines: set a token "
                          f"({TOKEN_ENV} or `token_file` FILE), or pass `no_auth` to serve "
                          f"without one on purpose")


def serve(index: str | Path, host: str = "127.0.0.1", port: int = 8000, run: str | Path | None = None,
          device: str = "cpu", max_upload_bytes: int = 10 * 1024 * 1024, max_k: int = 100,
          log_level: str = "info", text_runtime: str = "auto", *,
          token_file: str | Path | None = None, no_auth: bool = False,
          allow_hosts: tuple[str, ...] = (), workers: int = 1, max_pixels: int = 40_000_000,
          log_queries: bool = False, secure_cookie: bool = False,
          max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve the index at ``index`` over HTTP until stopped (Ctrl-C).

    Args:
        host: the address to listen on; the default answers this machine only. Another
            address needs a token, or ``no_auth``.
        run: the run whose model embeds queries (default: the one that built the index).
        max_upload_bytes: the largest image upload.
        max_k: the most results one query may ask for.
        text_runtime: what embeds text queries (``auto``: ONNX Runtime where the text tower
            can run there, else torch; ``onnx``; ``torch``).
        token_file: a file whose first line is the token (else ``CROSSALIGN_TOKEN``).
        no_auth: serve a non-loopback address without a token, on purpose.
        allow_hosts: host names answered besides the loopback names and ``host``.
        workers: processes answering requests, each with the index open.
        max_pixels: the most pixels of an uploaded image.
        log_queries: put query strings into the access log (off: paths only).
        secure_cookie: mark the sign-in cookie Secure (served over TLS by a proxy).
        max_connections: open connections per process; past it, 503 at once.
    """
    import uvicorn

    from crossalign.serve._protocol import GuardedH11Protocol

    token = read_token(token_file)
    _check_exposure(host, token, no_auth)
    if workers < 1:
        raise ConfigError(f"`workers` must be at least 1, got {workers}")
    hosts = tuple(dict.fromkeys([*allow_hosts, *([] if host in ("0.0.0.0", "::") else [host])]))
    # what a worker process needs, as JSON (the token travels in the environment, not here)
    options = dict(index=str(index), run=None if run is None else str(run), device=device,
                   text_runtime=text_runtime, hosts=hosts, secure_cookie=secure_cookie,
                   log_queries=log_queries, log_level=log_level,
                   limits=dict(max_k=max_k, max_upload_bytes=max_upload_bytes,
                               max_pixels=max_pixels))
    if token is not None:
        os.environ[TOKEN_ENV] = token  # to this process's app and to the workers
    _configure_logging(log_level)
    limits = dict(host=host, port=port, log_level=log_level, access_log=False,
                  timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=max_connections,
                  h11_max_incomplete_event_size=MAX_HEADER_BYTES, http=GuardedH11Protocol)
    where = (f"http://{host}:{port}/ ({'token asked' if token else 'no token'}; "
             f"API docs at /docs, metrics at /metrics)")
    if workers == 1:
        ix, app = _open(options)
        print(f"serving {index} ({len(ix)} images; text queries through "
              f"{ix.embedder.text_runtime_used}) on {where}")
        try:
            uvicorn.run(app, **limits)
        finally:
            ix.close()
        return
    _serve_workers(options, workers, limits, where)


def _serve_workers(options: dict, workers: int, limits: dict, where: str) -> None:
    """uvicorn's process manager over :func:`app_from_environment`; the metrics of all workers
    are added up through a folder of prometheus-client's multiprocess files."""
    import shutil
    import tempfile

    import uvicorn

    metrics_dir = tempfile.mkdtemp(prefix="crossalign-metrics-")
    os.environ[OPTIONS_ENV] = json.dumps(options)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    print(f"serving {options['index']} with {workers} worker processes on {where}")
    try:
        uvicorn.run("crossalign.serve:app_from_environment", factory=True, workers=workers,
                    **limits)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
