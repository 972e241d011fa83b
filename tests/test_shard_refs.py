"""Images inside tar shards are read in place, by reference, through the whole pipeline:
training, evaluation, the report, the index and the search service; none is copied out."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from crossalign.cli.main import main
from crossalign.data.members import is_ref, member_ref, parse_ref, read_member, source_size

LOCAL = "http://127.0.0.1"  # a host name the service answers


def _write_shards(shapes: Path, out: Path, per_shard: int = 10) -> dict[str, bytes]:
    """The shapes data as uncompressed webdataset shards; returns each image's bytes by key."""
    rows = list(csv.reader((shapes / "captions.txt").open()))[1:]
    caps: dict[str, list[str]] = {}
    for name, caption in rows:
        caps.setdefault(name, []).append(caption)
    out.mkdir(parents=True)
    names, images = sorted(caps), {}
    for s in range(0, len(names), per_shard):
        last = s + per_shard >= len(names)
        split = "test" if last else "val" if s + 2 * per_shard >= len(names) else "train"
        with tarfile.open(out / f"{split}-{s // per_shard:03d}.tar", "w") as tf:
            for name in names[s:s + per_shard]:
                key = Path(name).stem
                data = (shapes / "images" / name).read_bytes()
                images[key] = data
                for ext, payload in (("png", data), ("txt", "\n".join(caps[name]).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return images


def test_a_reference_names_its_member_and_reads_it_back(tmp_path):
    shard = tmp_path / "a.tar"
    with tarfile.open(shard, "w") as tf:
        for name, payload in (("x/1.png", b"first"), ("x/2.png", b"second:with#tar:marks")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    with tarfile.open(shard) as tf:
        refs = [member_ref(shard, m.offset_data, m.size, m.name) for m in tf]
    assert [read_member(r) for r in refs] == [b"first", b"second:with#tar:marks"]
    assert parse_ref(refs[1]).name == "x/2.png" and is_ref(refs[0]) and not is_ref(str(shard))
    assert source_size(refs[1]) == len(b"second:with#tar:marks")
    shard.write_bytes(shard.read_bytes()[:600])  # cut: the second member is gone
    assert source_size(refs[1]) == -1
    with pytest.raises(OSError, match="ends before member"):
        read_member(parse_ref(refs[1]))


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("shard-refs")
    images = _write_shards(shapes_dir, root / "shards")
    extract = root / "extracted"
    run = root / "run"
    assert main(["-q", "train", "--data", str(root / "shards"), "--out", str(run), "--set", "train.epochs=1",
                 "--set", "model.image.tower=small_cnn", "--set", "model.image.image_size=32",
                 "--set", "model.text.tower=lstm", "--set", "train.batch_size=32",
                 "--set", f"data.extract_dir={extract}"]) == 0
    return root, run, images, extract


def test_shards_train_evaluate_report_without_copying_an_image(shard_run, tmp_path):
    root, run, _, extract = shard_run
    assert main(["-q", "evaluate", str(run), "--split", "test", "--json", str(tmp_path / "m.json")]) == 0
    assert main(["-q", "report", str(run), "--data", str(root / "shards"), "--out", str(tmp_path / "r.html"),
                 "--gallery", "3", "--explain", "1"]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.count("data:image/jpeg;base64,") >= 6  # thumbnails and the explained rows, from the shards
    assert not extract.exists()  # no image was written anywhere


def test_the_service_reads_a_member_back_by_reference(shard_run, tmp_path):
    from crossalign.index.build import build_index
    from crossalign.index.search import open_index
    from crossalign.serve import create_app

    root, run, images, _ = shard_run
    build_index(run, tmp_path / "idx", data=root / "shards", progress=False)
    ix = open_index(tmp_path / "idx")
    try:
        client = TestClient(create_app(ix), raise_server_exceptions=False, base_url=LOCAL)
        hit = client.get("/search", params={"q": "a red circle", "k": 1}).json()["hits"][0]
        rec = ix.image(hit["image_id"])
        assert is_ref(rec.path)
        full = client.get(hit["image_url"])
        assert full.status_code == 200 and full.headers["content-type"] == "image/png"
        assert full.content == images[Path(parse_ref(rec.path).name).stem]
        thumb = client.get(hit["thumb_url"])
        with Image.open(io.BytesIO(thumb.content)) as im:
            assert im.format == "JPEG"
        why = client.get("/explain", params={"id": hit["image_id"], "q": "a red circle"})
        assert why.status_code == 200 and why.json()["words"]
        assert str(root) not in client.get(f"/items/{hit['image_id']}").text  # never a path
    finally:
        ix.close()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_header_reader_agrees_with_tarfile(tmp_path, fmt):
    """Long names (ustar prefix, GNU long-name and pax records), folders and links are read as
    tarfile reads them; a damaged header is an error, not a wrong member."""
    from crossalign.data.readers.shards import _members

    shard = tmp_path / "t.tar"
    long_dir = "d" * 60 + "/" + "e" * 60  # needs the ustar prefix field, or a long-name record
    with tarfile.open(shard, "w", format=fmt) as tf:
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        for name, payload in (("sub/1.png", b"one"), (f"{long_dir}/2.png", b"two" * 300), ("3.txt", b"a\nb")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("4.png")
        link.type, link.linkname = tarfile.SYMTYPE, "sub/1.png"
        tf.addfile(link)
    with tarfile.open(shard) as tf:
        expected = [(m.name, tf.extractfile(m).read(), m.offset_data, m.size) for m in tf if m.isfile()]
    assert list(_members(shard, skip_images=False)) == expected
    skipped = list(_members(shard, skip_images=True))
    assert [d for _, d, _, _ in skipped] == [None, None, b"a\nb"]  # image bytes are seeked over
    raw = bytearray(shard.read_bytes())
    raw[expected[1][2] - 512 + 5] ^= 0xFF  # a flipped byte in the second file's header
    shard.write_bytes(bytes(raw))
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(_members(shard, skip_images=True))
