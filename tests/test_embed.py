"""The one embedding path: every door (a path, bytes, a PIL image, evaluation) gives one vector."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

import crossalign
from crossalign.cli.main import main
from crossalign.data.transforms import load_image
from crossalign.errors import ImageError
from crossalign.embed.collection import embed_image_files, embed_images, embed_texts
from crossalign.runs import open_run
from crossalign.runs import embed_split
from _tiny import CountingTower

TINY = ["--set", "model.image.tower=small_cnn", "--set", "model.text.tower=lstm",
        "--set", "model.image.pretrained=false", "--set", "model.text.pretrained=false",
        "--set", "train.epochs=1", "--set", "train.batch_size=16"]


def _awkward(folder) -> dict[str, bytes]:
    """A phone photo with EXIF rotation, a half-transparent PNG and a 16-bit grey ramp."""
    def save(im, fmt, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    halves = Image.new("RGB", (80, 40), (220, 20, 20))
    halves.paste((20, 20, 220), (40, 0, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    alpha = halves.convert("RGBA")
    alpha.putalpha(Image.linear_gradient("L").resize((80, 40)))
    ramp = np.tile(np.arange(0, 65536, 256, dtype=np.uint16), (64, 1))
    files = {"rotated.jpg": save(halves, "JPEG", exif=exif.tobytes(), quality=95),
             "alpha.png": save(alpha, "PNG"), "gray16.png": save(Image.fromarray(ramp), "PNG")}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from crossalign.data.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("embed")
    data = make_shapes_dataset(root / "data", n_images=20, seed=3, size=32)
    files = _awkward(data / "images")
    with open(data / "captions.txt", "a", encoding="utf-8") as f:
        f.writelines(f"{name},an awkward picture\n" for name in files)
    run = root / "run"
    assert main(["-q", "train", "--data", str(data), "--out", str(run), *TINY]) == 0
    return run, data, files


def test_every_door_gives_the_same_vector(tiny_run):
    run, data, files = tiny_run
    aligner = crossalign.load(run)
    paths = [str(data / "images" / n) for n in files]
    by_path = aligner.encode_image(paths)
    with_pil = aligner.encode_image([Image.open(p) for p in paths])
    by_bytes = aligner.encode_image(list(files.values()))
    np.testing.assert_allclose(with_pil, by_path, atol=1e-5)
    np.testing.assert_allclose(by_bytes, by_path, atol=1e-5)
    # evaluation embeds the same files the same way
    rd = open_run(run, data, quiet=True)
    emb = embed_split(rd, rd.table.take(k for k, i in enumerate(rd.table.image_id) if i in files), False)
    evaluated = emb.image_emb[[emb.image_ids.index(n) for n in files]]
    np.testing.assert_allclose(evaluated, by_path, atol=1e-5)
    # a PIL image only converted to RGB (transparency dropped, not put on white) embeds differently
    plain = aligner.encode_image(Image.open(paths[1]).convert("RGB"))
    assert not np.allclose(plain[0], by_path[1], atol=1e-5)  # the tolerance the doors agree to


def test_library_functions_agree_and_report_failures(tiny_run, tmp_path):
    run, data, files = tiny_run
    aligner = crossalign.load(run)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    good = str(data / "images" / "rotated.jpg")
    out = embed_image_files(aligner.model, [good, str(bad), good])
    assert out.paths == [good] and out.vectors.shape == (1, aligner.cfg.model.embed_dim)
    assert out.failed[str(bad)].kind == "unreadable" and "bad.jpg" in str(out.failed[str(bad)])
    np.testing.assert_allclose(out.vectors, embed_images(aligner.model, [good]), atol=1e-5)
    np.testing.assert_allclose(embed_texts(aligner.model, ["an awkward picture", "x"]),
                               aligner.encode_text(["an awkward picture", "x"]), atol=1e-5)
    with pytest.raises(ImageError, match="bad.jpg"):
        aligner.encode_image(str(bad))


def test_load_image_takes_bytes_through_the_same_checks(tiny_run):
    _, data, files = tiny_run
    from_bytes = load_image(files["rotated.jpg"])
    assert from_bytes.size == (40, 80)  # EXIF rotation applied
    assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(data / "images" / "rotated.jpg")))
    for name in ("alpha.png", "gray16.png"):
        assert np.array_equal(np.asarray(load_image(files[name])), np.asarray(load_image(data / "images" / name)))
    assert min(load_image(files["alpha.png"]).getpixel((0, 0))) >= 250  # nearly transparent red: white
    with pytest.raises(ImageError, match="empty") as e:
        load_image(b"")
    assert e.value.kind == "empty_file"
    with pytest.raises(ImageError, match="over the limit of 100"):
        load_image(files["rotated.jpg"], max_pixels=100)
    with pytest.raises(ImageError, match="truncated"):
        load_image(files["rotated.jpg"][:400])
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(b"hello, not an image")


def test_the_embed_room_imports_neither_training_nor_evaluation():
    # the rooms' packages are docstrings that ``import crossalign`` loads; their modules must not load
    code = ("import sys, crossalign.embed.collection, crossalign.embed.towers; "
            "bad = [m for m in sys.modules if m.startswith(('crossalign.train.', 'crossalign.evaluate.'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr



def test_a_cached_image_still_meets_the_pixel_limit(tmp_path):
    from crossalign.embed.towers import image_features

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (10, 10), (200, 0, 0)).save(small)
    Image.new("RGB", (40, 40), (0, 0, 200)).save(large)
    tower = CountingTower()
    first = image_features(tower, [str(small), str(large)], tmp_path / "cache", progress=False)
    assert first.feats.shape == (2, 3) and tower.calls == 2
    limited = image_features(tower, [str(small), str(large)], tmp_path / "cache", max_pixels=500,
                             progress=False)
    assert tower.calls == 2 and limited.feats.shape == (1, 3)  # from the cache, but refused
    assert limited.failed[str(large)].kind == "too_large" and "40x40" in str(limited.failed[str(large)])


def test_decoding_workers_give_the_same_features_and_failures(tmp_path):
    from crossalign.embed.towers import image_features

    paths = []
    for k in range(7):
        p = tmp_path / f"img{k}.png"
        Image.new("RGB", (12 + k, 10), (30 * k, 200 - 20 * k, 90)).save(p)
        paths.append(str(p))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    paths[2:2] = [str(tmp_path / "broken.jpg"), str(tmp_path / "big.png")]
    here = image_features(CountingTower(), paths, None, batch_size=3, max_pixels=1000, progress=False)
    spread = image_features(CountingTower(), paths, None, batch_size=3, max_pixels=1000, progress=False,
                            workers=2)
    assert here.feats.shape == (7, 3)
    np.testing.assert_array_equal(spread.feats, here.feats)
    assert {p: (str(e), e.kind) for p, e in spread.failed.items()} == \
        {p: (str(e), e.kind) for p, e in here.failed.items()}
    assert {e.kind for e in here.failed.values()} == {"unreadable", "too_large"}


@pytest.mark.parametrize("workers", [0, 2])
def test_extraction_leaves_the_global_random_state_alone(tmp_path, workers):
    # a loader drawing its seed from the global RNG made training differ between a cold and a
    # warm feature cache (dropout masks shifted), which broke exact resume
    from crossalign.embed.towers import image_features

    paths = []
    for k in range(3):
        Image.new("RGB", (10, 10), (80 * k, 20, 90)).save(tmp_path / f"i{k}.png")
        paths.append(str(tmp_path / f"i{k}.png"))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    out = image_features(CountingTower(), paths, tmp_path / "cache", progress=False, workers=workers)
    assert out.feats.shape == (3, 3)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_cached_shard_member_still_meets_the_pixel_limit(tmp_path):
    """A member of a tar shard is measured from its own bytes, as a file is."""
    import io
    import tarfile

    from crossalign.data.members import member_ref
    from crossalign.embed.towers import image_features

    shard = tmp_path / "train-000.tar"
    with tarfile.open(shard, "w") as tf:
        for name, size in (("small.png", 10), ("large.png", 40)):
            buf = io.BytesIO()
            Image.new("RGB", (size, size), (0, 0, 200)).save(buf, format="PNG")
            info = tarfile.TarInfo(name)
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    with tarfile.open(shard) as tf:
        refs = [member_ref(shard, m.offset_data, m.size, m.name) for m in tf.getmembers()]
    tower = CountingTower()
    assert image_features(tower, refs, tmp_path / "cache", progress=False).feats.shape == (2, 3)
    limited = image_features(tower, refs, tmp_path / "cache", max_pixels=500, progress=False)
    assert tower.calls == 2 and limited.feats.shape == (1, 3)  # from the cache, but refused
    assert limited.failed[refs[1]].kind == "too_large" and "40x40" in str(limited.failed[refs[1]])
