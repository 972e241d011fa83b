"""Words inside pictures: how many PP-OCR reads (through :class:`crossalign.index.ocr.WordReader`)
and at what cost, on Flickr8k photos with one word drawn into each.

Part ``read`` (the default): ``--n`` photos from ``--data``, each with ONE word (5 letters or
more, from the captions' vocabulary, never reused) drawn in a DejaVu or Liberation font found on
the system (missing ones skipped), at a size, a tilt of a few degrees, a colour and a case, on a
plain band or straight on the picture, all drawn from ``--seed``; written into ``--out``/images
with ``truth.csv`` (file,word,font,size,angle,colour,band). Each is read from its file in this
one process. A word is read exactly when, lowercased, it is one of the tokens found (the text
split on what is not a letter or digit, as a keyword search splits it). Printed as JSON: the
share read at the reader's ``min_confidence``, per condition (band or on the picture, size bin,
tilt, colour, font), the share at each of ``--confidences`` beside the other tokens kept per
image, and CPU (``time.process_time``) and wall seconds per image.

Part ``sides`` (``--part sides``): ``--large`` of the photos enlarged to 2048 x 1536 with a word
of 12 to 48 pixels, read with the longer side shrunk to each of ``--sides``: the share read per
word size and the seconds per image for each bound (the reader's ``max_side``).

    python bench/bench_ocr.py --n 500 --out /tmp/ocr-bench
    python bench/bench_ocr.py --part sides --large 60 --out /tmp/ocr-bench
    python bench/bench_ocr.py --n 500 --out /tmp/ocr-bench --index runs/flickr

With ``--index RUN`` (after part ``read``): ``crossalign.index(RUN, OUT/index,
images=OUT/images, ocr=True)``, then each image's word as a keyword query and as a vector
query (``k=1``): recall@1 of both, the indexing seconds per image, and a second build that
must read no image again (its ``ocr_read``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansCondensed.ttf", "DejaVuSerif.ttf",
              "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "LiberationSans-Regular.ttf",
              "LiberationSans-Bold.ttf", "LiberationSansNarrow-Regular.ttf",
              "LiberationSerif-Regular.ttf", "LiberationSerif-Italic.ttf", "LiberationMono-Regular.ttf")
# text colour, and the band's colour behind it
COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "yellow": (255, 220, 0),
           "red": (220, 30, 30), "blue": (30, 60, 220)}
BANDS = {"white": "black", "black": "white", "yellow": "black", "red": "white", "blue": "white"}
SIZE_BINS = ((10, 13), (14, 19), (20, 27), (28, 36), (37, 48))
TOKEN = re.compile(r"[^\W_]+")


def find_fonts() -> list[Path]:
    """The fonts of FONT_NAMES present on this system, first found of each."""
    found = {}
    for folder in FONT_DIRS:
        root = Path(folder).expanduser()
        if root.is_dir():
            for path in root.rglob("*.ttf"):
                if path.name in FONT_NAMES:
                    found.setdefault(path.name, path)
    return [found[name] for name in FONT_NAMES if name in found]


def vocabulary(data: Path, seed: int) -> list[str]:
    """Distinct caption words of 5+ letters, shuffled by ``seed``."""
    words = set()
    with open(data / "captions.txt", newline="") as f:
        for row in csv.DictReader(f):
            words.update(w for w in row["caption"].lower().split() if w.isalpha() and len(w) >= 5)
    words = sorted(words)
    random.Random(seed).shuffle(words)
    return words


def _word_layer(word: str, font: ImageFont.FreeTypeFont, colour: str, band: bool,
                angle: float) -> Image.Image:
    """The word (on its band) as an RGBA picture, turned by ``angle`` degrees."""
    left, top, right, bottom = font.getbbox(word)
    pad = max(3, font.size // 4)
    fill = COLOURS[BANDS[colour]] + (255,) if band else (0, 0, 0, 0)
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), fill)
    ImageDraw.Draw(layer).text((pad - left, pad - top), word, font=font, fill=COLOURS[colour] + (255,))
    return layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def draw_word(photo: Image.Image, word: str, font_path: Path, size: int, colour: str, band: bool,
              angle: float, rng: random.Random) -> tuple[Image.Image, int]:
    """``photo`` with ``word`` drawn at a random place; the size shrinks until the word fits."""
    while True:
        layer = _word_layer(word, ImageFont.truetype(str(font_path), size), colour, band, angle)
        if (layer.width <= photo.width - 4 and layer.height <= photo.height - 4) or size <= 8:
            break
        size -= 1
    out = photo.copy()
    x = rng.randint(0, max(0, photo.width - layer.width))
    y = rng.randint(0, max(0, photo.height - layer.height))
    out.paste(layer, (x, y), layer)
    return out, size


def _case(word: str, rng: random.Random) -> str:
    return rng.choice([word, word.capitalize(), word.upper()])


def make_set(data: Path, out: Path, n: int, seed: int, words: list[str], size_range: tuple[int, int],
             enlarge: tuple[int, int] | None = None) -> list[dict]:
    """``n`` photos with one word each, written to ``out``/images; returns the truth rows."""
    fonts = find_fonts()
    if not fonts:
        sys.exit("no DejaVu or Liberation fonts found (apt-get install fonts-dejavu fonts-liberation)")
    rng = random.Random(seed)
    photos = sorted((data / "images").glob("*.jpg"))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for photo_path, word in zip(rng.sample(photos, n), words):
        photo = Image.open(photo_path).convert("RGB")
        if enlarge:  # 4:3, as most camera pictures are
            w, h = photo.size
            crop = round(w * 3 / 4)
            photo = photo.crop((0, (h - crop) // 2, w, (h - crop) // 2 + crop))
            photo = photo.resize(enlarge, Image.Resampling.BICUBIC)
        font, colour = rng.choice(fonts), rng.choice(sorted(COLOURS))
        band, angle = rng.random() < 0.5, rng.randint(-5, 5)
        text, size = _case(word, rng), rng.randint(*size_range)
        drawn, size = draw_word(photo, text, font, size, colour, band, angle, rng)
        drawn.save(out / "images" / photo_path.name, quality=92)
        rows.append({"file": photo_path.name, "word": word, "font": font.stem, "size": size,
                     "angle": angle, "colour": colour, "band": int(band)})
    with open(out / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _size_bin(size: int) -> str:
    return next(f"{a}-{b}px" for a, b in SIZE_BINS if size <= b)


def _hit(words, target: str, cut: float) -> bool:
    return any(target in TOKEN.findall(w.text.lower()) for w in words if w.confidence >= cut)


def _others(words, target: str, cut: float) -> int:
    return sum(t != target for w in words if w.confidence >= cut for t in TOKEN.findall(w.text.lower()))


def read_all(reader, folder: Path, rows: list[dict]) -> tuple[list, float, float]:
    """Each image's words (every reading kept), and CPU and wall seconds per image."""
    reader(folder / rows[0]["file"])  # the engine loads here, outside the timing
    found, cpu0, wall0 = [], time.process_time(), time.perf_counter()
    for row in rows:
        found.append(reader(folder / row["file"]))
    n = len(rows)
    return found, (time.process_time() - cpu0) / n, (time.perf_counter() - wall0) / n


def _shares(rows: list[dict], hits: list[bool], key) -> dict:
    groups = defaultdict(list)
    for row, hit in zip(rows, hits):
        groups[key(row)].append(hit)
    return {k: {"n": len(v), "read": round(sum(v) / len(v), 3)} for k, v in sorted(groups.items())}


def part_read(args) -> dict:
    from crossalign.index.ocr import MIN_CONFIDENCE, WordReader

    rows = make_set(args.data, args.out, args.n, args.seed, vocabulary(args.data, args.seed), (10, 36))
    found, cpu, wall = read_all(WordReader(min_confidence=0.0), args.out / "images", rows)
    hits = [_hit(words, row["word"], MIN_CONFIDENCE) for words, row in zip(found, rows)]
    n = len(rows)
    sweep = {str(cut): {"read": round(sum(_hit(w, r["word"], cut) for w, r in zip(found, rows)) / n, 3),
                        "other_tokens_per_image":
                            round(sum(_others(w, r["word"], cut) for w, r in zip(found, rows)) / n, 3)}
             for cut in args.confidences}
    return {"images": n, "min_confidence": MIN_CONFIDENCE, "read": round(sum(hits) / n, 3),
            "by_band": _shares(rows, hits, lambda r: "band" if r["band"] else "on picture"),
            "by_size": _shares(rows, hits, lambda r: _size_bin(r["size"])),
            "by_tilt": _shares(rows, hits, lambda r: f"{abs(r['angle'])} deg"),
            "by_colour": _shares(rows, hits, lambda r: r["colour"]),
            "by_font": _shares(rows, hits, lambda r: r["font"]),
            "by_confidence": sweep,
            "cpu_s_per_image": round(cpu, 3), "wall_s_per_image": round(wall, 3)}


def part_sides(args) -> dict:
    from crossalign.index.ocr import MIN_CONFIDENCE, WordReader

    vocab = vocabulary(args.data, args.seed)[args.n:]  # none of part read's words
    out = args.out / "large"
    rows = make_set(args.data, out, args.large, args.seed + 1, vocab, (12, 48), enlarge=(2048, 1536))
    result = {"images": len(rows), "size": "2048x1536", "min_confidence": MIN_CONFIDENCE}
    for side in args.sides:
        found, cpu, wall = read_all(WordReader(max_side=side), out / "images", rows)
        hits = [_hit(words, row["word"], MIN_CONFIDENCE) for words, row in zip(found, rows)]
        result[f"max_side {side}"] = {
            "read": round(sum(hits) / len(hits), 3),
            "by_size": _shares(rows, hits, lambda r: _size_bin(r["size"])),
            "cpu_s_per_image": round(cpu, 3), "wall_s_per_image": round(wall, 3)}
        print(side, result[f"max_side {side}"], file=sys.stderr, flush=True)
    return result


def _recall_at_1(index: Path, rows: list[dict], mode: str) -> float:
    """The share of words whose picture comes first (the index opened once, as the service
    keeps it; ``crossalign.search`` would load the model for every query)."""
    from crossalign.index.search import open_index

    hits = 0
    ix = open_index(index, model=mode != "keyword")
    try:
        for row in rows:
            result = ix.search(query=row["word"], mode=mode, k=1)
            hits += bool(result.hits) and Path(result.hits[0].path).name == row["file"]
    finally:
        ix.close()
    return round(hits / len(rows), 3)


def part_index(args) -> dict:
    """Keyword and vector search for each image's word over an index built with OCR."""
    import crossalign

    with open(args.out / "truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    index = args.out / "index"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    first = crossalign.index(args.index, index, images=args.out / "images", ocr=True, progress=False)
    cpu, wall = (time.process_time() - cpu0) / len(rows), (time.perf_counter() - wall0) / len(rows)
    again = crossalign.index(args.index, index, progress=False)
    return {"images": len(rows), "index_cpu_s_per_image": round(cpu, 3),
            "index_wall_s_per_image": round(wall, 3), "ocr_read": first.ocr_read,
            "second_build_ocr_read": again.ocr_read,
            "keyword_recall_at_1": _recall_at_1(index, rows, "keyword"),
            "vector_recall_at_1": _recall_at_1(index, rows, "vector")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["read", "sides", "none"], default="read",
                    help="none: only the --index part, over a set part read made before")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/flickr8k"))
    ap.add_argument("--out", type=Path, required=True, help="where the pictures with words go")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--confidences", type=lambda s: [float(v) for v in s.split(",")],
                    default=[0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
    ap.add_argument("--large", type=int, default=60, help="part sides: how many enlarged photos")
    ap.add_argument("--sides", type=lambda s: [int(v) for v in s.split(",")],
                    default=[736, 1024, 1280, 1600, 2048])
    ap.add_argument("--index", type=Path, help="a run folder: also index the pictures and search them")
    args = ap.parse_args(argv)
    result = {"cores": os.cpu_count()}
    if args.part != "none":
        result[args.part] = part_read(args) if args.part == "read" else part_sides(args)
    if args.index:
        result["index"] = part_index(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
