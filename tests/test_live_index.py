"""A live index: rebuilt while it is searched, in threads and over HTTP; versions held by a
call or by another process stay until let go; a version of another model or one that cannot
be opened is not served; the filter cache; flat indexes memory-mapped."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from crossalign.cli.main import main
from crossalign.index.search import Filters, open_index
from crossalign.index.build import build_index
from crossalign.index import _rows
from crossalign.index import search as search_mod
from crossalign.index import store as store_mod
from crossalign.index._vectors import Embedder
from crossalign.index.store import MATCH_CACHE_BYTES, ImageRecord, IndexStore, write_version
from crossalign.serve import create_app

TEXT = "a red circle"
TRAIN = Filters(split="train")


@pytest.fixture(scope="module")
def emb(tmp_path_factory, shapes_dir) -> Embedder:
    """The model of a run trained for one epoch on the shapes data, opened once."""
    out = tmp_path_factory.mktemp("live-run") / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(out),
                 "--set", "train.epochs=1", "--set", "train.batch_size=64"]) == 0
    return Embedder(out)


@pytest.fixture(scope="module")
def extra(tmp_path_factory, shapes_dir) -> Path:
    """A folder to add: eight copies of indexed pictures and four new ones."""
    folder = tmp_path_factory.mktemp("extra")
    for src in sorted((shapes_dir / "images").iterdir())[:8]:
        shutil.copy(src, folder / f"copy-{src.name}")
    for k in range(4):
        Image.new("RGB", (64, 64), (40 * k, 200 - 40 * k, 90)).save(folder / f"new-{k}.png")
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory, emb, shapes_dir) -> dict[str, Path]:
    """An index of the shapes data of each kind that needs no more than 60 images."""
    root = tmp_path_factory.mktemp("live-bases")
    for kind in ("flat", "hnsw"):
        build_index(emb, root / kind, data=shapes_dir, index_type=kind, progress=False)
    return {kind: root / kind for kind in ("flat", "hnsw")}


def _copy(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base, tmp_path / "idx")
    return tmp_path / "idx"


def _folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def _snapshot(store: IndexStore) -> dict:
    """What a version holds, to check answers against after it is gone: id -> (vector, split)."""
    vecs = np.asarray(store.vectors["images"], np.float32)
    splits = {im.id: im.split for im in store.all_images()}
    return {int(i): (vecs[r], splits[int(i)]) for r, i in enumerate(store.row_ids["images"])}


def _search_during(ix, rebuild, asks: list, threads: int = 2, after: int = 5) -> tuple[list, list]:
    """Run ``rebuild`` while ``threads`` threads search without pause (each cycling through
    ``asks``: callables of the index returning ``(SearchResult, query vector, filters)``), and
    go on until each thread has had ``after`` answers since the rebuild ended. Returns the
    answers and the exceptions raised, in searches or in the rebuild."""
    answers, errors, done = [], [], threading.Event()

    def searching() -> None:
        since, k = 0, 0
        while since < after:
            finished = done.is_set()
            try:
                answers.append(asks[k % len(asks)](ix))
            except Exception as e:  # noqa: BLE001 - every exception is what the test counts
                errors.append(e)
            k += 1
            since += finished
            if k > 100_000:  # a guard against a hang: never reached in a passing run
                break

    workers = [threading.Thread(target=searching) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.05)  # the searches are under way before the build starts
    try:
        rebuild()
    except Exception as e:  # noqa: BLE001
        errors.append(e)
    finally:
        done.set()
        for w in workers:
            w.join(timeout=120)
    return answers, errors


def _check(answers: list, versions: dict[str, dict], exact: bool) -> dict[str, int]:
    """Every answer comes from one version: its hits are items of that version, scored by
    that version's vectors, passing the filter, and (exact search) they are its true top k.
    Returns how many answers each version gave."""
    counts: dict[str, int] = {}
    for result, q, filters in answers:
        items = versions[result.version]
        counts[result.version] = counts.get(result.version, 0) + 1
        assert result.hits, result
        for h in result.hits:
            vec, split = items[h.id]
            assert h.score == pytest.approx(float(vec @ q), abs=2e-3)
            assert not filters or split == filters.split
        if exact or filters:  # a filter that keeps few vectors is searched exactly
            passing = [float(v @ q) for v, s in items.values() if not filters or s == filters.split]
            scores = sorted(passing, reverse=True)[:len(result.hits)]
            np.testing.assert_allclose([h.score for h in result.hits], scores, atol=2e-3)
    return counts


def _asks(ix, like: int, text_q: np.ndarray, own_q: np.ndarray) -> list:
    """Searches by indexed item (more like this), by vector and by text, with and without a
    split filter: each returns (result, the query vector, the filters)."""
    def by_item(filters):
        return lambda ix: (ix.search(like=like, k=5, filters=filters), own_q, filters)

    def by_vector(filters):
        return lambda ix: (ix.search_vector(own_q, k=5, filters=filters), own_q, filters)

    def by_text(ix):
        return ix.search(text=TEXT, k=5), text_q, None

    return [by_item(None), by_item(TRAIN), by_vector(None), by_vector(TRAIN), by_text]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_rebuild_under_searching_threads(bases, emb, extra, tmp_path, kind):
    root = _copy(bases[kind], tmp_path)
    ix = open_index(root)
    old = ix.version
    store = ix.store
    versions = {old: _snapshot(store)}
    records = store.all_images()
    like = next(im.id for im in records if im.split == "train")
    first_copy = sorted(p.name for p in extra.iterdir())[0].removeprefix("copy-")
    copied = next(im.id for im in records if im.name == first_copy)
    own_q = np.array(store.vector("images", like), np.float32)
    text_q = ix.embedder.text([TEXT])[0]
    built = []
    answers, errors = _search_during(
        ix, lambda: built.append(build_index(emb, root, add=[extra], progress=False)),
        _asks(ix, like, text_q, own_q))
    assert errors == []
    new = built[0].version
    fresh = IndexStore(root)
    versions[new] = _snapshot(fresh)
    fresh.close()
    counts = _check(answers, versions, exact=kind == "flat")
    assert set(counts) == {old, new} and counts[new] >= 5
    assert ix.version == new and len(ix) == 72 and ix.info["n_images"] == 72
    assert ix.problems() == []
    assert _folders(root) == [new]  # the old version went with its last call
    # a copy of an indexed picture is found beside its original in the new version
    twins = ix.search(like=copied, k=2).hits
    assert {h.id for h in twins} >= {copied} and any(h.name.startswith("copy-") for h in twins)
    assert all(h.score == pytest.approx(1.0, abs=1e-4) for h in twins)
    ix.close()


def _train_once(monkeypatch) -> None:
    """Every IVF-PQ index built from here on starts from one trained on the first build's
    vectors, without polysemous training (what takes a build of a test's size long)."""
    import faiss

    real, trained = store_mod._build_faiss, []

    def build(vectors, kind, seed=0):
        if kind != "ivfpq":
            return real(vectors, kind, seed)
        vectors = np.ascontiguousarray(vectors, np.float32)
        if not trained:
            n, dim = vectors.shape
            index = faiss.index_factory(dim, store_mod.factory_string(kind, n, dim),
                                        faiss.METRIC_INNER_PRODUCT)
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
            index.train(vectors)
            trained.append(index)
        index = faiss.clone_index(trained[0])
        index.add(vectors)
        return index

    monkeypatch.setattr(store_mod, "_build_faiss", build)


def test_a_rebuild_of_an_ivfpq_index_under_searching_threads(tmp_path, monkeypatch):
    # every request of more than a few rows maps images.npy by its path: the path of a
    # removed version fails there
    monkeypatch.setattr(_rows, "MAP_ABOVE", 16)
    _train_once(monkeypatch)
    rng = np.random.default_rng(0)
    dim, n, more = 16, 1200, 100
    vecs = rng.standard_normal((n + more, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    images = [ImageRecord(i, f"/x/{i}.png", f"{i}.png", f"h{i}", split=("train", "val")[i % 2])
              for i in range(n + more)]
    info = {"dim": dim, "run": "", "weights_hash": ""}
    root = tmp_path / "idx"
    write_version(root, info, [], images[:n], vecs[:n], np.zeros((0, dim), np.float32), "ivfpq",
                  recall=0.5)
    ix = open_index(root, model=False)
    old = ix.version
    assert ix.info["factory"]["images"].startswith("IVF")
    versions = {old: _snapshot(ix.store)}
    own_q = vecs[2]
    asks = [lambda ix: (ix.search(like=2, k=5, filters=TRAIN), own_q, TRAIN),
            lambda ix: (ix.search_vector(own_q, k=5), own_q, None),
            lambda ix: (ix.search_vector(own_q, k=5, filters=TRAIN), own_q, TRAIN)]
    built = []

    def rebuild():
        built.append(write_version(root, info, [], images, vecs, np.zeros((0, dim), np.float32),
                                   "ivfpq", recall=0.5))

    answers, errors = _search_during(ix, rebuild, asks)
    assert errors == []
    (new,) = built
    fresh = IndexStore(root)
    versions[new] = _snapshot(fresh)
    fresh.close()
    counts = _check(answers, versions, exact=False)
    assert set(counts) == {old, new} and counts[new] >= 5
    assert ix.version == new and len(ix) == n + more and ix.problems() == []
    assert _folders(root) == [new]
    ix.close()


def test_a_pinned_version_stays_until_its_call_ends(bases, emb, extra, tmp_path):
    root = _copy(bases["flat"], tmp_path)
    ix = open_index(root, model=False)
    q = np.array(ix.store.vector("images", 3), np.float32)
    with ix.pinned() as served:
        old = served.version
        new = build_index(emb, root, add=[extra], progress=False).version
        assert _folders(root) == sorted([old, new])  # held by this call
        assert ix.search_vector(q, k=3).version == new  # the next call is served the new one
        assert ix.version == new and len(ix) == 72
        # the pinned version still answers from its own files
        assert len(served.store) == 60 and served.store.images([3])[3].id == 3
        assert (root / old / "images.npy").is_file()
    assert _folders(root) == [new]  # let go: removed
    ix.close()


HOLDER = """
import sys
from crossalign.index.store import IndexStore
store = IndexStore(sys.argv[1])
print(store.version, flush=True)
sys.stdin.read()
store.close()
"""


def test_another_process_holding_a_version_keeps_it_from_a_build(bases, emb, extra, tmp_path):
    root = _copy(bases["flat"], tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        old = holder.stdout.readline().strip()
        assert old == (root / "CURRENT").read_text().strip()
        new = build_index(emb, root, add=[extra], progress=False).version
        assert new != old and (root / old / "meta.sqlite").is_file()  # the build left it
        _, err = holder.communicate("", timeout=60)  # let go: the holder removes it
        assert holder.returncode == 0, err
    finally:
        if holder.poll() is None:
            holder.kill()
    assert _folders(root) == [new]


def _rewrite_with_weights(root: Path, weights_hash: str) -> str:
    """A new version of the same items as if built by another model."""
    store = IndexStore(root)
    info = {"dim": store.info["dim"], "run": store.info["run"], "weights_hash": weights_hash}
    try:
        vectors = [np.asarray(store.vectors[t]) for t in ("images", "captions")]
        return write_version(root, info, store.sources, store.all_images(), *vectors, "flat")
    finally:
        store.close()


def test_a_version_built_with_another_model_is_not_served(bases, tmp_path):
    root = _copy(bases["flat"], tmp_path)
    ix = open_index(root)
    old = ix.version
    new = _rewrite_with_weights(root, "f" * 64)
    assert ix.search(text=TEXT, k=3).version == old
    assert ix.version == old and len(ix) == 60
    (line,) = ix.problems()
    assert "another model" in line and new in line and old in line and "ffffffffffff" in line
    assert str(tmp_path) not in line and "\n" not in line
    assert _folders(root) == sorted([old, new])  # the one served is held; the new one is CURRENT
    # a version of the right model afterwards is served
    newer = _rewrite_with_weights(root, ix.embedder.weights_hash)
    assert ix.search(text=TEXT, k=3).version == newer and ix.problems() == []
    assert _folders(root) == [newer]
    ix.close()


def test_a_version_that_cannot_be_opened_is_tried_again_later(bases, tmp_path, monkeypatch):
    root = _copy(bases["flat"], tmp_path)
    ix = open_index(root, model=False)
    old = ix.version
    q = np.array(ix.store.vector("images", 0), np.float32)
    opened, real = [], search_mod.IndexStore
    monkeypatch.setattr(search_mod, "IndexStore", lambda r: opened.append(r) or real(r))
    monkeypatch.setattr(search_mod, "RETRY_S", 0.3)
    (root / "CURRENT").write_text("v-nosuch\n")
    t0 = time.monotonic()
    for _ in range(20):
        assert ix.search_vector(q, k=3).version == old
    (line,) = ix.problems()
    assert len(opened) == 1 or time.monotonic() - t0 > 0.3  # not tried again on every call
    assert "CURRENT names v-nosuch" in line and "cannot be opened" in line and old in line
    assert str(tmp_path) not in line
    time.sleep(0.35)
    ix.search_vector(q, k=3)
    assert len(opened) >= 2  # a second later, it is tried again
    (root / "CURRENT").write_text(old + "\n")
    assert ix.search_vector(q, k=3).version == old and ix.problems() == []
    ix.close()


def test_problems_name_files_inside_the_index_only(bases, tmp_path):
    root = _copy(bases["flat"], tmp_path)
    ix = open_index(root, model=False)
    version = ix.version
    vectors = root / version / "images.npy"
    saved = vectors.read_bytes()
    vectors.write_bytes(saved[:200])  # cut short
    (cut,) = ix.problems()
    vectors.unlink()
    (gone,) = ix.problems()
    assert gone == f"{version}/images.npy missing"
    vectors.write_bytes(saved)
    (root / "CURRENT").unlink()
    (unreadable,) = ix.problems()
    assert unreadable == "CURRENT: not readable (No such file or directory)"
    for line in (cut, gone, unreadable):
        assert str(tmp_path) not in line and "/idx/" not in line, line
    assert cut.startswith(f"{version}: the images cannot be read")
    (root / "CURRENT").write_text(version + "\n")
    assert ix.problems() == [] and ix.version == version
    ix.close()


def test_the_service_follows_a_rebuild(bases, emb, extra, tmp_path):
    root = _copy(bases["flat"], tmp_path)
    ix = open_index(root, model=False)
    client = TestClient(create_app(ix), base_url="http://127.0.0.1", raise_server_exceptions=False)
    like = next(im.id for im in ix.store.all_images() if im.split == "train")
    built, failed, done = [], [], threading.Event()

    def rebuild() -> None:
        try:
            built.append(build_index(emb, root, add=[extra], progress=False))
        except Exception as e:  # noqa: BLE001
            failed.append(e)
        finally:
            done.set()

    builder = threading.Thread(target=rebuild)
    builder.start()
    statuses, during, after = [], 0, 0
    while after < 5:
        finished = done.is_set()
        for url in (f"/search?like={like}", f"/search?like={like}&split=train"):
            statuses.append(client.get(url).status_code)
        during, after = during + (not finished), after + finished
    builder.join()
    assert failed == []
    assert during > 0 and [s for s in statuses if not 200 <= s < 300] == []
    health = client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["images"] == 72 and health.json()["version"] == built[0].version
    assert _folders(root) == [built[0].version]
    ix.close()


def _filtered_store(root: Path) -> IndexStore:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    images = [ImageRecord(i, f"/x/{i}.png", f"{i}.png", f"h{i}",
                          split=("train", "val", "test")[i % 3], folder=("a/b", "a", "")[i % 3],
                          labels={"genre": ("drama", "comedy")[i % 2], "year": 1990 + i % 4})
              for i in range(300)]
    write_version(root, {"dim": 8, "run": "", "weights_hash": ""}, [], images, vecs,
                  np.zeros((0, 8), np.float32), "flat")
    return IndexStore(root)


def test_the_filter_cache_shares_equal_filters_and_is_bounded_by_bytes(tmp_path):
    messy = Filters(split="val, train,val", folder="/a/b/",
                    labels=(("year", "1991"), ("genre", "drama"), ("year", "1991")))
    assert messy.normalised() == Filters(split="train,val", folder="a/b",
                                         labels=(("genre", "drama"), ("year", "1991")))
    # filters that select other rows stay apart
    assert Filters(folder="/").normalised() != Filters().normalised()
    assert Filters(split=",").normalised() != Filters().normalised()
    store = _filtered_store(tmp_path / "idx")
    assert store.match_cache_bytes == MATCH_CACHE_BYTES == 64 * 1024 ** 2
    match = store.rows_matching
    both = match("images", Filters(split="val,train"))
    assert match("images", Filters(split="train, val,train")) is both and len(both) == 200
    labelled = match("images", Filters.of(labels=["genre=drama", "year=1990"]))
    assert match("images", Filters.of(labels=["year=1990", "genre=drama"])) is labelled
    assert match("images", Filters(folder="/a/b/")) is match("images", Filters(folder="a/b"))
    assert len(store._matching) == 3
    # bounded by bytes, the least recently used going first
    store = _filtered_store(tmp_path / "idx2")
    store.match_cache_bytes = 2500  # three lists of 100 rows (800 bytes each) fit, not four
    match = store.rows_matching
    train = match("images", Filters(split="train"))
    match("images", Filters(split="val"))
    match("images", Filters(split="test"))
    assert match("images", Filters(split="train")) is train  # used again: the latest now
    match("images", Filters(folder="a/b"))

    def kept() -> list[str]:
        return [f.split or f.folder for _, f in store._matching]

    assert kept() == ["test", "train", "a/b"]  # val, the least recently used, went
    assert sum(r.nbytes for r in store._matching.values()) == 2400
    assert len(match("images", Filters(split="train,val"))) == 200  # 1600 bytes: two go
    assert kept() == ["a/b", "train,val"]
    store.match_cache_bytes = 100
    match("images", Filters(split="val"))  # larger than the whole bound: not kept
    assert kept() == ["a/b", "train,val"]
    store.close()


@pytest.mark.needs("procfs")
def test_a_flat_index_is_memory_mapped(tmp_path):
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps on this system")
    store = _filtered_store(tmp_path / "idx")
    mapped = maps.read_text()
    assert str(store.root.resolve() / store.version / "images.faiss") in mapped
    q = np.asarray(store.vectors["images"][5], np.float32)
    scores, rows = store.faiss["images"].search(q[None, :], 3)
    assert rows[0][0] == 5 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    store.close()
