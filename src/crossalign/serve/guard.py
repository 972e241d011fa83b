"""What stands between the network and the routes: pure ASGI middleware, outermost first.

- :class:`Front`: a request id on every answer and log line, the security headers, one access
  log line per request (its query string only with ``log_queries``), and the metrics;
- :class:`HostCheck`: only ``Host`` values of the allow-list are answered (a page that rebinds
  a name of its own to this address gets a 421 before any route runs);
- :class:`TokenCheck`: with a token set, every route but ``/health`` and the sign-in form
  needs ``Authorization: Bearer <token>`` or the cookie the sign-in form sets;
- :class:`UploadLimit`: an upload over the limit gets a 413 before it is read whole.

Every answer they make themselves is a small JSON body: nothing of the server in it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

__all__ = ["Access", "Front", "HostCheck", "TokenCheck", "UploadLimit", "request_id",
           "LOOPBACK_NAMES", "COOKIE", "session_value", "RequestIdFilter"]

log = logging.getLogger("crossalign.serve")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
COOKIE = "crossalign_session"
OPEN_PATHS = ("/health", "/login", "/static/style.css")  # answered without the token
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# the page's own scripts, styles and pictures (thumbnails, and the heat maps as data: URLs)
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")
# Swagger UI and ReDoc put style attributes into their pages and ReDoc draws in a worker; their
# scripts still come from this origin only
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin")]


@dataclass(frozen=True)
class Access:
    """Who may ask.

    Args:
        token: the bearer token every route but ``/health`` asks for; None: no token.
        hosts: the ``Host`` names answered (without a port); the loopback names always are.
        secure_cookie: mark the sign-in cookie ``Secure`` (the service is reached over TLS,
            behind a reverse proxy).
    """

    token: str | None = None
    hosts: tuple[str, ...] = ()
    secure_cookie: bool = False


def session_value(token: str) -> str:
    """What the sign-in cookie holds: derived from the token, so the token itself never sits in
    a cookie jar, and the same in every worker process."""
    return hmac.new(token.encode(), b"crossalign session", hashlib.sha256).hexdigest()


def _json(status: int, message: str, extra: list[tuple[bytes, bytes]] = ()):
    body = json.dumps({"detail": message}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *extra]}
    return start, {"type": "http.response.body", "body": body}


async def _answer(send, status: int, message: str, extra: list[tuple[bytes, bytes]] = ()) -> None:
    start, body = _json(status, message, extra)
    await send(start)
    await send(body)


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def host_name(value: bytes | None) -> str:
    """The name of a ``Host`` header without its port (``[::1]:8000`` -> ``[::1]``)."""
    text = (value or b"").decode("latin-1").strip()
    if text.startswith("["):
        return text[:text.find("]") + 1] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostCheck:
    """Answers 421 to a request whose ``Host`` is not in the allow-list."""

    def __init__(self, app, access: Access) -> None:
        self.app = app
        self.allowed = {h.lower() for h in (*LOOPBACK_NAMES, *access.hosts)}

    async def __call__(self, scope, receive, send) -> None:
        host = host_name(_header(scope, b"host")).lower()
        if scope["type"] == "http" and host not in self.allowed:
            return await _answer(send, 421, "this service does not answer to that host name; "
                                            "its operator can add it with --allow-host")
        return await self.app(scope, receive, send)


def _cookie(scope) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except Exception:  # noqa: BLE001 - a malformed cookie header is simply no session
        return None
    return jar[COOKIE].value if COOKIE in jar else None


class TokenCheck:
    """Answers 401 unless the request carries the token (or the sign-in cookie)."""

    def __init__(self, app, access: Access) -> None:
        self.app, self.token = app, access.token
        self.session = session_value(access.token) if access.token else None

    def signed_in(self, scope) -> bool:
        auth = _header(scope, b"authorization") or b""
        scheme, _, given = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              self.token.encode()):
            return True
        cookie = _cookie(scope)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS
                or self.signed_in(scope)):
            return await self.app(scope, receive, send)
        if scope["method"] == "GET" and scope["path"] == "/":
            from crossalign.serve._login_page import login_page

            return await login_page(send, status=401)
        return await _answer(send, 401, "sign in: send 'Authorization: Bearer <token>' (the "
                                        "token the service was started with)",
                             [(b"www-authenticate", b'Bearer realm="crossalign"')])


class UploadLimit:
    """A body over ``limit`` bytes on ``path`` gets a 413 before it is read whole.

    A declared ``Content-Length`` over the limit is refused without reading; a body sent in
    chunks is counted as it arrives and refused at the first byte past the limit.
    """

    def __init__(self, app, path: str, limit: int) -> None:
        self.app, self.path, self.limit = app, path, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        too_large = f"upload larger than {self.limit} bytes"
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _answer(send, 413, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                return await _answer(send, 413, too_large)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replay = iter([{"type": "http.request", "body": b"".join(chunks), "more_body": False}])

        async def receive_again():
            return next(replay, {"type": "http.disconnect"})

        return await self.app(scope, receive_again, send)


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being answered into every log record (``-`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class Front:
    """Outermost: a request id, the security headers, the access log line and the metrics.

    Args:
        metrics: a :class:`crossalign.serve.metrics.Metrics` (or None).
        log_queries: put the query string into the access log (off: only the path).
    """

    def __init__(self, app, metrics=None, log_queries: bool = False) -> None:
        self.app, self.metrics, self.log_queries = app, metrics, log_queries

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        t0, status, started = time.perf_counter(), [500], [False]
        csp = DOCS_CSP if scope["path"] in DOCS_PATHS else PAGE_CSP
        extra = [(b"x-request-id", rid.encode()), (b"content-security-policy", csp.encode()),
                 *SECURITY_HEADERS]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:  # a bug: its traceback goes to the log, never to the client
            log.error("%s %s failed", scope["method"], scope["path"], exc_info=True)
            if not started[0]:  # an answer already under way is cut off instead
                start, body = _json(500, "internal error (logged by the service)")
                await send_with_headers(start)
                await send_with_headers(body)
        finally:
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "other"
            if self.metrics is not None:
                self.metrics.observe(scope["method"], route, status[0], seconds)
            if log.isEnabledFor(logging.INFO):  # the target is built only for a line written
                log.info("%s %s %d %.1f ms", scope["method"], self._target(scope), status[0],
                         1000 * seconds)
            request_id.reset(token)

    def _target(self, scope) -> str:
        query = scope.get("query_string", b"").decode("latin-1")
        if not query:
            return scope["path"]
        if self.log_queries:
            return f"{scope['path']}?{query}"
        return f"{scope['path']}?[{len(parse_qs(query))} parameters]"
