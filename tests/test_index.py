"""The index: build, exact search against brute force, incremental updates, refusals, types."""

from __future__ import annotations

import csv
import json
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossalign.cli.main import main
from crossalign.errors import ConfigError, CrossalignError, RunError
from crossalign._io import sha256_file
from crossalign.index.build import build_index
from crossalign.index.search import open_index
from crossalign.index._vectors import Embedder
from crossalign.index.store import CaptionRecord, IndexStore, ImageRecord, resolve_index_type, write_version


@pytest.fixture(scope="module")
def run(tmp_path_factory, shapes_dir) -> Path:
    """A run trained for one epoch on the shapes data."""
    out = tmp_path_factory.mktemp("index-run") / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(out),
                 "--set", "train.epochs=1", "--set", "train.batch_size=64"]) == 0
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, run, shapes_dir) -> Path:
    """An index of every image and caption of the shapes data."""
    out = tmp_path_factory.mktemp("index") / "idx"
    summary = build_index(run, out, data=shapes_dir, progress=False)
    assert summary.images == 60 and summary.captions == 300
    return out


@pytest.fixture(scope="module")
def index(built):
    ix = open_index(built)
    yield ix
    ix.close()


def _captions(shapes_dir: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(shapes_dir / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["image"], []).append(row["caption"])
    return out


def test_build_stores_images_captions_and_metadata(built, index, run, shapes_dir):
    store = index.store
    assert len(store) == 60 and len(store.row_ids["captions"]) == 300
    assert store.info["factory"] == {"images": "Flat", "captions": "Flat"}
    assert store.info["run"] == str(run.resolve())
    records = store.all_images()
    captions = _captions(shapes_dir)
    for im in records:
        assert Path(im.path).is_file()
        assert im.content_hash == sha256_file(im.path)
        assert [c.text for c in im.captions] == captions[Path(im.path).name]
        assert im.split in ("train", "val", "test")
    # the stored vectors are the run's own embeddings, normalised
    vecs = np.asarray(store.vectors["images"])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    direct = index.embedder.picture(records[3].path)[0]  # the tower run afresh, in float32
    # the index embedded the cached features, kept as float16 (cosine within 1e-3)
    assert float(vecs[3] @ direct) > 1 - 1e-3
    np.testing.assert_allclose(vecs[3], direct, atol=2e-3)
    # the splits the run stored label each image
    test_names = set((run / "splits" / "test.txt").read_text().split())
    assert {Path(im.path).name for im in records if im.split == "test"} == test_names


def _brute(index, q: np.ndarray, target: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    vecs = np.asarray(index.store.vectors[target])
    scores = vecs @ q  # [n]
    rows = np.argsort(-scores, kind="stable")[:k]
    return index.store.row_ids[target][rows], scores[rows]


def test_exact_search_equals_brute_force(index, shapes_dir):
    q = index.embedder.text(["a red circle"])[0]
    res = index.search(text="a red circle", k=7)
    ids, scores = _brute(index, q, "images", 7)
    assert [h.id for h in res.hits] == ids.tolist()
    np.testing.assert_allclose([h.score for h in res.hits], scores, atol=1e-5)
    assert [h.rank for h in res.hits] == list(range(1, 8))
    # search ranks by plain cosine, and says so: the score is the cosine, both are given
    assert res.ranking == "plain" and res.score_kind == "cosine similarity"
    np.testing.assert_allclose([h.cosine for h in res.hits], scores, atol=1e-5)
    # image -> captions
    photo = shapes_dir / "images" / "scene_00004.png"
    qi = index.embedder.picture(photo)[0]
    res = index.search(image=str(photo), k=5, target="captions")
    ids, scores = _brute(index, qi, "captions", 5)
    assert [h.id for h in res.hits] == ids.tolist()
    np.testing.assert_allclose([h.score for h in res.hits], scores, atol=1e-5)
    assert all(h.kind == "caption" and len(h.captions) == 1 for h in res.hits)


def test_combined_query_is_the_weighted_sum(index, shapes_dir):
    photo = shapes_dir / "images" / "scene_00010.png"
    t = index.embedder.text(["a large square", "grass"])
    v = index.embedder.picture(photo)[0]
    q = 2.0 * t[0] + 0.5 * v - t[1]
    q /= np.linalg.norm(q)
    res = index.search(text="a large square", image=str(photo), weights=[2.0, 0.5], minus="grass", k=10)
    ids, scores = _brute(index, q, "images", 10)
    assert [h.id for h in res.hits] == ids.tolist()
    np.testing.assert_allclose([h.score for h in res.hits], scores, atol=1e-5)
    # bytes of an image file search the same as its path; an indexed item is a term too
    by_bytes = index.search(image=photo.read_bytes(), k=3)
    by_path = index.search(image=str(photo), k=3)
    assert [h.id for h in by_bytes.hits] == [h.id for h in by_path.hits]
    like = index.search(like=by_path.hits[0].id, k=1)
    assert like.hits[0].id == by_path.hits[0].id and like.hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_bad_queries_are_user_errors(index, tmp_path):
    for kwargs in ({}, {"text": "  "}, {"text": "a", "k": 0}, {"text": "a", "target": "nope"},
                   {"text": "a", "weights": [1, 2]}, {"like": 10**9}):
        with pytest.raises(CrossalignError):
            index.search(**kwargs)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(CrossalignError, match="bad.jpg"):
        index.search(image=str(bad))
    with pytest.raises(CrossalignError, match="upload"):
        index.search(image=b"\x89PNG broken")


def test_search_command(built, capsys):
    assert main(["-q", "search", str(built), "a blue square", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count(".png") >= 3 and "3 images in" in out
    assert out.splitlines()[0].startswith("  1  cos ")  # every score says what it is
    assert "(vector search, ranking plain: cos is cosine similarity)" in out
    assert main(["-q", "search", str(built), "a blue square", "--minus", "grass", "--target", "captions",
                 "-k", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "captions" and len(data["hits"]) == 4
    assert data["ranking"] == "plain" and data["score_kind"] == "cosine similarity"
    assert all(h["kind"] == "caption" and h["cosine"] == h["score"] for h in data["hits"])
    assert main(["-q", "search", str(built / "nope"), "x"]) == 2
    assert "not an index" in capsys.readouterr().err
    assert main(["-q", "search", str(built), "x", "--weights", "a,b"]) == 2
    assert "--weights" in capsys.readouterr().err


def test_refuses_another_runs_model(built, run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(run, other)
    weights = other / "model_best.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.startswith("image_head"))
    state[key] = state[key] + 0.01
    save_file(state, str(weights))
    meta = json.loads(weights.with_suffix(".json").read_text())  # a real retrain records its checksum
    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    weights.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="another model"):
        open_index(built, other)
    assert main(["-q", "search", str(built), "a dog", "--run", str(other)]) == 2
    assert "rebuild" in capsys.readouterr().err
    with pytest.raises(RunError, match="is not there"):
        open_index(built, tmp_path / "moved")


def _counting(run: Path) -> tuple[Embedder, dict[str, int]]:
    """An embedder without feature cache whose towers count the items they see."""
    emb = Embedder(run, cache=False)
    seen = {"image": 0, "text": 0}
    for side in seen:
        tower = getattr(emb.model, f"{side}_tower")
        tower.register_forward_hook(lambda m, i, o, side=side: seen.__setitem__(side, seen[side] + len(o)))
    return emb, seen


def test_incremental_embeds_only_new_and_changed_files(run, shapes_dir, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(shapes_dir / "images", folder / "a")
    emb, seen = _counting(run)
    out = tmp_path / "idx"
    first = build_index(emb, out, images=folder, progress=False)
    assert first.images == 60 and seen["image"] == 60 and first.captions == 0
    before = {im.path: (im.id, im.content_hash) for im in IndexStore(out).all_images()}
    old_vecs = {im.path: IndexStore(out).vector("images", im.id) for im in IndexStore(out).all_images()}
    # one file changed, one new (in a sub-folder), two gone, one hidden file ignored
    changed, gone = folder / "a" / "scene_00001.png", [folder / "a" / f"scene_0000{i}.png" for i in (2, 3)]
    Image.new("RGB", (64, 64), (200, 10, 10)).save(changed)
    (folder / "b").mkdir()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "b" / "new.png")
    Image.new("RGB", (64, 64), (10, 10, 200)).save(folder / "b" / ".hidden.png")
    for p in gone:
        p.unlink()
    seen["image"] = 0
    second = build_index(emb, out, progress=False)  # the recorded source, scanned again
    assert seen["image"] == 2 and second.embedded_images == 2
    assert second.images == 59 and second.removed_images == 2
    after = {im.path: (im.id, im.content_hash) for im in IndexStore(out).all_images()}
    assert set(after) == set(before) - {str(p.resolve()) for p in gone} | {str((folder / "b" / "new.png").resolve())}
    store = IndexStore(out)
    for path, (iid, h) in after.items():
        if path in before:
            assert iid == before[path][0]  # ids are stable
        if path in before and path != str(changed.resolve()):
            np.testing.assert_array_equal(store.vector("images", iid), old_vecs[path])
    assert after[str(changed.resolve())][1] != before[str(changed.resolve())][1]
    # nothing new: nothing embedded; --add puts another folder beside the first
    seen["image"] = 0
    assert build_index(emb, out, progress=False).embedded_images == 0 and seen["image"] == 0
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(folder / "b" / "new.png", extra / "same-content.png")
    Image.new("RGB", (64, 64), (90, 90, 0)).save(extra / "other.png")
    third = build_index(emb, out, add=[extra], progress=False)
    assert third.images == 61 and seen["image"] == 1  # a copy of an indexed file reuses its vector


def test_incremental_captions(run, shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    emb, seen = _counting(run)
    out = tmp_path / "idx"
    build_index(emb, out, data=data, split="test", progress=False)
    test_names = (run / "splits" / "test.txt").read_text().split()
    texts = {c for name, caps in _captions(shapes_dir).items() if name in test_names for c in caps}
    assert seen == {"image": 6, "text": len(texts)}  # each distinct caption once
    with open(data / "captions.txt", "a", encoding="utf-8") as f:
        name = test_names[0]
        f.write(f"{name},a brand new caption nobody wrote before\n")
    seen.update(image=0, text=0)
    summary = build_index(emb, out, progress=False)
    assert seen == {"image": 0, "text": 1} and summary.captions == 31


def test_killed_build_leaves_the_previous_index(built, tmp_path, monkeypatch, run):
    copy = tmp_path / "idx"
    shutil.copytree(built, copy)
    before = open_index(copy, model=False)
    expected = before.search_vector(before.store.vector("images", 5), k=5)
    before.close()
    from crossalign.index import store as store_mod

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "_write_db", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(run, copy, index_type="flat", progress=False)
    monkeypatch.undo()
    assert any(p.name.endswith(".tmp") for p in copy.iterdir())  # the half-written version
    after = open_index(copy, model=False)
    got = after.search_vector(after.store.vector("images", 5), k=5)
    assert [h.id for h in got.hits] == [h.id for h in expected.hits]
    after.close()
    build_index(run, copy, progress=False)
    assert [p.name for p in copy.iterdir() if p.is_dir()] == [(copy / "CURRENT").read_text().strip()]


def test_index_types_on_random_vectors(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    images = [ImageRecord(i, f"/x/{i}.png", f"{i}.png", "h") for i in range(len(vecs))]
    queries = vecs[:50] + 0.3 * rng.standard_normal((50, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    for kind, factory, floor in (("flat", "Flat", 1.0), ("hnsw", "HNSW32", 0.9), ("ivfpq", "IVF", 0.5)):
        root = tmp_path / kind
        write_version(root, {"dim": 32, "run": "", "weights_hash": ""}, [], images, vecs,
                      np.zeros((0, 32), np.float32), kind)
        ix = open_index(root, model=False)
        assert ix.info["factory"]["images"].startswith(factory)
        found = [[h.id for h in ix.search_vector(q, k=10).hits] for q in queries]
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
        assert recall >= floor, (kind, recall)
        ix.close()
    big = 64 * 1024 ** 3  # a machine where HNSW fits up to its size threshold
    assert [resolve_index_type("auto", n, 256, big) for n in (10, 99_999, 100_000, 999_999, 10**6)] == \
        ["flat", "flat", "hnsw", "hnsw", "ivfpq"]
    # by memory: on a 4 GiB machine 999,999 HNSW vectors (2.3 GB with their float32 copy) take
    # more than a quarter of it, and IVF-PQ is chosen; 200,000 (0.47 GB) still fit
    small = 4 * 1024 ** 3
    assert resolve_index_type("auto", 999_999, 256, small) == "ivfpq"
    assert resolve_index_type("auto", 200_000, 256, small) == "hnsw"
    assert resolve_index_type("auto", 200_000, 2048, small) == "ivfpq"  # wider vectors
    assert resolve_index_type("hnsw", 999_999, 256, small) == "hnsw"  # asked for: kept
    with pytest.raises(ConfigError):
        resolve_index_type("lsh", 10)
    with pytest.raises(ConfigError, match="at least"):
        write_version(tmp_path / "small", {"dim": 32}, [], images[:10], vecs[:10],
                      np.zeros((0, 32), np.float32), "ivfpq")


def test_index_command_errors(run, shapes_dir, tmp_path, capsys):
    assert main(["-q", "index", str(run), "--out", str(tmp_path / "i")]) == 2
    assert "--data DIR or --images FOLDER" in capsys.readouterr().err
    assert main(["-q", "index", str(run), "--out", str(tmp_path / "i"), "--data", str(shapes_dir),
                 "--images", str(shapes_dir)]) == 2
    assert main(["-q", "index", str(run), "--out", str(tmp_path / "i"), "--images", str(tmp_path / "no")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["-q", "index", str(run), "--out", str(tmp_path / "s"), "--data", str(shapes_dir),
                 "--split", "nosuch"]) == 2
    assert "'nosuch' split" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["-q", "index", str(run), "--out", str(busy), "--images", str(shapes_dir)]) == 2
    assert "is not an index" in capsys.readouterr().err and (busy / "notes.txt").exists()


def test_two_processes_build_the_same_index(run, shapes_dir, tmp_path, built):
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "crossalign", "-q", "index", str(run), "--nproc", "2",
                           "--data", str(shapes_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = IndexStore(built), IndexStore(out)
    assert [im.path for im in one.all_images()] == [im.path for im in two.all_images()]
    for target in ("images", "captions"):
        np.testing.assert_allclose(np.asarray(one.vectors[target]), np.asarray(two.vectors[target]), atol=1e-5)
    assert not list(out.glob(".parts-*"))


def test_a_link_leaving_the_folder_is_never_indexed(run, shapes_dir, tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in sorted(p.name for p in (shapes_dir / "images").iterdir())[:3]:
        shutil.copy(shapes_dir / "images" / name, folder / name)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(outside)
    (folder / "escape.png").symlink_to(outside)
    with caplog.at_level("WARNING", logger="crossalign.index"):
        summary = build_index(run, tmp_path / "idx", images=folder, progress=False)
    assert summary.images == 3
    assert any("escape.png" in r.getMessage() and "outside" in r.getMessage() for r in caplog.records)
    ix = open_index(tmp_path / "idx")
    try:
        paths = [im.path for im in ix.store.all_images()]
    finally:
        ix.close()
    assert str(outside) not in paths and len(paths) == 3


def _clustered(rng, n: int, dim: int = 32, clusters: int = 40, spread: float = 0.35) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_tuned_index_meets_its_recall_on_held_queries(tmp_path, kind):
    """The build tunes the search to its recall target on a sample; queries it never saw, from
    the same collection, get that recall too (within the sample's error)."""
    rng = np.random.default_rng(3)
    images = _clustered(rng, 20_000)
    captions = _clustered(np.random.default_rng(4), 2_000)  # the tuning's other-target queries
    records = [ImageRecord(i, f"/x/{i}.png", f"{i}.png", "h") for i in range(len(images))]
    for k, c in enumerate(captions):
        records[k].captions.append(CaptionRecord(k, k, f"caption {k}"))
    write_version(tmp_path / kind, {"dim": 32, "run": "", "weights_hash": ""}, [], records,
                  images, captions, kind, recall=0.95)
    ix = open_index(tmp_path / kind, model=False)
    tuned = ix.info["search"]["images"]
    assert tuned["met"] and tuned["recall"] >= 0.95 and tuned["target"] == 0.95
    assert tuned["queries"] == 600 and "rerank" in tuned["params"]
    # each kind of query reached the target apart: the other target's (the hard case) too
    assert set(tuned["groups"]) == {"other", "own"} and min(tuned["groups"].values()) >= 0.95
    for name, held in (("other", _clustered(np.random.default_rng(5), 400)), ("own", _clustered(rng, 400))):
        truth = np.argsort(-(held @ images.T), axis=1)[:, :10]
        found = [[h.id for h in ix.search_vector(q, k=10).hits] for q in held]
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        # the tuning's margin (a lower bound on its sample's mean) covers fresh queries' spread
        assert recall >= 0.945, (name, tuned, recall)
    assert ix.store.vectors["images"].dtype == (np.float16 if kind == "ivfpq" else np.float32)
    ix.close()


def test_an_unreachable_recall_keeps_the_widest_search(tmp_path, monkeypatch):
    from crossalign.index import recall as recall_mod

    monkeypatch.setattr(recall_mod, "EF_GRID", (16,))
    monkeypatch.setattr(recall_mod, "RERANK_GRID", {"hnsw": (1,), "ivf": (1,)})
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5000, 32)).astype(np.float32)  # uniform: a graph's worst case
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    records = [ImageRecord(i, f"/x/{i}.png", f"{i}.png", "h") for i in range(len(vecs))]
    write_version(tmp_path / "ix", {"dim": 32, "run": "", "weights_hash": ""}, [], records, vecs,
                  np.zeros((0, 32), np.float32), "hnsw", recall=1.0)
    ix = open_index(tmp_path / "ix", model=False)
    tuned = ix.info["search"]["images"]
    assert not tuned["met"] and tuned["params"] == {"efSearch": 16, "rerank": 1}
    assert ix.store.faiss["images"].hnsw.efSearch == 16 and ix.rerank["images"] == 1
    ix.close()
    with pytest.raises(ConfigError, match="recall"):
        write_version(tmp_path / "bad", {"dim": 32}, [], records, vecs,
                      np.zeros((0, 32), np.float32), "hnsw", recall=1.5)


def test_row_file_reads_rows_like_the_array(tmp_path, monkeypatch):
    """IVF-PQ's float16 vectors are read row by row, never mapped: every way a search, a
    tuning pass or a duplicate scan indexes them gives the array's rows."""
    from crossalign.index import _rows
    from crossalign.index._rows import RowFile

    monkeypatch.setattr(_rows, "MAP_ABOVE", 8)  # both paths: single reads and a temporary mapping
    arr = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float16)
    np.save(tmp_path / "v.npy", arr)
    rf = RowFile(tmp_path / "v.npy")
    assert rf.shape == (50, 6) and rf.dtype == np.float16 and len(rf) == 50 and rf.ndim == 2
    np.testing.assert_array_equal(rf[3], arr[3])
    np.testing.assert_array_equal(rf[-1], arr[-1])
    for key in (slice(2, 7), slice(0, 50), slice(40, 99), slice(0, 10, 3), np.array([4, 1, 4, 30]),
                np.arange(0, 50, 2), np.arange(50) % 3 == 0, np.array([], np.int64)):
        np.testing.assert_array_equal(rf[key], arr[key])
    np.testing.assert_array_equal(np.asarray(rf, np.float32), arr.astype(np.float32))
    with pytest.raises(IndexError):
        rf[50]
    with pytest.raises(IndexError):
        rf[np.array([1, 50])]
    rf.close()


def test_ivfpq_index_reads_its_vectors_row_by_row(tmp_path):
    from crossalign.index._rows import RowFile

    rng = np.random.default_rng(6)
    images = _clustered(rng, 3_000)
    records = [ImageRecord(i, f"/x/{i}.png", f"{i}.png", "h") for i in range(len(images))]
    write_version(tmp_path / "ix", {"dim": 32, "run": "", "weights_hash": ""}, [], records, images,
                  np.zeros((0, 32), np.float32), "ivfpq")
    ix = open_index(tmp_path / "ix", model=False)
    assert isinstance(ix.store.vectors["images"], RowFile) and not ix.store.problems()
    q = images[17]
    hits = ix.search_vector(q, k=5).hits
    assert hits[0].id == 17 and hits[0].score == pytest.approx(1.0, abs=2e-3)  # float16 rows
    np.testing.assert_allclose(ix.store.vector("images", 17), images[17], atol=1e-3)
    ix.close()
