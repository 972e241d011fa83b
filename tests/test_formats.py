"""Every supported layout, built small in a temporary folder, reads to the same pair table."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from crossalign.cli.main import main
from crossalign.config import DataConfig
from crossalign.data.convert import convert_to_folder
from crossalign.data.formats import READERS, detect_format, read_pairs
from crossalign.errors import DataError
from crossalign.data.prepare import prepare_table
from crossalign.data.splits import split_from_name
from crossalign.data.transforms import inspect_image, load_image
from crossalign._io import sha256_file

# the one logical data set every fixture writes: 6 images, 2 captions each, a given split
COLOURS = {"1": (200, 30, 30), "2": (30, 200, 30), "3": (30, 30, 200), "4": (200, 200, 30),
           "5": (30, 200, 200), "6": (200, 30, 200)}
CAPTIONS = {k: [f"a plain picture number {k}", f"colour field {k}, nothing else"] for k in COLOURS}
SPLIT = {"1": "train", "2": "train", "3": "train", "4": "train", "5": "val", "6": "test"}
GENRES = {k: ("Drama|Comedy" if int(k) % 2 else "Horror") for k in COLOURS}


def _jpeg(key: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), COLOURS[key]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _images(folder: Path, name=lambda k: f"{k}.jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in COLOURS:
        (folder / name(k)).write_bytes(_jpeg(k))


def _split_lists(folder: Path, name=lambda k: f"{k}.jpg", files=("train", "val", "test")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, fname in zip(("train", "val", "test"), files):
        (folder / fname).write_text("".join(f"{name(k)}\n" for k, s in SPLIT.items() if s == split))


def write_folder(root: Path) -> Path:
    _images(root / "images")
    rows = [["image", "caption", "genres"]] + [[f"{k}.jpg", c, GENRES[k]] for k in COLOURS for c in CAPTIONS[k]]
    with open(root / "captions.txt", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    _split_lists(root / "splits", files=("train.txt", "val.txt", "test.txt"))
    return root


def write_flickr8k(root: Path) -> Path:
    _images(root / "Flicker8k_Dataset")  # the original archive's spelling
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    (text / "Flickr8k.token.txt").write_text(
        "".join(f"{k}.jpg#{n}\t{c}\n" for k in COLOURS for n, c in enumerate(CAPTIONS[k])))
    (text / "Flickr8k.lemma.token.txt").write_text("ignored\n")
    _split_lists(text, files=("Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt"))
    return root


def write_karpathy(root: Path) -> Path:
    _images(root / "images")
    images = [{"filename": f"{k}.jpg", "imgid": int(k),
               "split": "restval" if k == "4" else SPLIT[k],  # restval is train
               "sentences": [{"raw": c, "tokens": c.split()} for c in CAPTIONS[k]]} for k in COLOURS]
    (root / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    return root


def write_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    for split, tag in (("train", "train2014"), ("val", "val2014"), ("test", "test2014")):
        keys = [k for k in COLOURS if SPLIT[k] == split]
        _images(root / tag)
        for k in COLOURS:
            if k not in keys:
                (root / tag / f"{k}.jpg").unlink()
        data = {"images": [{"id": int(k), "file_name": f"{k}.jpg", "width": 40, "height": 32} for k in keys],
                "annotations": [{"id": int(k) * 10 + n, "image_id": int(k), "caption": c}
                                for k in keys for n, c in enumerate(CAPTIONS[k])]}
        (root / "annotations" / f"captions_{tag}.json").write_text(json.dumps(data))
    return root


def write_csv(root: Path) -> Path:
    _images(root)  # paths are relative to the file
    for split in ("train", "val", "test"):  # open_clip's default: tab-separated, filepath + title
        rows = [["filepath", "title", "genres"]] + [[f"{k}.jpg", c, GENRES[k]] for k in COLOURS
                                                    if SPLIT[k] == split for c in CAPTIONS[k]]
        (root / f"{split}.csv").write_text("".join("\t".join(r) + "\n" for r in rows))
    return root


def write_jsonl(root: Path) -> Path:
    _images(root)
    lines = []
    for k in COLOURS:
        if k == "1":  # one caption per line is allowed too
            lines += [{"image": "1.jpg", "caption": c, "split": "train", "genres": GENRES[k]} for c in CAPTIONS[k]]
        else:
            lines.append({"image": f"{k}.jpg", "captions": CAPTIONS[k], "split": SPLIT[k], "genres": GENRES[k]})
    (root / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "pairs.jsonl"


def write_sidecar(root: Path) -> Path:
    _images(root)
    for k in COLOURS:
        (root / f"{k}.txt").write_text("\n".join(CAPTIONS[k]) + "\n")
    _split_lists(root / "splits", files=("train.txt", "val.txt", "test.txt"))
    return root


def write_movielens(root: Path) -> Path:
    _images(root / "posters")
    rows = [["movieId", "title", "genres", "plot"]]
    rows += [[k, f"Film {k} ({1990 + int(k)})", GENRES[k], c] for k in COLOURS for c in CAPTIONS[k]]
    with open(root / "movies.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    _split_lists(root, name=lambda k: k, files=("train.txt", "val.txt", "test.txt"))
    return root


def write_webdataset(root: Path, suffix: str = ".tar") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        with tarfile.open(root / f"{split}-000000{suffix}", "w:gz" if suffix.endswith("gz") else "w") as tf:
            for k in (k for k in COLOURS if SPLIT[k] == split):
                for ext, data in (("jpg", _jpeg(k)), ("txt", "\n".join(CAPTIONS[k]).encode()),
                                  ("json", json.dumps({"genres": GENRES[k]}).encode())):
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return root


WRITERS = {"folder": write_folder, "flickr8k": write_flickr8k, "karpathy": write_karpathy, "coco": write_coco,
           "csv": write_csv, "jsonl": write_jsonl, "sidecar": write_sidecar, "movielens": write_movielens,
           "webdataset": write_webdataset}


def canonical(table) -> list[tuple]:
    """A layout-free view: (image id, caption, split, image content hash) per row, sorted."""
    from crossalign.data.members import is_ref, read_member

    return sorted((i, c, s, hashlib.sha1(read_member(p) if is_ref(p) else Path(p).read_bytes()).hexdigest())
                  for i, c, s, p in zip(table.image_id, table.caption, table.split, table.image_path))


EXPECTED = sorted((f"{k}.jpg", c, SPLIT[k], hashlib.sha1(_jpeg(k)).hexdigest()) for k in COLOURS for c in CAPTIONS[k])


def test_every_reader_has_a_fixture():
    assert set(WRITERS) == set(READERS)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_layout_reads_to_the_same_table(fmt, tmp_path):
    path = WRITERS[fmt](tmp_path / fmt)
    assert detect_format(path) == fmt
    table = read_pairs(path)
    assert table.meta["format"] == fmt
    assert table.meta["skipped"] == []
    assert canonical(table) == EXPECTED
    assert read_pairs(path, format=fmt).image_id == table.image_id  # --format gives the same
    assert len(set(table.origin)) == len(table)  # every row can be named on its own


@pytest.mark.parametrize("fmt", ["folder", "csv", "jsonl", "movielens", "webdataset"])
def test_extra_columns_become_labels(fmt, tmp_path):
    table = read_pairs(WRITERS[fmt](tmp_path / fmt))
    genres = {i: g for i, g in zip(table.image_id, table.labels["genres"])}
    assert genres == {f"{k}.jpg": GENRES[k] for k in COLOURS}


def test_movielens_keeps_title_year_and_id_as_labels(tmp_path):
    table = read_pairs(write_movielens(tmp_path / "ml"))
    row = table.image_id.index("3.jpg")
    assert table.labels["title"][row] == "Film 3 (1993)"
    assert table.labels["year"][row] == "1993" and table.labels["movie_id"][row] == "3"
    assert table.caption[row] == CAPTIONS["3"][0]  # the plot is the caption


def test_movielens_train_list_only_fills_val_and_test_by_movie(tmp_path):
    root = write_movielens(tmp_path / "ml")
    (root / "val.txt").unlink()
    (root / "test.txt").unlink()
    table, _ = prepare_table(root, DataConfig(group_column="movie_id"))
    split = dict(zip(table.labels["movie_id"], table.split))
    assert all(split[k] == "train" for k in "1234")
    assert {split["5"], split["6"]} <= {"val", "test"}


def test_options_rename_columns_and_separator(tmp_path):
    root = tmp_path / "custom"
    _images(root / "photos")
    rows = [["path", "text"]] + [[f"{k}.jpg", c] for k in COLOURS for c in CAPTIONS[k]]
    (root / "pairs.csv").write_text("".join(";".join(r) + "\n" for r in rows))
    cfg = DataConfig(image_column="path", caption_column="text", separator=";", image_dir="photos")
    table = read_pairs(root, "csv", cfg)
    assert sorted(zip(table.image_id, table.caption)) == sorted((e[0], e[1]) for e in EXPECTED)
    with pytest.raises(DataError, match=r"pairs.csv: line 1: header must contain 'filepath' and 'title'"):
        read_pairs(root, "csv")


def test_webdataset_images_are_read_in_place(tmp_path):
    """Uncompressed shards: every image is a reference to its member, read back with one
    pread, and nothing is written to disk."""
    from crossalign.data.members import parse_ref, read_member, source_hash

    root = write_webdataset(tmp_path / "wds")
    cfg = DataConfig(extract_dir=str(tmp_path / "x"))
    table = read_pairs(root, options=cfg)
    assert canonical(table) == EXPECTED and not (tmp_path / "x").exists()
    with tarfile.open(root / "train-000000.tar") as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf if m.name.endswith(".jpg")}
    for p in set(table.image_path):
        ref = parse_ref(p)
        assert ref is not None and Path(ref.shard).parent == (tmp_path / "wds").resolve()
        if ref.name in members and ref.shard.endswith("train-000000.tar"):
            assert read_member(p) == members[ref.name]
        assert source_hash(p) == hashlib.sha256(read_member(p)).hexdigest()
        assert load_image(p).size == (40, 32) and inspect_image(p)[:2] == (40, 32)
    assert table.meta["image_roots"] == [str((tmp_path / "wds").resolve())]


def test_webdataset_streams_into_a_content_addressed_folder(tmp_path):
    root = write_webdataset(tmp_path / "wds")
    cfg = DataConfig(extract_dir=str(tmp_path / "x"), shard_images="extract")
    table = read_pairs(root, options=cfg)
    paths = set(table.image_path)
    for p in paths:  # named by the content, inside the extract dir; the rest of the pipeline opens it
        assert Path(p).parent.parent == tmp_path / "x"
        assert Path(p).stem == hashlib.sha256(Path(p).read_bytes()).hexdigest() == sha256_file(p)
        assert load_image(p).size == (40, 32)
    before = {p: Path(p).stat().st_mtime_ns for p in paths}
    again = read_pairs(root, options=cfg)  # a second read writes nothing
    assert {p: Path(p).stat().st_mtime_ns for p in set(again.image_path)} == before
    assert table.origin[table.image_id.index("1.jpg")].endswith("train-000000.tar:1.txt:1")


def test_gzipped_shards_stream_too(tmp_path):
    root = write_webdataset(tmp_path / "wds", ".tar.gz")
    table = read_pairs(root, options=DataConfig(extract_dir=str(tmp_path / "x")))
    assert table.meta["format"] == "webdataset" and canonical(table) == EXPECTED
    assert all(Path(p).parent.parent == tmp_path / "x" for p in table.image_path)  # copied out: no offsets


def test_damaged_shard_costs_its_tail_not_the_run(tmp_path):
    root = write_webdataset(tmp_path / "wds")
    shard = root / "train-000000.tar"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2 + 100])  # cut inside a later member
    table = read_pairs(root, options=DataConfig(extract_dir=str(tmp_path / "x")))
    skipped = table.meta["skipped"]
    assert [s["kind"] for s in skipped] == ["bad_shard"] and str(shard) in skipped[0]["where"]
    assert {"5.jpg", "6.jpg"} <= set(table.image_id)  # the other shards still load


def test_split_names_from_files():
    assert split_from_name("captions_train2014.json") == "train"
    assert split_from_name("Flickr_8k.devImages.txt") == "val"
    assert split_from_name("val-000012.tar") == "val" and split_from_name("shard-000.tar") == ""


def test_no_split_given_means_seeded_split_by_image(tmp_path):
    root = write_sidecar(tmp_path / "side")
    for f in (root / "splits").iterdir():
        f.unlink()
    table, _ = prepare_table(root, DataConfig(split_ratios=(0.5, 0.25, 0.25)))
    per_image = {}
    for i, s in zip(table.image_id, table.split):
        per_image.setdefault(i, set()).add(s)
    assert all(len(s) == 1 for s in per_image.values())
    # 6 images cut at round(6 * 0.5) = 3 and 3 + round(6 * 0.25) = 5
    assert sorted(s.pop() for s in per_image.values()) == ["test", "train", "train", "train", "val", "val"]


def test_unknown_layout_is_named(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(DataError, match="no known data layout"):
        read_pairs(tmp_path)
    with pytest.raises(DataError, match="unknown format 'nope'"):
        read_pairs(tmp_path, "nope")


@pytest.mark.parametrize("fmt", ["flickr8k", "movielens", "webdataset"])
def test_convert_writes_the_canonical_layout(fmt, tmp_path):
    src = WRITERS[fmt](tmp_path / fmt)
    out = tmp_path / "canon"
    cfg = DataConfig(extract_dir=str(tmp_path / "x"))
    convert_to_folder(src, out, cfg, quiet=True)
    assert (out / "images").is_dir() and (out / "captions.txt").is_file()
    assert sorted(p.name for p in (out / "splits").iterdir()) == ["test.txt", "train.txt", "val.txt"]
    back = read_pairs(out)
    assert detect_format(out) == "folder" and canonical(back) == EXPECTED


def test_cli_check_and_convert(tmp_path, capsys):
    src = write_karpathy(tmp_path / "k")
    report = tmp_path / "report.json"
    assert main(["-q", "check", str(src), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "6 images, 12 captions" in out and "problems (rows skipped): none" in out
    data = json.loads(report.read_text())
    assert data["splits"]["train"] == {"images": 4, "captions": 8} and data["ok"]
    assert main(["-q", "convert", str(src), "--out", str(tmp_path / "c")]) == 0
    assert canonical(read_pairs(tmp_path / "c")) == EXPECTED
