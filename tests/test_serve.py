"""The search service: every endpoint, every bad request (4xx, never 5xx), fuzzing from its own
OpenAPI, and the page in a real browser."""

from __future__ import annotations

import inspect
import io
import logging
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from crossalign.cli.main import build_parser
from crossalign.index.search import open_index
from crossalign.serve import create_app, serve
from crossalign.serve.app import ServiceLimits

from _browser import browser_page
from _live import serving

LIMIT = 200_000  # bytes of an upload request in these tests
LOCAL = "http://127.0.0.1"  # the service answers loopback host names only, unless told more


@pytest.fixture(scope="module")
def app(served_index):
    return create_app(served_index, ServiceLimits(max_k=50, max_query_chars=200, max_upload_bytes=LIMIT))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False, base_url=LOCAL)


def _png(color=(200, 30, 30), size=64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def test_health_and_text_search(client, served_index):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["images"] == 60 and h["captions"] == 300
    r = client.get("/search", params={"q": "a red circle", "k": 5})
    assert r.status_code == 200
    body = r.json()
    direct = served_index.search(text="a red circle", k=5)
    assert [x["id"] for x in body["hits"]] == [x.id for x in direct.hits]
    np.testing.assert_allclose([x["score"] for x in body["hits"]], [x.score for x in direct.hits], atol=1e-6)
    # the scores say what they are: plain ranking, cosine similarity, given as both
    assert body["ranking"] == "plain" and body["score_kind"] == "cosine similarity"
    assert all(x["cosine"] == x["score"] for x in body["hits"])
    assert body["seconds"] > 0 and len(body["hits"][0]["captions"]) == 5
    thumb = client.get(body["hits"][0]["thumb_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert max(im.size) <= 256
    full = client.get(body["hits"][0]["image_url"])
    path = served_index.image(body["hits"][0]["image_id"]).path
    assert full.status_code == 200 and full.content == Path(path).read_bytes()


def test_no_answer_names_a_path_on_the_server(client, served_index, shared_index_dir):
    """Hits and items name an image by id and name; where the files lie stays on the server."""
    folder = str(Path(served_index.image(served_index.store.row_ids["images"][0]).path).parent)
    answers = [client.get("/search", params={"q": "a red circle", "k": 50}),
               client.get("/search", params={"q": "a red circle", "target": "captions"}),
               client.get("/search", params={"like": 0}),
               client.get(f"/items/{int(served_index.store.row_ids['images'][0])}"),
               client.get("/health"), client.get("/config")]
    for r in answers:
        assert r.status_code == 200
        assert folder not in r.text and str(shared_index_dir) not in r.text and "path" not in r.json()
    hit = answers[0].json()["hits"][0]
    assert set(hit) >= {"id", "name", "image_id", "split", "folder", "date", "image_url"}


def test_filters_and_cut_off_through_the_api(client, served_index):
    from crossalign.index.search import Filters

    r = client.get("/search", params={"q": "a red circle", "k": 50, "split": "val"}).json()
    direct = served_index.search(text="a red circle", k=50, filters=Filters(split="val"))
    assert [h["id"] for h in r["hits"]] == [h.id for h in direct.hits]
    assert r["hits"] and {h["split"] for h in r["hits"]} == {"val"} and r["query"]["split"] == "val"
    cut = r["hits"][1]["score"]
    kept = client.get("/search", params={"q": "a red circle", "k": 50, "split": "val",
                                         "min_score": cut}).json()["hits"]
    assert len(kept) >= 2 and all(h["score"] >= cut for h in kept)
    none = client.get("/search", params={"q": "a red circle", "since": "2999-01-01"}).json()
    assert none["hits"] == []
    for bad in ({"label": "shape"}, {"label": "nosuch=x"}, {"since": "yesterday"},
                {"min_score": 2}, {"label": ["a=b"] * 9}):
        r = client.get("/search", params={"q": "a red circle", **bad})
        assert 400 <= r.status_code < 500 and r.json()["detail"], bad


def test_captions_like_items_and_upload(client, served_index, shapes_dir):
    r = client.get("/search", params={"q": "a green triangle", "k": 4, "target": "captions"}).json()
    assert r["target"] == "captions" and all(h["kind"] == "caption" for h in r["hits"])
    first = r["hits"][0]["image_id"]
    like = client.get("/search", params={"like": first, "k": 3}).json()
    assert like["hits"][0]["id"] == first and like["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    item = client.get(f"/items/{first}").json()
    assert item["id"] == first and len(item["captions"]) == 5 and item["name"].endswith(".png")
    photo = (shapes_dir / "images" / "scene_00007.png").read_bytes()
    up = client.post("/search/image", params={"k": 3}, files={"file": ("p.png", photo, "image/png")})
    assert up.status_code == 200
    assert [h["id"] for h in up.json()["hits"]] == [h.id for h in served_index.search(image=photo, k=3).hits]


def test_config_gives_the_limits_and_k_never_exceeds_them(served_index, client):
    assert client.get("/config").json()["k"] == 24  # the page's k, under a limit of 50
    small = TestClient(create_app(served_index, ServiceLimits(max_k=5, max_query_chars=200)),
                       raise_server_exceptions=False, base_url=LOCAL)
    c = small.get("/config").json()
    assert c["k"] == 5 and c["max_k"] == 5 and c["default_k"] == 5 and c["max_query_chars"] == 200
    assert c["ranking"] == "plain" and c["score_kind"] == "cosine similarity"
    assert len(small.get("/search", params={"q": "a red circle"}).json()["hits"]) == 5  # no k: within
    assert small.get("/search", params={"q": "a red circle", "k": 6}).status_code == 422
    photo = _png()
    up = small.post("/search/image", files={"file": ("p.png", photo, "image/png")})
    assert up.status_code == 200 and len(up.json()["hits"]) == 5


@pytest.fixture()
def breakable(shared_index_dir, tmp_path):
    """A copy of the index served by an app of its own, to break under it."""
    root = tmp_path / "idx"
    shutil.copytree(shared_index_dir, root)
    ix = open_index(root, model=False)
    yield root, ix, TestClient(create_app(ix), raise_server_exceptions=False, base_url=LOCAL)
    ix.close()


def _unhealthy(c: TestClient) -> str:
    r = c.get("/health")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unavailable" and body["problems"]
    return body["detail"]


def test_health_looks_at_the_index(breakable, monkeypatch):
    root, ix, c = breakable
    r = c.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"] == ix.store.version
    vdir = root / ix.store.version
    vectors = vdir / "images.npy"
    saved = vectors.read_bytes()

    def replace(data: bytes) -> None:  # a new file, as a copy or a rebuild by hand would leave
        (vdir / "new.npy").write_bytes(data)
        (vdir / "new.npy").replace(vectors)

    short = io.BytesIO()
    np.save(short, np.load(vectors)[:-1])
    replace(short.getvalue())  # one vector short of the metadata
    detail = _unhealthy(c)
    assert "images counts disagree" in detail and "metadata 60" in detail and "images.npy 59" in detail
    replace(saved[:200])  # cut short: the header promises more than the file holds
    assert "images cannot be read" in _unhealthy(c)
    vectors.unlink()
    assert "images.npy missing" in _unhealthy(c)
    replace(saved)
    assert c.get("/health").status_code == 200
    current = root / "CURRENT"
    current.write_text("v-gone\n")  # names a version that is not the one served
    assert "CURRENT names v-gone" in _unhealthy(c)
    current.unlink()
    assert "CURRENT: not readable" in _unhealthy(c)
    current.write_text(ix.store.version + "\n")
    assert c.get("/health").status_code == 200

    def broken(*a, **k):
        raise RuntimeError("faiss said no")

    monkeypatch.setattr(ix.store.faiss["captions"], "search", broken)
    assert "a search of the captions fails: RuntimeError: faiss said no" in _unhealthy(c)


BAD_GETS = [
    ("/search", 422), ("/search?q=", 422), ("/search?q=%20%20", 422), ("/search?q=" + "a" * 201, 422),
    ("/search?q=a&k=0", 422), ("/search?q=a&k=51", 422), ("/search?q=a&k=two", 422),
    ("/search?q=a&target=videos", 422), ("/search?like=99999", 404), ("/search?like=-3", 422),
    ("/items/99999", 404), ("/items/abc", 422), ("/items/-1", 422), ("/items/" + "9" * 30, 422),
    ("/images/99999", 404), ("/images/1?size=4", 422), ("/images/1?size=100000", 422),
    ("/images/..%2F..%2F..%2Fetc%2Fpasswd", 404), ("/images/%2Fetc%2Fpasswd", 404),
    ("/images/%252e%252e%252fetc%252fpasswd", 404), ("/images/1/../../etc/passwd", 404),
    ("/static/..%2Fapp.py", 404), ("/static/%2e%2e/%2e%2e/app.py", 404), ("/static/%2Fetc%2Fpasswd", 404),
    ("/static/../../app.py", 404), ("/nosuchpage", 404),
    ("/explain?id=1", 422), ("/explain?q=a", 422), ("/explain?id=1&q=%20", 422),
    ("/explain?id=1&q=" + "a" * 201, 422), ("/explain?id=99999&q=a", 404), ("/explain?id=-1&q=a", 422),
    ("/explain?id=1&q=a&method=magic", 422), ("/explain?id=abc&q=a", 422),
]


@pytest.mark.parametrize("url,status", BAD_GETS)
def test_bad_requests_get_a_4xx_with_a_message(client, url, status):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert "root:" not in r.text and "import" not in r.text


def test_explain_a_hit(client, served_index):
    hit = client.get("/search", params={"q": "a red circle", "k": 3}).json()["hits"][0]
    r = client.get("/explain", params={"id": hit["image_id"], "q": "a red circle"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["id"] == hit["image_id"] and d["method"] == "layercam"
    assert d["similarity"] == pytest.approx(hit["score"], abs=2e-3)  # torch here, maybe ONNX there
    assert [w["word"] for w in d["words"]] == ["a", "red", "circle"]
    assert d["overlay"].startswith("data:image/jpeg;base64,")
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(d["overlay"].split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and max(im.size) <= 384
    assert "path" not in d and str(served_index.image(hit["image_id"]).path) not in r.text
    again = client.get("/explain", params={"id": hit["image_id"], "q": "a red circle", "method": "gradcam"})
    assert again.status_code == 200 and again.json()["method"] == "gradcam"


def test_bad_uploads(client):
    def post(**kw):
        return client.post("/search/image", **kw)

    r = post(files={"file": ("x.png", b"this is not an image", "image/png")})
    assert r.status_code == 415 and "upload" in r.json()["detail"]
    assert post(files={"file": ("x.png", b"", "image/png")}).status_code == 415
    assert post(files={"file": ("x.png", _png()[:60], "image/png")}).status_code == 415  # truncated
    assert post(data={"nofile": "1"}).status_code == 422
    assert post(files={"file": ("x.png", _png(), "image/png")}, params={"k": 0}).status_code == 422
    big = b"\0" * (LIMIT + 1)
    r = post(files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    # a body without Content-Length is counted as it arrives
    r = post(content=(big[i:i + 4096] for i in range(0, len(big), 4096)),
             headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


def test_upload_limit_refuses_before_reading_the_body(app):
    import asyncio

    from crossalign.serve.guard import UploadLimit

    read = []

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    async def never(scope, receive, send):
        raise AssertionError("the app must not see an oversized body")

    limit = UploadLimit(never, "/search/image", LIMIT)
    scope = {"type": "http", "path": "/search/image", "headers": [(b"content-length", b"99999999")]}
    asyncio.run(limit(scope, receive, send))
    assert read == [] and sent[0]["status"] == 413  # declared too long: nothing read
    asyncio.run(limit({**scope, "headers": []}, receive, send))
    assert len(read) == LIMIT // 65536 + 1  # chunked: stops at the first chunk past the limit


def test_a_bug_is_a_logged_500(served_index, caplog, monkeypatch):
    c = TestClient(create_app(served_index), raise_server_exceptions=False, base_url=LOCAL)

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(served_index, "search", broken)
    with caplog.at_level(logging.ERROR, logger="crossalign.serve"):
        r = c.get("/search", params={"q": "x"})
    assert r.status_code == 500 and "boom" not in r.text
    assert any(rec.exc_info and "boom" in str(rec.exc_info[1]) for rec in caplog.records)


def test_file_gone_after_indexing(client, served_index):
    rec = served_index.image(59)
    gone = Path(rec.path)
    saved = gone.read_bytes()
    gone.unlink()
    try:
        r = client.get("/images/59")
        assert r.status_code == 404 and "no longer there" in r.json()["detail"]
    finally:
        gone.write_bytes(saved)


def test_binds_loopback_by_default():
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["serve", "INDEX"])
    assert args.host == "127.0.0.1" and args.port == 8000


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/health", "/config", "/search", "/search/image", "/items/{item_id}", "/images/{item_id}"):
        assert path in spec["paths"], path
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzing_from_the_openapi_finds_no_server_error(served_index, mode):
    """Requests generated from the service's own spec (valid ones, then invalid ones), bounded."""
    from crossalign.serve.guard import Access

    app = create_app(served_index, ServiceLimits(max_k=50, max_query_chars=200, max_upload_bytes=LIMIT),
                     Access(hosts=("testserver",)))  # the host name schemathesis sends
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode == "negative" and operation.path in ("/health", "/config", "/metrics"):
            continue  # no parameters: nothing to make invalid

        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(GenerationMode(mode)))
        def fuzz(case):
            response = case.call_and_validate(checks=[not_a_server_error])
            statuses.setdefault(operation.label, []).append(response.status_code)

        fuzz()
    assert len(statuses) == (8 if mode == "positive" else 5)  # every operation of the spec was tried
    statuses = [s for codes in statuses.values() for s in codes]
    assert statuses and max(statuses) < 500
    if mode == "negative":
        assert any(400 <= s < 500 for s in statuses)


# ---- the page in a real browser -------------------------------------------------------------

@pytest.fixture()
def live_url(app):
    with serving(app) as url:
        yield url


def _wait_for_results(page, status_text: str) -> None:
    page.wait_for_function("t => document.getElementById('status').textContent.includes(t)",
                           arg=status_text, timeout=30_000)
    page.wait_for_function("() => Array.from(document.querySelectorAll('.card img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)


@pytest.mark.needs("chromium")
def test_page_in_a_real_browser(live_url, shapes_dir, tmp_path):
    errors, foreign = [], []
    with browser_page(errors) as page:
        page.on("request", lambda r: None if r.url.startswith((live_url, "data:")) else foreign.append(r.url))
        page.goto(live_url + "/", wait_until="load")
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        _wait_for_results(page, "for “a red circle” in")
        assert page.locator(".card").count() == 24
        assert page.locator(".card .score").first.inner_text().startswith("cos 0.")
        assert page.locator(".card .score").first.get_attribute("title") == \
            "cosine similarity (ranking: plain)"
        page.screenshot(path=str(tmp_path / "text.png"))
        page.set_input_files("#file", str(shapes_dir / "images" / "scene_00003.png"))
        _wait_for_results(page, "for scene_00003.png in")
        first = page.locator(".card").first.get_attribute("data-id")
        page.locator(".card button.like").nth(1).click()
        _wait_for_results(page, "images like #")
        page.check('input[value="captions"]')
        page.fill("#query", "a blue square")
        page.press("#query", "Enter")
        _wait_for_results(page, "captions for “a blue square”")
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
    assert first is not None
    assert errors == [] and foreign == []
    with Image.open(tmp_path / "shot.png") as im:
        assert im.width == 1200 and im.height >= 900


@pytest.mark.needs("chromium")
def test_page_asks_for_no_more_than_the_service_allows(served_index, shapes_dir):
    """Under a limit of 5 results the page asks for 5, by text, by image and for more like this."""
    app = create_app(served_index, ServiceLimits(max_k=5, max_query_chars=40))
    errors, asked = [], []
    with serving(app) as url, browser_page(errors) as page:
        page.on("request", lambda r: asked.append(r.url) if "/search" in r.url else None)
        page.goto(url + "/", wait_until="load")
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        _wait_for_results(page, "for “a red circle” in")
        assert page.locator(".card").count() == 5
        assert page.locator("#query").get_attribute("maxlength") == "40"
        page.set_input_files("#file", str(shapes_dir / "images" / "scene_00003.png"))
        _wait_for_results(page, "for scene_00003.png in")
        assert page.locator(".card").count() == 5
        page.locator(".card button.like").first.click()
        _wait_for_results(page, "images like #")
        assert page.locator(".card").count() == 5
    assert errors == [] and len(asked) == 3
    assert all(parse_qs(urlsplit(u).query)["k"] == ["5"] for u in asked), asked


@pytest.mark.needs("chromium")
def test_page_state_lives_in_its_address(live_url, served_index):
    """/?q=... opens that search with its filters; a new search goes into the address; back
    returns to the one before."""
    from crossalign.index.search import Filters

    n_val = len(served_index.search(text="a red circle", k=50, filters=Filters(split="val")).hits)
    errors, asked = [], []
    with browser_page(errors) as page:
        page.on("request", lambda r: asked.append(r.url) if "/search" in r.url else None)
        page.goto(live_url + "/?q=a+red+circle&split=val", wait_until="load")
        _wait_for_results(page, "for “a red circle” in")
        assert page.locator("#query").input_value() == "a red circle"
        assert page.locator("#f-split").input_value() == "val"
        assert page.locator(".card").count() == min(n_val, 24)
        assert parse_qs(urlsplit(asked[-1]).query)["split"] == ["val"]
        page.fill("#query", "a blue square")
        page.fill("#f-split", "")
        page.fill("#f-min-score", "1")
        page.press("#query", "Enter")
        _wait_for_results(page, "for “a blue square” in")
        assert parse_qs(urlsplit(page.url).query) == {"q": ["a blue square"], "target": ["images"],
                                                      "min_score": ["1"]}
        assert page.locator(".card").count() == 0
        assert "nothing passes" in page.locator("#status").inner_text()
        page.go_back()
        _wait_for_results(page, "for “a red circle” in")
        assert page.locator("#query").input_value() == "a red circle"
        assert page.locator("#f-min-score").input_value() == ""
        assert page.locator(".card").count() == min(n_val, 24)
        page.locator(".card button.like").first.click()
        _wait_for_results(page, "images like #")
        assert "like=" in page.url and "split=val" in page.url
    assert errors == []


@pytest.mark.needs("chromium")
def test_page_shows_why_a_hit_matched(live_url, tmp_path):
    """'why?' on a result puts the heat map over its picture and shades the query's words;
    again, and the thumbnail comes back. Searches by image have no 'why?'."""
    errors = []
    with browser_page(errors) as page:
        page.goto(live_url + "/?q=two+red+circles", wait_until="load")
        _wait_for_results(page, "for “two red circles” in")
        card = page.locator(".card").first
        card.locator("button.why").click()
        card.locator(".why-panel").wait_for(timeout=60_000)
        assert card.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
        words = card.locator(".why-panel .words span")
        assert [words.nth(i).inner_text() for i in range(words.count())] == ["two", "red", "circles"]
        assert "similarity" in card.locator(".why-panel").inner_text()
        page.wait_for_function("() => Array.from(document.querySelectorAll('.card img'))"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
        page.screenshot(path=str(tmp_path / "why.png"))
        card.locator("button.why").click()
        assert card.locator(".why-panel").count() == 0
        assert card.locator("img").get_attribute("src").startswith("/images/")
        page.check('input[value="captions"]')
        _wait_for_results(page, "captions for “two red circles”")
        assert page.locator("button.why").count() == 0
    assert errors == []
