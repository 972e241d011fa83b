"""Search narrowed by filters (split, folder, date, labels) and a score cut-off, against brute
force over the items that pass; folders and dates recorded by a build; the query cache."""

from __future__ import annotations

import sqlite3
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossalign.cli.main import main
from crossalign.errors import ConfigError
from crossalign.index.search import Filters, open_index
from crossalign.index.build import build_index
from crossalign.index import search as search_mod
from crossalign.index.store import ImageRecord, write_version

N, DIM = 3000, 32


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Records with a split, folder, date and labels over random unit vectors."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    images = [ImageRecord(i, f"/x/{i}.png", f"{i}.png", "h", split=("train", "val", "test")[i % 3],
                          labels={"genre": ("drama", "comedy|drama", "horror")[i % 5 % 3],
                                  "year": 1990 + i % 7},
                          folder=("2019", "2019/summer", "2020", "")[i % 4],
                          date=f"20{19 + i % 2}-0{1 + i % 9}-1{i % 10}T12:00:00" if i % 11 else "")
              for i in range(N)]
    root = tmp_path_factory.mktemp("filters")
    built = {}
    for kind in ("flat", "hnsw"):
        write_version(root / kind, {"dim": DIM, "run": "", "weights_hash": ""}, [], images, vecs,
                      np.zeros((0, DIM), np.float32), kind)
        built[kind] = root / kind
    return images, vecs, built


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory, shapes_dir):
    """A run trained one epoch on the shapes data, and an index of that data."""
    root = tmp_path_factory.mktemp("filters-run")
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(root / "run"),
                 "--set", "train.epochs=1", "--set", "train.batch_size=64"]) == 0
    build_index(root / "run", root / "idx", data=shapes_dir, progress=False)
    return root / "run", root / "idx"


def _passes(im: ImageRecord, f: Filters) -> bool:
    """The filter rule written out plainly, for one record."""
    if f.split and im.split not in f.split.split(","):
        return False
    if f.folder and not (im.folder == f.folder or im.folder.startswith(f.folder + "/")):
        return False
    if f.since and not (im.date and im.date >= f.since):
        return False
    if f.until and not (im.date and im.date[:10] <= f.until):
        return False
    return all(value in str(im.labels.get(col, "")).split("|") for col, value in f.labels)


FILTERS = [Filters(split="val"), Filters(split="train,test"), Filters(folder="2019"),
           Filters(folder="2019/summer"), Filters(since="2020-03-01"), Filters(until="2019-05-12"),
           Filters(since="2019-02-01", until="2019-06-30", split="train"),
           Filters.of(labels=["genre=drama"]), Filters.of(labels=["genre=comedy", "year=1993"]),
           Filters.of(folder="2020", labels=["genre=horror"])]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("f", FILTERS, ids=str)
def test_filtered_search_is_exact_over_the_items_that_pass(collection, kind, f):
    images, vecs, built = collection
    allowed = np.array([r for r, im in enumerate(images) if _passes(im, f)])
    assert 0 < len(allowed) < N
    ix = open_index(built[kind], model=False)
    rng = np.random.default_rng(1)
    for q in vecs[rng.choice(N, 5, replace=False)]:
        hits = ix.search_vector(q, k=10, filters=f).hits
        scores = vecs[allowed] @ q
        want = scores[np.argsort(-scores)][:10]
        np.testing.assert_allclose([h.score for h in hits], want, atol=1e-5)
        assert all(_passes(images[h.id], f) for h in hits)
    ix.close()


def test_a_wide_filter_on_an_approximate_index_goes_through_faiss(collection, monkeypatch):
    images, vecs, built = collection
    monkeypatch.setattr(search_mod, "SUBSET_EXACT", 0)  # every filter through FAISS's selector
    ix = open_index(built["hnsw"], model=False)
    f = Filters(split="train,val")
    allowed = np.array([r for r, im in enumerate(images) if _passes(im, f)])
    found = []
    for q in vecs[:40]:
        hits = ix.search_vector(q, k=10, filters=f).hits
        assert all(_passes(images[h.id], f) for h in hits) and len(hits) == 10
        scores = vecs[allowed] @ q
        best = set(allowed[np.argsort(-scores)[:10]].tolist())
        found.append(len(best & {h.id for h in hits}) / 10)
    assert np.mean(found) >= 0.9
    ix.close()


def test_min_score_cuts_the_list(collection):
    images, vecs, built = collection
    ix = open_index(built["flat"], model=False)
    q = vecs[7]
    full = ix.search_vector(q, k=50).hits
    cut = (full[3].score + full[4].score) / 2  # between two hits, so no tie sits at the cut
    kept = ix.search_vector(q, k=50, min_score=cut).hits
    assert [h.id for h in kept] == [h.id for h in full[:4]]
    assert ix.search_vector(q, k=50, min_score=1.01).hits == []
    both = ix.search_vector(q, k=50, min_score=0.2, filters=Filters(split="val")).hits
    assert all(h.score >= 0.2 and h.split == "val" for h in both)
    ix.close()


def test_bad_filters_are_user_errors(collection):
    _, vecs, built = collection
    ix = open_index(built["flat"], model=False)
    with pytest.raises(ConfigError, match="label column 'gnre'.*genre"):
        ix.search_vector(vecs[0], filters=Filters.of(labels=["gnre=drama"]))
    for bad in (dict(labels=["genre"]), dict(since="May 2020"), dict(until="2020-13")):
        with pytest.raises(ConfigError):
            Filters.of(**bad)
    assert ix.search_vector(vecs[0], filters=Filters.of(labels=["genre=western"])).hits == []
    ix.close()


def test_an_index_written_before_dates_reads_and_says_what_to_do(collection, tmp_path):
    _, vecs, built = collection
    old = tmp_path / "old"
    shutil.copytree(built["flat"], old)
    db = next(old.glob("v-*/meta.sqlite"))
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE images DROP COLUMN folder")
    con.execute("ALTER TABLE images DROP COLUMN date")
    con.commit()
    con.close()
    ix = open_index(old, model=False)
    hits = ix.search_vector(vecs[0], k=3, filters=Filters(split="val")).hits
    assert len(hits) == 3 and hits[0].date == "" and hits[0].folder == ""
    with pytest.raises(ConfigError, match="crossalign index RUN --out"):
        ix.search_vector(vecs[0], filters=Filters(since="2020-01-01"))
    ix.close()


def _exif_jpeg(path: Path, stamp: str | None) -> None:
    im = Image.new("RGB", (40, 40), (120, 40, 200))
    exif = Image.Exif()
    if stamp:
        exif.get_ifd(0x8769)[36867] = stamp  # DateTimeOriginal
    im.save(path, "JPEG", exif=exif.tobytes())


def test_build_records_folders_and_dates(tmp_path, shapes_index):
    import os

    run, _ = shapes_index
    photos = tmp_path / "photos"
    (photos / "2019" / "summer").mkdir(parents=True)
    (photos / "2021").mkdir()
    _exif_jpeg(photos / "2019" / "summer" / "beach.jpg", "2019:07:14 09:30:00")
    _exif_jpeg(photos / "2021" / "snow.jpg", None)
    os.utime(photos / "2021" / "snow.jpg", (1612345678, 1612345678))  # 2021-02-03T09:47:58Z
    _exif_jpeg(photos / "top.jpg", "2018:01:02 03:04:05")
    build_index(run, tmp_path / "idx", images=photos, progress=False)
    ix = open_index(tmp_path / "idx", model=False)
    recs = {im.name: im for im in ix.store.all_images()}
    assert {n: (r.folder, r.date) for n, r in recs.items()} == {
        "2019/summer/beach.jpg": ("2019/summer", "2019-07-14T09:30:00"),
        "2021/snow.jpg": ("2021", "2021-02-03T09:47:58"),
        "top.jpg": ("", "2018-01-02T03:04:05")}
    q = ix.store.vector("images", recs["top.jpg"].id)
    names = lambda f: sorted(h.name for h in ix.search_vector(q, k=10, filters=f).hits)  # noqa: E731
    assert names(Filters(folder="2019")) == ["2019/summer/beach.jpg"]
    assert names(Filters(since="2019-01-01")) == ["2019/summer/beach.jpg", "2021/snow.jpg"]
    assert names(Filters(until="2019-07-14")) == ["2019/summer/beach.jpg", "top.jpg"]
    ix.close()


def test_search_command_filters_and_cuts(shapes_index, capsys):
    _, idx = shapes_index
    capsys.readouterr()
    assert main(["search", str(idx), "a red circle", "-k", "60", "--json", "--split", "val"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    ix = open_index(idx, model=False)
    n_val = sum(im.split == "val" for im in ix.store.all_images())
    ix.close()
    assert 0 < len(out["hits"]) == n_val and {h["split"] for h in out["hits"]} == {"val"}
    cut = out["hits"][2]["score"]
    assert main(["search", str(idx), "a red circle", "-k", "60", "--json", "--split", "val",
                 "--min-score", str(cut)]) == 0
    kept = json.loads(capsys.readouterr().out)["hits"]
    assert len(kept) >= 3 and all(h["score"] >= cut for h in kept)
    assert main(["search", str(idx), "a red circle", "--min-score", "0.9999"]) == 0
    assert "nothing found" in capsys.readouterr().out
    assert main(["search", str(idx), "a red circle", "--label", "shape"]) == 2
    assert "COLUMN=VALUE" in capsys.readouterr().err


def test_repeated_text_queries_come_from_memory(shapes_index, monkeypatch):
    _, idx = shapes_index
    ix = open_index(idx)
    calls = []
    real = ix.embedder.text
    monkeypatch.setattr(ix.embedder, "text", lambda texts: calls.append(list(texts)) or real(texts))
    first = ix.search(text="a red circle", k=5)
    again = ix.search(text="a red circle", k=5)
    mixed = ix.search(text=["a red circle", "a blue square"], k=5, minus="grass")
    assert calls == [["a red circle"], ["a blue square", "grass"]]
    assert [h.id for h in first.hits] == [h.id for h in again.hits]
    np.testing.assert_allclose([h.score for h in first.hits], [h.score for h in again.hits])
    monkeypatch.setattr(search_mod, "QUERY_CACHE", 2)
    ix.search(text="a green triangle", k=1)
    assert len(ix._texts) == 2 and "a green triangle" in ix._texts
    ix.close()
