"""A corpus of awkward and broken inputs, generated here, and the documented outcome of each.

Every case is either loaded correctly or skipped with a message naming the file and the
row; none produces a traceback.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossalign.cli.main import main
from crossalign.config import DataConfig, TextTowerConfig
from crossalign.data.doctor import check_data, token_counter
from crossalign.data.formats import DataError, read_pairs
from crossalign.data.prepare import prepare_table
from crossalign.data.transforms import ImageError, load_image

RED, BLUE = (220, 20, 20), (20, 20, 220)
LONG = ("word " * 2000).strip()  # 9,999 characters, 2,000 words


def _png(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB or a lying header)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _halves(size=(40, 20), left=RED, right=BLUE) -> Image.Image:
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _with_alpha() -> Image.Image:
    """Left half fully transparent (its red must not show), right half opaque blue."""
    im = _halves().convert("RGBA")
    alpha = Image.new("L", im.size, 0)
    alpha.paste(255, (20, 0, 40, 20))
    im.putalpha(alpha)
    return im


def make_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    good = _save(_halves(), "JPEG", quality=95)
    files = {
        "good.jpg": good, "good2.jpg": _save(_halves((30, 30)), "PNG"), "good3.jpg": good,
        "truncated.jpg": _save(_halves((200, 200)), "JPEG")[:600],
        "zero.jpg": b"",
        "cmyk.jpg": _save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"),  # pure red in CMYK
        "gray16.png": _save(Image.fromarray(np.tile(np.arange(0, 65536, 256, dtype=np.uint16), (4, 1))), "PNG"),
        "rgb48.png": _png(2, 1, 16, 2, b"\x00" + struct.pack(">6H", 65535, 0, 0, 0, 0, 32768)),
        "alpha.png": _save(_with_alpha(), "PNG"),
        "palette.gif": _save(_halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4), "GIF"),
        "photo.webp": _save(_halves(), "WEBP", lossless=True),
        "bomb.png": _png(10_000, 10_000, 8, 0, b"\x00" * 64),  # claims 100 M pixels
        "tiny.png": _save(Image.new("RGB", (4, 4), RED), "PNG"),
        "orphan.jpg": good,  # no caption uses it
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    files["rotated.jpg"] = _save(_halves((40, 20)), "JPEG", exif=exif.tobytes(), quality=95)
    for name, data in files.items():
        (folder / name).write_bytes(data)


# (image, caption bytes) in file order; the header is line 1, so this list starts at line 2
ROWS = [
    ("good.jpg", b"a red and blue picture"),
    ("truncated.jpg", b"a photo cut short"),
    ("zero.jpg", b"an empty file"),
    ("cmyk.jpg", b"a red square printed in cmyk"),
    ("gray16.png", b"a grey ramp in sixteen bits"),
    ("rgb48.png", b"two pixels in forty-eight bits"),
    ("alpha.png", b"half transparent"),
    ("palette.gif", b"a palette picture"),
    ("photo.webp", b"a webp picture"),
    ("rotated.jpg", b"a phone photo held upright"),
    ("bomb.png", b"a decompression bomb"),
    ("tiny.png", b"a very small image"),
    ("good2.jpg", b'"a caption\r\nover two lines"'),  # quoted newline: lines 14-15
    ("good.jpg", b"caf\xe9 au lait in latin-1"),  # line 16
    ("good2.jpg", b""),  # line 17
    ("good3.jpg", b"   "),  # line 18
    ("good3.jpg", LONG.encode()),  # line 19
    ("good.jpg", b"a red and blue picture"),  # line 20: a duplicate of line 2
    ("missing.jpg", b"an image that is not there"),  # line 21
    ("good3.jpg", b"the last row still loads"),  # line 22
]


def make_corpus(root: Path) -> Path:
    make_images(root / "images")
    body = b"\xef\xbb\xbfimage,caption\r\n" + b"".join(i.encode() + b"," + c + b"\r\n" for i, c in ROWS)
    (root / "captions.txt").write_bytes(body)  # a BOM and CRLF line ends, as a spreadsheet saves
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(i for i, _ in ROWS if i not in ("good2.jpg", "good3.jpg")))
    (root / "splits" / "val.txt").write_text("good2.jpg\n")
    (root / "splits" / "test.txt").write_text("good3.jpg\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("bad"))


# --- rows: skipped with file and line, or loaded ------------------------------------------

def test_rows_are_loaded_or_skipped_by_name(corpus):
    table, problems = prepare_table(corpus, DataConfig())
    cap = str(corpus / "captions.txt")
    by_kind = {(p.kind, p.where) for p in problems}
    assert by_kind == {("non_utf8", f"{cap}:16"), ("empty_caption", f"{cap}:17"), ("empty_caption", f"{cap}:18"),
                       ("missing_image", f"{cap}:21"), ("empty_file", f"{cap}:4")}
    assert all("row skipped" in p.detail for p in problems)
    assert table.image_id[0] == "good.jpg"  # the BOM did not stick to the header or the first name
    assert "a caption\r\nover two lines" in table.caption  # the quoted newline stays inside its caption
    assert table.origin[table.caption.index("a caption\r\nover two lines")] == f"{cap}:14"
    assert LONG in table.caption and table.caption.count("a red and blue picture") == 2
    assert table.caption[-1] == "the last row still loads"


def test_strict_stops_at_the_first_problem_with_its_row(corpus):
    with pytest.raises(DataError, match=r"captions.txt:16: text is not valid UTF-8"):
        prepare_table(corpus, DataConfig(strict=True))


def test_missing_images_folder_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,a caption\n")
    with pytest.raises(DataError, match=r"images: images folder not found"):
        read_pairs(tmp_path)
    assert main(["-q", "data", "check", str(tmp_path), "--json", "-"]) == 2
    err = capsys.readouterr().err
    assert "images folder not found" in err and "Traceback" not in err


# --- images: loaded correctly, or refused with the file's name ----------------------------

def _px(im: Image.Image, xy) -> tuple:
    return im.convert("RGB").getpixel(xy)


def _near(a, b, tol=40) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_awkward_images_load_correctly(corpus):
    img = corpus / "images"
    cmyk = load_image(img / "cmyk.jpg")
    assert cmyk.mode == "RGB" and _near(_px(cmyk, (10, 10)), (255, 0, 0))
    ramp = np.asarray(load_image(img / "gray16.png"))[0, :, 0]
    assert ramp[0] == 0 and ramp[-1] == 255 and 120 <= ramp[128] <= 136  # scaled, not clipped to white
    rgb48 = load_image(img / "rgb48.png")
    assert _near(_px(rgb48, (0, 0)), (255, 0, 0), 2) and _near(_px(rgb48, (1, 0)), (0, 0, 128), 2)
    alpha = load_image(img / "alpha.png")
    assert _px(alpha, (5, 10)) == (255, 255, 255) and _near(_px(alpha, (35, 10)), BLUE, 2)  # on white
    gif = load_image(img / "palette.gif")
    assert _near(_px(gif, (5, 10)), RED, 20) and _near(_px(gif, (35, 10)), BLUE, 20)
    webp = load_image(img / "photo.webp")
    assert _px(webp, (5, 10)) == RED and _px(webp, (35, 10)) == BLUE
    rotated = load_image(img / "rotated.jpg")
    assert rotated.size == (20, 40)  # upright: the left half (red) is now on top
    assert _near(_px(rotated, (10, 5)), RED) and _near(_px(rotated, (10, 35)), BLUE)


@pytest.mark.parametrize("name, kind, text", [
    ("truncated.jpg", "truncated", "truncated"),
    ("zero.jpg", "empty_file", r"empty \(0 bytes\)"),
    ("bomb.png", "too_large", "10000x10000 pixels is over the limit"),
    ("missing.jpg", "missing", "not found"),
])
def test_broken_images_are_refused_by_name(corpus, name, kind, text):
    with pytest.raises(ImageError, match=text) as e:
        load_image(str(corpus / "images" / name))
    assert e.value.kind == kind and name in str(e.value)


def test_pixel_limit_is_configurable(corpus):
    with pytest.raises(ImageError, match="over the limit of 100"):
        load_image(corpus / "images" / "good.jpg", max_pixels=100)


# --- the doctor sees every case -------------------------------------------------------------

def test_doctor_reports_each_case(corpus):
    report = check_data(corpus, DataConfig(), max_tokens=256, workers=1)
    assert report["errors"] == {"non_utf8": 1, "empty_caption": 2, "missing_image": 1, "empty_file": 1,
                                "truncated_image": 1, "too_large_image": 1}
    assert report["warnings"] == {"duplicate_pair": 1, "long_caption": 1, "tiny_image": 3,
                                  "image_without_caption": 1}
    where = {p["kind"]: (p["where"], p["detail"]) for p in report["problems"]}
    tiny = {p["detail"].split(":")[0].rsplit("/", 1)[-1] for p in report["problems"] if p["kind"] == "tiny_image"}
    assert tiny == {"tiny.png", "rgb48.png", "gray16.png"}  # 4x4, 2x1 and 256x4 pixels
    cap = str(corpus / "captions.txt")
    assert where["truncated_image"][0] == f"{cap}:3" and "truncated.jpg" in where["truncated_image"][1]
    assert where["too_large_image"][0] == f"{cap}:12"
    assert where["duplicate_pair"] == (f"{cap}:20", f"same image and caption as {cap}:2; kept")
    assert where["long_caption"][0] == f"{cap}:19" and "over the text tower's limit of 256" in where["long_caption"][1]
    assert where["image_without_caption"][0].endswith("orphan.jpg")
    # 20 rows, a quoted newline joins two lines; skipped: 5 by validation + truncated + bomb
    assert report["rows_read"] == 20 and report["rows_skipped"] == 7 and report["captions"] == 13
    assert report["images"] == len({"good.jpg", "good2.jpg", "good3.jpg", "cmyk.jpg", "gray16.png", "rgb48.png",
                                     "alpha.png", "palette.gif", "photo.webp", "rotated.jpg", "tiny.png"})
    assert not report["ok"]


def test_long_caption_counted_with_the_towers_tokenizer(corpus):
    counter = token_counter(TextTowerConfig())
    if counter is None:
        pytest.skip("the MiniLM tokenizer is not installed")
    report = check_data(corpus, DataConfig(), 256, lambda: counter, images=False)
    detail = next(p["detail"] for p in report["problems"] if p["kind"] == "long_caption")
    assert report["checks"]["token_count"] == "tokenizer" and f"has {counter(LONG)} tokens" in detail


def test_cli_check_and_convert_never_trace_back(corpus, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["-q", "data", "check", str(corpus), "--json", str(report), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "truncated.jpg" in out and "Traceback" not in out + err
    assert json.loads(report.read_text())["errors"]["truncated_image"] == 1
    assert main(["-q", "data", "check", str(corpus), "--json", "-", "--strict", "--no-images"]) == 2
    assert "row(s) would be skipped (--strict)" in capsys.readouterr().err
    out_dir = tmp_path / "converted"
    assert main(["-q", "data", "convert", str(corpus), "--out", str(out_dir)]) == 0
    converted = read_pairs(out_dir)
    assert "missing.jpg" not in converted.image_id and len(converted) == 15  # 20 rows less 5 skipped


def test_training_skips_a_corrupt_image_and_finishes(corpus, tmp_path, capsys):
    from crossalign.models.registry import list_models

    if not {"small_cnn", "lstm"} <= set(list_models()):
        pytest.skip("the tiny random towers small_cnn and lstm are not registered")
    data = tmp_path / "d"
    shutil.copytree(corpus, data)
    run = tmp_path / "run"
    code = main(["-q", "train", "--data", str(data), "--out", str(run),
                 "--set", "model.image.tower=small_cnn", "--set", "model.text.tower=lstm",
                 "--set", "model.image.pretrained=false", "--set", "model.text.pretrained=false",
                 "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "cache.enabled=false"])
    err = capsys.readouterr().err
    assert code == 0, err
    problems = json.loads((run / "problems.json").read_text())
    named = " ".join(p["where"] + " " + p["detail"] for p in problems)
    assert "truncated.jpg" in named and "bomb.png" in named and "captions.txt:16" in named
