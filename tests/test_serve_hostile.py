"""The service under hostile and careless clients: a page that rebinds a name of its own to
this address, a missing or wrong token, decompression bombs, slow and idle connections, a
flood of explanations, error answers that would tell the server's insides, offline docs."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from crossalign.cli.main import main
from crossalign.index.search import open_index
from crossalign.serve import create_app, read_token
from crossalign.serve.guard import COOKIE, Access

from _browser import browser_page
from _live import free_port, serving

LOCAL = "http://127.0.0.1"
TOKEN = "a-test-token-that-is-long-enough"


def _client(served_index, access=None, limits=None, **kw) -> TestClient:
    return TestClient(create_app(served_index, limits, access, **kw), base_url=LOCAL,
                      raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(served_index):
    return _client(served_index)


@pytest.fixture(scope="module")
def locked(served_index):
    """The service with a token."""
    return _client(served_index, Access(token=TOKEN))


# ---- hosts -----------------------------------------------------------------------------------

def test_a_host_name_not_allowed_is_refused_before_routing(served_index, client):
    """DNS rebinding: a page of evil.example whose name now points here sends Host: evil.example."""
    for path in ("/search?q=a+red+circle", "/items/0", "/images/0", "/", "/health", "/nosuch"):
        r = client.get(path, headers={"Host": "evil.example"})
        assert r.status_code == 421, (path, r.status_code)
        assert "evil.example" not in r.text and "path" not in r.json()
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:9", "[::1]:8000"):
        assert client.get("/search?q=a+red+circle", headers={"Host": host}).status_code == 200, host
    assert client.get("/health", headers={"Host": "search.lab:443"}).status_code == 421
    allowed = _client(served_index, Access(hosts=("search.lab",)))
    assert allowed.get("/health", headers={"Host": "search.lab:443"}).status_code == 200
    assert allowed.get("/health", headers={"Host": "other.lab"}).status_code == 421


def test_no_redirect_is_built_from_the_host_header(client):
    for path in ("/search/?q=a", "/items/0/", "/static", "/docs/", "/health/"):
        r = client.get(path, headers={"Host": "localhost"}, follow_redirects=False)
        assert not 300 <= r.status_code < 400, (path, r.status_code, r.headers.get("location"))


# ---- the token -------------------------------------------------------------------------------

def test_every_route_but_health_asks_for_the_token(locked):
    for path in ("/search?q=a+red+circle", "/items/0", "/images/0", "/images/0?size=64",
                 "/explain?id=0&q=a", "/config", "/metrics", "/docs", "/openapi.json",
                 "/static/app.js", "/search?q=a&token=" + TOKEN):
        r = locked.get(path)
        assert r.status_code == 401, (path, r.status_code)
    r = locked.post("/search/image", files={"file": ("x.png", b"x", "image/png")})
    assert r.status_code == 401
    assert locked.get("/health").status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert locked.get("/search?q=a+red+circle", headers=bearer).status_code == 200
    assert locked.get("/metrics", headers=bearer).status_code == 200
    for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer "):
        assert locked.get("/items/0", headers={"Authorization": wrong}).status_code == 401, wrong


def test_the_page_asks_for_the_token_once_and_keeps_a_cookie(locked, served_index):
    page = locked.get("/")
    assert page.status_code == 401 and 'action="/login"' in page.text and 'type="password"' in page.text
    wrong = locked.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    right = locked.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie and TOKEN not in cookie  # plain HTTP; a value derived from it
    value = re.search(COOKIE + r"=([0-9a-f]+)", cookie).group(1)
    fresh = _client(served_index, Access(token=TOKEN))
    fresh.cookies.set(COOKIE, value)
    assert fresh.get("/search?q=a+red+circle").status_code == 200
    assert fresh.get("/").status_code == 200
    fresh.cookies.set(COOKIE, value[:-1] + ("0" if value[-1] != "0" else "1"))
    assert fresh.get("/search?q=a").status_code == 401
    # behind TLS (a proxy that says so, or https itself) the cookie is Secure
    tls = TestClient(create_app(served_index, None, Access(token=TOKEN)), base_url="https://localhost")
    assert "Secure" in tls.post("/login", data={"token": TOKEN}, follow_redirects=False).headers["set-cookie"]


def test_serving_beyond_loopback_needs_a_token(shared_index_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CROSSALIGN_TOKEN", raising=False)
    assert main(["serve", str(shared_index_dir), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-auth" in err[0] and "CROSSALIGN_TOKEN" in err[0]
    short = tmp_path / "short"
    short.write_text("1234\n")
    assert main(["serve", str(shared_index_dir), "--token-file", str(short)]) == 2
    assert "at least 16" in capsys.readouterr().err
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert read_token(good) == TOKEN
    monkeypatch.setenv("CROSSALIGN_TOKEN", TOKEN)
    assert read_token() == TOKEN
    from crossalign.serve import _check_exposure

    _check_exposure("0.0.0.0", TOKEN, no_auth=False)  # a token: fine
    _check_exposure("192.0.2.7", None, no_auth=True)  # no token, on purpose: fine
    _check_exposure("::1", None, no_auth=False)  # loopback: fine
    args = [a.option_strings for a in __import__("crossalign.cli.main", fromlist=["x"])
            .build_parser()._subparsers._group_actions[0].choices["serve"]._actions]
    assert not any("--token" in opts for opts in args)  # never a token on the command line


# ---- headers ---------------------------------------------------------------------------------

def test_every_answer_carries_the_security_headers(client, served_index):
    answers = [client.get("/"), client.get("/search?q=a+red+circle"), client.get("/nosuch"),
               client.get("/search?k=0"), client.get("/images/0"), client.get("/images/0?size=64"),
               client.get("/static/app.js"), client.get("/docs"), client.get("/metrics"),
               client.get("/health", headers={"Host": "evil.example"})]
    ids = set()
    for r in answers:
        h = r.headers
        assert h["x-content-type-options"] == "nosniff", r.url
        assert h["referrer-policy"] == "no-referrer" and h["x-frame-options"] == "DENY"
        csp = h["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        assert "http" not in csp and "*" not in csp  # this origin only
        ids.add(h["x-request-id"])
    assert len(ids) == len(answers)  # a request id each
    for r in answers[4:6]:
        assert r.status_code == 200 and r.headers["cache-control"].startswith("private")


# ---- bounded work ----------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, raw: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header(client, monkeypatch):
    bomb = _png(9400, 9400, b"\0" * 1000)  # 88 Mpx declared in a few hundred bytes
    assert len(bomb) < 400
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    r = client.post("/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 413 and "over the limit of 40000000" in r.json()["detail"]
    assert decoded == []  # refused before a pixel was decoded


def test_an_image_whose_data_ends_early_is_refused(client):
    half = _png(64, 64, b"\0" * (1 + 64 * 3) * 32)  # a whole zlib stream, half the rows
    r = client.post("/search/image", files={"file": ("half.png", half, "image/png")})
    assert r.status_code == 415 and "truncated" in r.json()["detail"]
    whole = _png(64, 64, b"\0" * (1 + 64 * 3) * 64)
    assert client.post("/search/image", files={"file": ("whole.png", whole, "image/png")}).status_code == 200


def test_thumbnails_snap_to_a_few_sizes(client):
    sizes = {}
    for asked in (16, 65, 100, 128, 129, 300):
        r = client.get(f"/images/0?size={asked}")
        assert r.status_code == 200
        with Image.open(io.BytesIO(r.content)) as im:
            sizes[asked] = max(im.size)
    # the shapes images are 64 px: never enlarged; a 64-px request is served the 64 one
    assert set(sizes.values()) == {64}
    from crossalign.serve.app import _snap

    assert [_snap(s, 1024) for s in (16, 64, 65, 200, 256, 257, 1024)] == [64, 64, 128, 256, 256, 512, 1024]
    assert _snap(300, 300) == 256 and _snap(20, 32) == 32


class _Gate:
    """A stand-in for Index.explain that holds every call until the test opens the gate."""

    def __init__(self) -> None:
        self.open, self.entered = threading.Event(), threading.Semaphore(0)

    def __call__(self, image_id, text, method="layercam"):
        self.entered.release()
        assert self.open.wait(30)
        return _FakeExplanation()


class _FakeExplanation:
    def to_json(self):
        return {"similarity": 0.5, "method": "layercam", "words": [], "hottest": [0, 0],
                "image_size": [64, 64]}


def test_an_explain_flood_is_refused_at_once_and_searches_go_on(served_index, monkeypatch):
    """40 explanations at once: one runs, two wait, the rest get 503 + Retry-After while the
    first is still running; searches and a cached explanation are answered meanwhile."""
    from crossalign.serve import app as app_module

    gate = _Gate()
    monkeypatch.setattr(served_index, "explain", gate)
    monkeypatch.setattr(app_module, "_explanation_json",
                        lambda e: {**e.to_json(), "overlay": "data:image/jpeg;base64,"})
    with serving(create_app(served_index)) as url, httpx.Client(base_url=url, timeout=60) as http:
        gate.open.set()
        assert http.get("/explain", params={"id": 0, "q": "cached"}).status_code == 200
        gate.open.clear()
        with ThreadPoolExecutor(40) as pool:
            flood = [pool.submit(http.get, "/explain", params={"id": 0, "q": f"query {i}"})
                     for i in range(40)]
            assert gate.entered.acquire(timeout=30)  # the first is running, and held there
            refused = []
            deadline = time.monotonic() + 30
            while len(refused) < 37 and time.monotonic() < deadline:
                refused = [f.result() for f in flood if f.done()]
                time.sleep(0.02)
            assert len(refused) == 37 and not gate.open.is_set()
            assert all(r.status_code == 503 and r.headers["retry-after"] == "1" for r in refused)
            assert "busy" in refused[0].json()["detail"]
            assert http.get("/search", params={"q": "a red circle"}).status_code == 200
            assert http.get("/explain", params={"id": 0, "q": "cached"}).status_code == 200
            gate.open.set()
            answered = [f.result() for f in flood]
        assert sum(r.status_code == 200 for r in answered) == 3


# ---- slow and idle clients -------------------------------------------------------------------

def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """Whether the server closes ``sock`` within ``seconds`` while it sends ``trickle`` a byte
    every 0.1 s."""
    sock.settimeout(0.1)
    deadline, sent = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            pass
        except OSError:
            return True
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent:sent + 1])
            except OSError:
                return True
            sent += 1
    return False


def test_idle_and_slow_clients_are_let_go(served_index):
    """Deadlines of 1 s for the headers and 2 s for the body here (10 s and 60 s by default);
    each connection must be closed by the server within a few seconds more (slack for a busy
    machine), where without the deadlines they stayed open for good."""
    from crossalign.serve._protocol import GuardedH11Protocol

    class Quick(GuardedH11Protocol):
        header_timeout_s, body_timeout_s = 1.0, 2.0

    with serving(create_app(served_index), http=Quick) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = socket.create_connection(("127.0.0.1", port))
        headers = socket.create_connection(("127.0.0.1", port))
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(b"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        slow_headers = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 200
        assert _closed_within(idle, 8)
        assert _closed_within(headers, 8, trickle=slow_headers)
        assert _closed_within(body, 8, trickle=b"-" * 200)
        for s in (idle, headers, body):
            s.close()
        assert httpx.get(url + "/health").status_code == 200  # and the service still answers


# ---- nothing of the server in an answer ------------------------------------------------------

def test_no_error_answer_tells_the_servers_insides(shared_index_dir, tmp_path, monkeypatch):
    """Every route's error paths: no absolute path, object repr or traceback in any body."""
    root = tmp_path / "idx"
    shutil.copytree(shared_index_dir, root)
    ix = open_index(root)
    c = _client(ix)
    rec = ix.image(3)
    picture = Path(rec.path)  # a file of the module's data: put back at the end
    saved = picture.read_bytes()
    picture.write_bytes(b"not a picture any more")  # a damaged file on the server
    try:
        answers = _error_answers(c, ix, root, picture, monkeypatch)
    finally:
        picture.write_bytes(saved)
        ix.close()
    statuses = [r.status_code for r in answers]
    assert all(400 <= s < 600 for s in statuses), statuses
    assert 500 in statuses and 503 in statuses and 415 in statuses and 413 in statuses
    home = str(Path.home())
    for r in answers:
        text = r.text
        assert r.json()["detail"], text
        for inside in (str(root), str(tmp_path), str(shared_index_dir), home + "/", "/tmp/", "Traceback",
                       "object at 0x", 'File "', "site-packages"):
            assert inside not in text, (r.request.url, text)


def _error_answers(c, ix, root: Path, picture: Path, monkeypatch) -> list:
    """An answer of every error path: bad uploads, a damaged and a missing file, unknown ids,
    bad parameters, an unknown route and method, a damaged served_index, a bug."""
    answers = [
        c.post("/search/image", files={"file": ("x.png", b"this is not an image", "image/png")}),
        c.post("/search/image", files={"file": ("x.png", b"", "image/png")}),
        c.post("/search/image", files={"file": ("x.png", b"\0" * 20_000_000, "image/png")}),
        c.get("/images/3?size=64"), c.get("/explain", params={"id": 3, "q": "a red circle"}),
        c.get("/images/99999"), c.get("/items/abc"), c.get("/search?q=a&since=yesterday"),
        c.get("/search?q=a&label=nosuch=1"), c.get("/search?q=a&k=0"), c.get("/nosuch"),
        c.get("/search", params={"q": "a", "k": "1e9"}), c.put("/search"),
    ]
    picture.unlink()
    answers += [c.get("/images/3"), c.get("/explain", params={"id": 3, "q": "a"})]
    (root / ix.store.version / "captions.npy").unlink()
    answers.append(c.get("/health"))

    def broken(*a, **k):
        raise RuntimeError(f"boom in {root}")

    monkeypatch.setattr(ix, "search", broken)
    answers.append(c.get("/search", params={"q": "x"}))
    return answers


def test_public_cuts_paths_and_reprs():
    from crossalign.serve.app import public

    assert public("/srv/photos/2019/a.jpg: cannot read image") == "a.jpg: cannot read image"
    assert public("cannot identify image file <_io.BytesIO object at 0x7f3a2b>") == \
        "cannot identify image file the upload"
    assert public("v-abc/images.npy missing") == "v-abc/images.npy missing"  # relative: kept
    assert public("see /images/3") == "see 3" and public("a 2/3 share") == "a 2/3 share"


# ---- operations ------------------------------------------------------------------------------

def test_metrics_in_the_prometheus_format(served_index):
    c = _client(served_index)
    c.get("/search", params={"q": "a red circle"})
    c.get("/items/0")
    c.get("/items/99999")
    text = c.get("/metrics").text
    assert 'crossalign_requests_total{method="GET",route="/search",status="200"} 1.0' in text
    assert 'route="/items/{item_id}",status="404"' in text and 'route="/items/{item_id}",status="200"' in text
    assert "crossalign_request_seconds_bucket" in text
    assert 'crossalign_index_items{target="images"} 60.0' in text
    assert f'crossalign_index_version_info{{version="{served_index.version}"}} 1.0' in text
    assert 'crossalign_queue_depth{pool="explain"} 0.0' in text


def test_the_access_log_leaves_queries_out_unless_asked(served_index, caplog):
    with caplog.at_level(logging.INFO, logger="crossalign.serve"):
        r = _client(served_index).get("/search", params={"q": "my secret holiday"})
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "crossalign.serve"]
    assert any(line.startswith("GET /search") for line in lines)
    assert not any("secret" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="crossalign.serve"):
        _client(served_index, log_queries=True).get("/search", params={"q": "my secret holiday"})
    assert any("secret" in rec.getMessage() for rec in caplog.records if rec.name == "crossalign.serve")
    from crossalign.serve.guard import RequestIdFilter, request_id

    record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    token = request_id.set(r.headers["x-request-id"])
    RequestIdFilter().filter(record)
    request_id.reset(token)
    assert record.request_id == r.headers["x-request-id"]


def test_two_workers_answer_and_count_together(shared_index_dir, tmp_path):
    """``crossalign serve --workers 2`` as a user starts it: both processes answer, and
    /metrics adds up the requests of both."""
    port = free_port()
    env = {**os.environ, "CROSSALIGN_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "crossalign.cli.main", "serve", str(shared_index_dir),
                             "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        n = 40
        with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
            assert all(http.get("/search", params={"q": f"a red circle {i}"}).status_code == 200
                       for i in range(n))
            assert http.get("/search", params={"q": "a red circle"}).status_code == 200
            text = http.get("/metrics").text
        got = re.search(r'crossalign_requests_total\{method="GET",route="/search",status="200"\} '
                        r'([0-9.]+)', text)
        assert got and float(got.group(1)) == n + 1
    finally:
        proc.terminate()
        proc.wait(30)


# ---- the docs, offline -----------------------------------------------------------------------

@pytest.mark.needs("chromium")
def test_docs_load_with_the_network_blocked(served_index):
    """/docs and /redoc draw the API from files of this origin alone: every other request is
    blocked, and the page must still show the operations, with no console error (a policy
    violation is one)."""
    errors, foreign = [], []
    with serving(create_app(served_index)) as url, browser_page(errors) as page:
        def gate(route):
            if route.request.url.startswith(url) or route.request.url.startswith("data:"):
                return route.continue_()
            foreign.append(route.request.url)
            return route.abort()

        page.route("**/*", gate)
        page.goto(url + "/docs", wait_until="load")
        page.wait_for_selector('[data-path="/search/image"]', timeout=30_000)
        assert page.locator(".opblock").count() >= 7
        page.goto(url + "/redoc", wait_until="load")
        page.wait_for_selector("text=Search by an uploaded image", timeout=30_000)
    assert foreign == []
    # ReDoc always tries to show its maker's logo from their site: the policy blocks it (the
    # picture is left out, nothing is fetched); any other console error is a failure
    blocked_logo = [e for e in errors if "logo-mini.svg" in e and "Content Security Policy" in e]
    assert [e for e in errors if e not in blocked_logo] == []


@pytest.mark.needs("chromium")
def test_the_page_signs_in_with_the_token_and_searches(served_index, tmp_path):
    errors = []
    with serving(create_app(served_index, None, Access(token=TOKEN))) as url, browser_page(errors) as page:
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(url + "/?q=a+red+circle", wait_until="load")
        assert page.locator("#login").count() == 1
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.wait_for_url(url + "/", timeout=30_000)
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('for “a red circle” in')",
                               timeout=30_000)
        assert page.locator(".card").count() == 24
        page.screenshot(path=str(tmp_path / "signed-in.png"))
        page.context.clear_cookies()
        page.fill("#query", "a blue square")
        page.press("#query", "Enter")
        page.wait_for_url(url + "/login", timeout=30_000)  # signed out: back to the form
    assert [e for e in errors if "401" not in e] == []
