"""Near-duplicates found on a planted set of photos (``crossalign duplicates``).

``--images`` photos of a data set (1,000 of Flickr8k by default, drawn with ``--seed``) are
copied into a temporary folder (an index reads no link that leads out of its folder), and
every one of a sub-sample of ``--copied`` (100) gets one copy of each kind people make,
written beside them:

- ``half`` and ``quarter``: downscaled to 1/2 and 1/4, JPEG quality 80-95;
- ``crop``: 80-90 % of each side kept, anywhere in the picture, JPEG quality 80-95;
- ``jpeg``: re-encoded at quality 30-90;
- ``rotate``: turned 1-6 degrees either way, corners filled black (half of them) or cropped
  away (the other half), JPEG quality 80-95;
- ``colour``: brightness, contrast and saturation each shifted by up to 30 %, hue turned by up
  to 10 degrees (half of them), JPEG quality 80-95.

These copies are made here, with their own random draws and somewhat wider ranges than the
copies ``crossalign duplicates`` plants to calibrate, so that the calibration is not measured
on its own copies. For each ``--run`` the folder is indexed with the run (``crossalign.index``)
and ``crossalign.duplicates`` runs on it with its defaults (or ``--threshold``,
``--min-correlation``). A copy is found when the pair (copy, its original) is reported; a
reported pair is true when both are pictures of one original. It prints one JSON object per
run: copies found per kind, recall, precision, the false pairs, candidates, the calibration,
the seconds taken (wall clock, and the CPU time of all the process's threads) and where the
copies land in each space.

    python bench/bench_duplicates.py --data ../shared/data/flickr8k --run runs/f8k \\
        --run runs/f8k-other --out /tmp/dups-bench
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

KINDS = ("half", "quarter", "crop", "jpeg", "rotate", "colour")


def _hue(im, degrees: float):
    """``im`` with its hue turned by ``degrees``."""
    import numpy as np
    from PIL import Image

    hsv = np.asarray(im.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _rotated(im, rng: random.Random):
    from PIL import Image

    degrees = rng.choice((-1, 1)) * rng.uniform(1, 6)
    turned = im.rotate(degrees, Image.Resampling.BICUBIC)  # corners black
    if rng.random() < 0.5:
        return turned
    w, h = im.size
    cut = 0.5 * abs(degrees) / 45  # enough to lose the corners at these angles
    return turned.crop((int(w * cut), int(h * cut), w - int(w * cut), h - int(h * cut)))


def copy_of(im, kind: str, rng: random.Random):
    """``(picture, JPEG quality)``: a copy of ``im`` of one kind."""
    from PIL import Image, ImageEnhance

    w, h = im.size
    quality = rng.randint(80, 95)
    if kind in ("half", "quarter"):
        f = 2 if kind == "half" else 4
        im = im.resize((w // f, h // f), rng.choice([Image.Resampling.LANCZOS,
                                                     Image.Resampling.BILINEAR]))
    elif kind == "crop":
        keep_w, keep_h = rng.uniform(0.8, 0.9), rng.uniform(0.8, 0.9)
        cw, ch = round(w * keep_w), round(h * keep_h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
    elif kind == "jpeg":
        quality = rng.randint(30, 90)
    elif kind == "rotate":
        im = _rotated(im, rng)
    elif kind == "colour":
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            im = enhancer(im).enhance(rng.uniform(0.7, 1.3))
        if rng.random() < 0.5:
            im = _hue(im, rng.uniform(-10, 10))
    return im, quality


def plant(data: Path, folder: Path, n: int, copied: int, seed: int) -> dict[str, str]:
    """Copy ``n`` photos of ``data`` into ``folder`` and write copies of ``copied`` of them;
    ``{name in the folder: name of its original}`` for every picture."""
    from PIL import Image

    rng = random.Random(seed)
    photos = sorted((data / "images").glob("*.jpg"))
    chosen = rng.sample(photos, n)
    (folder / "copies").mkdir(parents=True)
    truth = {}
    for p in chosen:
        shutil.copyfile(p, folder / p.name)
        truth[p.name] = p.name
    for p in rng.sample(chosen, copied):
        with Image.open(p) as im:
            im = im.convert("RGB")
            for kind in KINDS:
                copy, quality = copy_of(im, kind, rng)
                name = f"copies/{p.stem}.{kind}.jpg"
                copy.save(folder / name, quality=quality)
                truth[name] = p.name
    return truth


def _spaces(idx: Path, truth: dict[str, str]) -> dict:
    """Where the copies land in each space: per kind, the cosine to the original (1 % and 50 %
    quantiles), the difference hash's bits apart (50 % and most) and the check's correlation
    (least); for distinct pictures, the pairs at most 10 bits apart and each original's nearest
    cosine to another picture (50 % and 99 %)."""
    import numpy as np

    from crossalign.data.transforms import dhash
    from crossalign.index.duplicates import _correlation, _keypoints
    from crossalign.index.store import IndexStore

    store = IndexStore(idx)
    records = store.all_images()
    vecs = np.asarray(store.vectors["images"], np.float32)
    store.close()
    row = {im.name: r for r, im in enumerate(records)}
    group = np.array([truth[im.name] for im in records])
    hashes = np.array([dhash(im.path) for im in records], np.uint64)
    out = {}
    for kind in KINDS:
        pairs = [(row[n], row[o]) for n, o in truth.items() if n.endswith(f".{kind}.jpg")]
        cos = [float(vecs[a] @ vecs[b]) for a, b in pairs]
        bits = [bin(int(hashes[a] ^ hashes[b])).count("1") for a, b in pairs]
        corr = [_correlation(_keypoints(records[a].path), _keypoints(records[b].path))
                for a, b in pairs]
        out[kind] = {"cosine_p1": round(float(np.percentile(cos, 1)), 3),
                     "cosine_p50": round(float(np.median(cos)), 3),
                     "bits_p50": float(np.median(bits)), "bits_max": max(bits),
                     "correlation_min": round(min(corr), 3)}
    close, total = 0, 0
    for r in range(len(records)):  # distinct pairs (r, later rows), popcount by bytes
        x = (hashes[r] ^ hashes[r + 1:]).view(np.uint8).reshape(-1, 8)
        bits = np.unpackbits(x, axis=1).sum(1)
        other = group[r + 1:] != group[r]
        close += int((bits[other] <= 10).sum())
        total += int(other.sum())
    scores = vecs @ vecs.T  # [n, n]
    scores[group[:, None] == group[None, :]] = -np.inf  # the picture itself and its copies
    nearest = scores[[row[n] for n, o in truth.items() if n == o]].max(1)
    out["distinct"] = {"pairs": total, "within_10_bits": close,
                       "nearest_cosine_p50": round(float(np.median(nearest)), 3),
                       "nearest_cosine_p99": round(float(np.percentile(nearest, 99)), 3)}
    return out


def measure(run: str, folder: Path, truth: dict[str, str], work: Path, threshold: float | None,
            min_correlation: float) -> dict:
    """Index ``folder`` with ``run``, find its duplicates, score them against ``truth``."""
    import crossalign

    idx = work / f"index-{Path(run).name}"
    start = time.perf_counter()
    crossalign.index(run, idx, images=folder, progress=False)
    indexed = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    dup = crossalign.duplicates(idx, threshold=threshold, min_correlation=min_correlation)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    pairs = {frozenset((a.name, b.name)): (s, c) for a, b, s, c in dup.near}
    copies = [name for name in truth if name.startswith("copies/")]
    found = {k: 0 for k in KINDS}
    for name in copies:
        found[name.split(".")[-2]] += frozenset((name, truth[name])) in pairs
    false = sorted(([sorted(p), round(s, 4), round(c, 3)] for p, (s, c) in pairs.items()
                    if len({truth[n] for n in p}) > 1), key=lambda f: -f[2])
    return {"run": run, "images": dup.images, "copies": len(copies),
            "found": found, "recall": round(sum(found.values()) / len(copies), 4),
            "near_pairs": len(pairs), "precision": round(1 - len(false) / max(len(pairs), 1), 4),
            "false_pairs": false[:10], "exact_groups": len(dup.exact),
            "candidates": dup.candidates, "threshold": dup.threshold,
            "calibration": None if dup.calibration is None else dup.calibration.to_dict(),
            "seconds": {"index": round(indexed, 1), "duplicates": round(took, 1),
                        "duplicates_cpu": round(cpu, 1)},
            "spaces": _spaces(idx, truth)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/flickr8k", help="data set with images/")
    ap.add_argument("--run", action="append", required=True, help="a run folder (repeatable)")
    ap.add_argument("--out", help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--images", type=int, default=1000, help="photos in the collection")
    ap.add_argument("--copied", type=int, default=100, help="photos given one copy of each kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=None,
                    help="a fixed candidate threshold in place of the calibrated one")
    ap.add_argument("--min-correlation", type=float, default=0.9,
                    help="the check's correlation from which a pair is a copy")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        folder = work / "photos"
        truth = plant(Path(args.data), folder, args.images, args.copied, args.seed)
        for run in args.run:
            print(json.dumps(measure(run, folder, truth, work, args.threshold,
                                     args.min_correlation)), flush=True)


if __name__ == "__main__":
    main()
