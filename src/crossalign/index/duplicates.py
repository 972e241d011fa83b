"""Duplicates in an index: true copies apart from near-copies.

A true duplicate is the same file content under another name (the same SHA-256, which every
build records). A near-duplicate is another file of the same picture, as people copy one:
downscaled, cropped, re-encoded, rotated a few degrees, colour-shifted. Candidate pairs come
from two spaces, each robust to some of those edits, and one check on the pixels confirms them:

1. candidates by difference hash (:func:`~crossalign.data.transforms.dhash`, 64 bits): each
   image's nearest ``neighbours`` by Hamming distance, at most ``max_hash_distance`` bits
   apart. A downscaled, re-encoded or colour-shifted copy stays within a few bits of its
   original, however small it is; a crop or a rotation moves it far;
2. candidates by image vector: each image's nearest ``neighbours`` at cosine ``threshold`` or
   more. A cropped or rotated copy stays near its original here, but where it lands depends on
   the run (its towers, its head, what it was trained on) and on the collection, and a
   heavily downscaled copy can land far: no fixed threshold holds for every index. By default
   the threshold is calibrated on the collection itself: a sample of its own images is copied
   in each of the ways above (:func:`plant_copy`), the copies the hash misses are embedded
   with the index's run, and the threshold is the lower end of their cosines to their
   originals (the lowest, or three standard deviations below their mean where that is
   lower);
3. the check: SIFT keypoints of the two pictures are matched, one similarity transform
   (shift, scale, rotation) is fitted to the matches with RANSAC, and the two pictures'
   grey levels, aligned by it, are correlated over their overlap. A copy correlates at
   ``min_correlation`` or more; two distinct pictures do not, even two shots of one scene a
   moment apart, or pictures a few of whose keypoints fit a transform by chance. The check
   depends on neither the run nor the collection.

The planted copies also measure the whole: the share of them found is the result's
``calibration.recall`` (figures on Flickr8k in bench/RESULTS.md). A mirrored copy is not
found: SIFT keypoints are not mirror-invariant.
"""

from __future__ import annotations

import base64
import functools
import html
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from crossalign._io import atomic_write_text
from crossalign.errors import ConfigError, ImageError
from crossalign.index.store import ImageRecord, IndexStore

__all__ = ["Duplicates", "PlantedCopies", "find_duplicates", "plant_copy", "write_duplicates_page",
           "KINDS", "MAX_HASH_DISTANCE", "MIN_CORRELATION"]

KINDS = ("half", "quarter", "crop", "jpeg", "rotate", "colour")  # the copies planted
MIN_CORRELATION = 0.9  # aligned copies correlate above this, distinct pictures below
MAX_HASH_DISTANCE = 10  # bits: copies of the kinds the hash holds stay well within this
NEIGHBOURS = 10
CALIBRATION_SAMPLE = 50  # images of the index copied to calibrate the threshold
SEED = 0  # which images are copied, and how: the same index gives the same threshold
BLOCK = 2048  # images compared against the rest at a time
SCORES_HELD = 50_000_000  # at most this many scores in memory at once (200 MB)
CHECK_SIDE = 256  # the check compares pictures with this longer side, in pixels
KEYPOINTS = 300  # the strongest kept: enough to align a copy; matching grows with their square
KEYPOINTS_HELD = 4096  # pictures whose keypoints are kept for their next pair (about 420 MB)
RATIO = 0.75  # Lowe's ratio test: a keypoint matches when clearly nearer one than the next
MIN_INLIERS = 6  # matches a transform must explain to be believed
MIN_OVERLAP = 0.3  # of the second picture the first must cover once aligned
BLUR = 2.0  # pixels (at CHECK_SIDE) of Gaussian blur: a quartered copy holds no finer detail


# ---- copies as people make them ------------------------------------------------------------------


def _straightened(im, degrees: float):
    """``im`` rotated by ``degrees`` and cropped to the largest centred rectangle of its shape
    that holds no corner, as a photo editor's straighten tool does."""
    from PIL import Image

    w, h = im.size
    a = math.radians(abs(degrees))
    keep = 1 / (math.cos(a) + math.sin(a) * max(w, h) / min(w, h))  # of each side
    cw, ch = max(1, int(w * keep)), max(1, int(h * keep))
    turned = im.rotate(degrees, Image.Resampling.BICUBIC)
    return turned.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def plant_copy(im, kind: str, rng: random.Random) -> bytes:
    """A copy of the PIL image ``im`` of one of :data:`KINDS`, as the bytes of a JPEG file:
    ``half`` and ``quarter`` (downscaled), ``crop`` (80-90 % of each side kept, anywhere),
    ``jpeg`` (quality 30-90), ``rotate`` (2-6 degrees, straightened) and ``colour``
    (brightness, contrast and saturation each shifted by up to 25 %). The others are saved at
    quality 90."""
    from PIL import Image, ImageEnhance

    from crossalign.data.transforms import jpeg_bytes

    w, h = im.size
    quality = 90
    if kind in ("half", "quarter"):
        f = 2 if kind == "half" else 4
        im = im.resize((max(1, w // f), max(1, h // f)), Image.Resampling.LANCZOS)
    elif kind == "crop":
        keep = rng.uniform(0.8, 0.9)
        cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
    elif kind == "jpeg":
        quality = rng.randint(30, 90)
    elif kind == "rotate":
        im = _straightened(im, rng.choice((-1, 1)) * rng.uniform(2, 6))
    elif kind == "colour":
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            im = enhancer(im).enhance(rng.uniform(0.75, 1.25))
    else:
        raise ValueError(f"no kind of copy {kind!r}; the kinds are {', '.join(KINDS)}")
    return jpeg_bytes(im.convert("RGB"), quality)


# ---- the check on the pixels ---------------------------------------------------------------------


@dataclass
class _Keypoints:
    """A picture as the check sees it."""

    grey: np.ndarray  # [h, w] uint8, blurred by BLUR, the longer side CHECK_SIDE
    points: np.ndarray  # [n, 2] float32, where the keypoints are
    descriptors: np.ndarray | None  # [n, 128] uint8 SIFT descriptors (whole numbers); None: none


def _keypoints(source) -> _Keypoints:
    """A file, file bytes or PIL image as the check sees it. Raises ``ImageError``."""
    import cv2
    from PIL import Image

    from crossalign.data.transforms import load_image

    im = load_image(source).convert("L")
    scale = CHECK_SIDE / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    grey = np.asarray(im.resize(size, Image.Resampling.BICUBIC))  # [h, w] uint8
    found, descriptors = cv2.SIFT_create(nfeatures=KEYPOINTS).detectAndCompute(grey, None)
    points = np.float32([k.pt for k in found]).reshape(-1, 2)
    small = None if descriptors is None else descriptors.astype(np.uint8)  # a quarter the memory
    return _Keypoints(cv2.GaussianBlur(grey, (0, 0), BLUR), points, small)


def _correlation(a: _Keypoints, b: _Keypoints) -> float:
    """How well ``a``, moved onto ``b`` by the similarity transform their matched keypoints
    fit, agrees with ``b``: the correlation of their grey levels over the overlap (0 when no
    transform is found, or the overlap is too small to say)."""
    import cv2

    if a.descriptors is None or b.descriptors is None or min(len(a.points), len(b.points)) < 2:
        return 0.0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors.astype(np.float32),
                                                b.descriptors.astype(np.float32), k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_INLIERS:
        return 0.0
    src = a.points[[m.queryIdx for m in good]]  # [m, 2]
    dst = b.points[[m.trainIdx for m in good]]  # [m, 2]
    transform, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                     ransacReprojThreshold=4.0)
    if transform is None or int(inliers.sum()) < MIN_INLIERS:
        return 0.0
    h, w = b.grey.shape
    grey = a.grey.astype(np.float32)
    moved = cv2.warpAffine(grey, transform, (w, h))  # [h, w]
    inside = cv2.warpAffine(np.ones_like(grey), transform, (w, h)) > 0.999
    if inside.mean() < MIN_OVERLAP:
        return 0.0
    x, y = moved[inside], b.grey[inside].astype(np.float32)
    x, y = x - x.mean(), y - y.mean()
    norm = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / norm if norm > 0 else 0.0


# ---- candidates ----------------------------------------------------------------------------------


def _neighbours_flat(vecs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows ``[n, k]`` and their inner products, exactly."""
    vecs = np.asarray(vecs, np.float32)  # a flat index's vectors: converted once
    step = max(1, min(BLOCK, SCORES_HELD // len(vecs)))
    rows, scores = [], []
    for s in range(0, len(vecs), step):
        block = vecs[s:s + step] @ vecs.T  # [b, n]
        block[np.arange(len(block)), s + np.arange(len(block))] = -np.inf  # not itself
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]  # [b, k], unordered
        rows.append(top)
        scores.append(np.take_along_axis(block, top, axis=1))
    return np.concatenate(rows), np.concatenate(scores)


def _neighbours_approximate(store: IndexStore, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows ``[n, k]`` (-1 where fewer were found) and their
    inner products, through the index's own search."""
    from crossalign.index.recall import apply_params, approximate_top, tuned_params

    index, vecs = store.faiss["images"], store.vectors["images"]
    params, rerank = tuned_params(store.info, "images")
    apply_params(index, params)
    rows, scores = [], []
    for s in range(0, len(vecs), BLOCK):
        q = np.asarray(vecs[s:s + BLOCK], np.float32)  # [b, dim]
        r, sc = approximate_top(index, vecs, q, k + 1, rerank)  # [b, k + 1], itself among them
        itself = r == (s + np.arange(len(q)))[:, None]
        order = np.argsort(itself, axis=1, kind="stable")[:, :k]  # itself last, then dropped
        rows.append(np.take_along_axis(r, order, axis=1))
        scores.append(np.take_along_axis(sc, order, axis=1))
    return np.concatenate(rows), np.concatenate(scores)


def _vector_pairs(rows: np.ndarray, scores: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, one among the other's nearest at ``threshold`` or more."""
    out = set()
    for i, j in zip(*np.nonzero(scores >= threshold)):  # a missing neighbour scores -inf
        out.add((min(int(i), int(rows[i, j])), max(int(i), int(rows[i, j]))))
    return out


def _hashes(records: list[ImageRecord]) -> dict[int, int]:
    """The difference hash of every image that can be read, by row."""
    from crossalign.data.transforms import dhash

    out = {}
    for r, im in enumerate(records):
        try:
            out[r] = dhash(im.path)
        except (ImageError, OSError):  # gone or unreadable since the build: not a candidate here
            pass
    return out


def _hash_pairs(hashes: dict[int, int], k: int, radius: int) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, one among the other's ``k`` nearest by Hamming distance
    and at most ``radius`` bits apart."""
    import faiss

    rows = np.array(sorted(hashes), np.int64)
    if len(rows) < 2:
        return set()
    codes = np.frombuffer(b"".join(hashes[r].to_bytes(8, "big") for r in rows.tolist()),
                          np.uint8).reshape(-1, 8)  # [n, 64 bits]
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    out = set()
    for s in range(0, len(rows), BLOCK):
        bits, near = index.search(codes[s:s + BLOCK], min(k + 1, len(rows)))  # [b, k + 1]
        for a, b in zip(*np.nonzero(bits <= radius)):
            i, j = int(rows[s + a]), int(rows[near[a, b]])
            if i != j:
                out.add((min(i, j), max(i, j)))
    return out


# ---- calibration ---------------------------------------------------------------------------------


class _Planted(NamedTuple):
    """One copy planted of one of the index's images."""

    row: int  # its original
    kind: str
    bits: int  # its difference hash's Hamming distance to its original's
    cosine: float | None  # to its original's vector; None: within the hash's reach, not embedded
    correlation: float  # the check's, with its original


@dataclass
class PlantedCopies:
    """How the candidate threshold was chosen: copies planted of a sample of the index's own
    images (one of each of :data:`KINDS`), embedded with its run where the hash misses them."""

    originals: int  # images of the index copied
    copies: int  # copies planted
    hashed: int  # copies within max_hash_distance bits of their original
    found: int  # copies within those bits or at or above the threshold, and confirmed
    lowest: dict[str, float]  # the lowest cosine to its original of a copy the hash misses,
    #                           per kind (a kind the hash never misses is not there)
    nearest_above: int  # originals whose nearest other image in the index is at or above the
    #                     threshold: a distinct picture, unless the collection holds a copy

    @property
    def recall(self) -> float:
        """The share of the planted copies found."""
        return self.found / self.copies if self.copies else 0.0

    def to_dict(self) -> dict:
        return {"originals": self.originals, "copies": self.copies, "hashed": self.hashed,
                "found": self.found, "recall": round(self.recall, 4),
                "nearest_above": self.nearest_above,
                "lowest": {k: round(v, 6) for k, v in self.lowest.items()}}


def _planted(records: list[ImageRecord], vecs, hashes: dict[int, int], embedder, sample: int,
             radius: int) -> list[_Planted]:
    """Copies planted of up to ``sample`` images, drawn with :data:`SEED`; the copies more than
    ``radius`` bits from their original are embedded, in batches, from a temporary folder.
    Images that cannot be read are passed over."""
    import tempfile

    from crossalign.data.transforms import dhash, load_image

    rng = random.Random(SEED)
    out, used = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        far = {}  # file of a copy the hash misses -> its place in out
        for row in rng.sample(sorted(hashes), len(hashes)):
            if used == sample:
                break
            try:
                im = load_image(records[row].path)
            except (ImageError, OSError):  # gone or unreadable since it was hashed
                continue
            seen = _keypoints(im)
            for kind in KINDS:
                copy = plant_copy(im, kind, rng)
                bits = bin(dhash(copy) ^ hashes[row]).count("1")
                if bits > radius:
                    far[f"{tmp}/{row}-{kind}.jpg"] = len(out)
                    Path(tmp, f"{row}-{kind}.jpg").write_bytes(copy)
                out.append(_Planted(row, kind, bits, None, _correlation(_keypoints(copy), seen)))
            used += 1
        if far:
            vectors, failed = embedder.images(list(far), progress=False)  # [n_ok, dim]
            for path, vector in zip([f for f in far if f not in failed], vectors):
                p = out[far[path]]
                original = np.asarray(vecs[p.row:p.row + 1], np.float32)[0]  # [dim]
                out[far[path]] = p._replace(cosine=float(vector @ original))
    return [p for p in out if p.bits <= radius or p.cosine is not None]  # none left unembedded


def _lower_end(values: list[float]) -> float:
    """How low such values go: the lowest seen, or three standard deviations below their mean
    where that is lower (the lowest of a sample is not the lowest of all); rounded down to
    0.001."""
    return math.floor(min(min(values), np.mean(values) - 3 * np.std(values)) * 1000) / 1000


def _calibrate(planted: list[_Planted], rows: np.ndarray, scores: np.ndarray,
               records: list[ImageRecord], radius: int,
               min_correlation: float) -> tuple[float, PlantedCopies]:
    """The threshold, the lower end of the cosines of the planted copies the hash misses
    (1.0 when it misses none), and what it finds."""
    missed = [p for p in planted if p.cosine is not None]
    threshold = _lower_end([p.cosine for p in missed]) if missed else 1.0
    nearest_above = 0
    for i in sorted({p.row for p in planted}):
        other = [s for r, s in zip(rows[i], scores[i])
                 if r >= 0 and records[r].content_hash != records[i].content_hash]
        nearest_above += int(bool(other) and max(other) >= threshold)
    lowest = {k: min(p.cosine for p in missed if p.kind == k) for k in KINDS
              if any(p.kind == k for p in missed)}
    found = sum(int((p.bits <= radius or p.cosine >= threshold)
                    and p.correlation >= min_correlation) for p in planted)
    return threshold, PlantedCopies(len({p.row for p in planted}), len(planted),
                                    len(planted) - len(missed), found, lowest, nearest_above)


# ---- the whole -----------------------------------------------------------------------------------


@dataclass
class Duplicates:
    """What :func:`find_duplicates` found, and how."""

    exact: list[list[ImageRecord]]  # groups of two or more images with the same content
    near: list[tuple[ImageRecord, ImageRecord, float, float]]  # pairs, cosine, correlation
    threshold: float  # cosine from which an image's neighbours are candidates
    max_hash_distance: int  # bits within which an image's neighbours by hash are candidates
    min_correlation: float  # the check's correlation from which a candidate is a copy
    neighbours: int  # each image's nearest this many, in either space, are its candidates
    candidates: int  # pairs from either space, before the check
    unchecked: int  # candidates not checked: a file gone or unreadable since the build
    images: int
    complete: bool  # the neighbours by vector were found exactly (flat index); else approximately
    calibration: PlantedCopies | None = None  # None: the threshold was given
    page: Path | None = field(default=None, compare=False)  # the HTML page, once written

    def summary(self) -> str:
        """How the near pairs were chosen, in a few sentences (the terminal and the page say it)."""
        how = "" if self.complete else ", approximately"
        text = (f"Candidates: each image's nearest {self.neighbours} by difference hash at most "
                f"{self.max_hash_distance} bits apart, and by image vector at cosine >= "
                f"{self.threshold:.3f}{how}: {self.candidates} pairs")
        c = self.calibration
        if c is None:
            text += " (the threshold given)."
        else:
            text += (f". The threshold is the lower end of the cosines to their originals of "
                     f"the copies the hash misses, among {c.copies} copies planted of "
                     f"{c.originals} of these images (halved, quartered, cropped, re-encoded, "
                     f"rotated, colour-shifted).")
        text += (f" A candidate is a near-duplicate when SIFT keypoints align the two pictures "
                 f"by one shift, scale and rotation and the aligned pictures correlate at >= "
                 f"{self.min_correlation:.2f}.")
        if c is not None:
            text += f" Of the planted copies, {c.found} ({c.recall:.1%}) are found so."
        if self.unchecked:
            text += (f" {self.unchecked} candidates could not be checked (a file gone or "
                     f"unreadable).")
        return text

    def to_dict(self) -> dict:
        def name(im: ImageRecord) -> dict:
            return {"id": im.id, "name": im.name}

        return {"images": self.images, "threshold": self.threshold,
                "max_hash_distance": self.max_hash_distance,
                "min_correlation": self.min_correlation, "neighbours": self.neighbours,
                "candidates": self.candidates, "unchecked": self.unchecked,
                "complete": self.complete,
                "calibration": None if self.calibration is None else self.calibration.to_dict(),
                "exact": [[name(im) for im in g] for g in self.exact],
                "near": [{"a": name(a), "b": name(b), "cosine": round(s, 6),
                          "correlation": round(c, 4)} for a, b, s, c in self.near]}


def _check_options(threshold: float | None, max_hash_distance: int, min_correlation: float,
                   neighbours: int, calibration_sample: int, embedder) -> None:
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"the near-duplicate `threshold` is a cosine similarity in [-1, 1], got "
                          f"{threshold}")
    if not 0 <= max_hash_distance <= 64:
        raise ConfigError(f"`max_hash_distance` counts bits of a 64-bit hash: 0 to 64, got "
                          f"{max_hash_distance}")
    if not 0.0 < min_correlation <= 1.0:
        raise ConfigError(f"`min_correlation` is a correlation in (0, 1], got {min_correlation}")
    if neighbours < 1 or calibration_sample < 1:
        raise ConfigError(f"`neighbours` and `calibration_sample` count images: at least 1, got "
                          f"{neighbours} and {calibration_sample}")
    if threshold is None and embedder is None:
        raise ConfigError("calibrating the near-duplicate threshold needs the index's run to "
                          "embed copies; give the run, or a `threshold`")


def _exact_groups(records: list[ImageRecord]) -> list[list[ImageRecord]]:
    groups: dict[str, list[ImageRecord]] = {}
    for im in records:
        groups.setdefault(im.content_hash, []).append(im)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0].id))


def _confirmed(pairs: list[tuple[int, int]], records: list[ImageRecord], vecs,
               min_correlation: float) -> tuple[list[tuple], int]:
    """The pairs the check confirms, as ``(a, b, cosine, correlation)``, and how many could
    not be checked."""

    @functools.lru_cache(maxsize=KEYPOINTS_HELD)
    def seen(r: int) -> _Keypoints | None:
        try:
            return _keypoints(records[r].path)
        except (ImageError, OSError):  # gone or unreadable since the build: cannot be checked
            return None

    near, unchecked = [], 0
    for i, j in pairs:
        a, b = seen(i), seen(j)
        if a is None or b is None:
            unchecked += 1
            continue
        c = _correlation(a, b)
        if c >= min_correlation:
            cosine = float(np.asarray(vecs[i], np.float32) @ np.asarray(vecs[j], np.float32))
            near.append((records[i], records[j], cosine, c))
    near.sort(key=lambda p: (-p[3], -p[2], p[0].id, p[1].id))
    return near, unchecked


def find_duplicates(store: IndexStore, threshold: float | None = None,
                    max_hash_distance: int = MAX_HASH_DISTANCE,
                    min_correlation: float = MIN_CORRELATION, neighbours: int = NEIGHBOURS,
                    embedder=None, calibration_sample: int = CALIBRATION_SAMPLE) -> Duplicates:
    """The true duplicates (same content hash) and near-duplicates of an index's images.

    Args:
        store: the index.
        threshold: cosine from which an image's neighbours by vector are candidates; None:
            calibrated on copies planted of ``calibration_sample`` of the index's images.
        max_hash_distance: bits within which an image's neighbours by difference hash are
            candidates.
        min_correlation: a candidate is a near-duplicate when the two pictures, aligned by
            their keypoints, correlate at this or more.
        neighbours: each image's nearest this many, in either space, are its candidates.
        embedder: the index's run (an :class:`~crossalign.index._vectors.Embedder`), which
            embeds the planted copies; needed only to calibrate.
        calibration_sample: images copied to calibrate.

    Pairs of true duplicates are not repeated among the near ones. Raises ``ConfigError``.
    """
    _check_options(threshold, max_hash_distance, min_correlation, neighbours, calibration_sample,
                   embedder)
    records = store.all_images()  # row order
    vecs = store.vectors["images"]
    complete = store.info["factory"]["images"] == "Flat"
    k = min(neighbours, len(records) - 1)
    rows, scores = np.zeros((len(records), 0), np.int64), np.zeros((len(records), 0), np.float32)
    if k > 0:
        rows, scores = _neighbours_flat(vecs, k) if complete else _neighbours_approximate(store, k)
    hashes = _hashes(records)
    calibration = None
    if threshold is None:
        planted = _planted(records, vecs, hashes, embedder, calibration_sample, max_hash_distance)
        if not planted:
            raise ConfigError(f"{store.root}: none of the index's images could be read to plant "
                              f"copies of; give a `threshold`")
        threshold, calibration = _calibrate(planted, rows, scores, records, max_hash_distance,
                                            min_correlation)
    pairs = _vector_pairs(rows, scores, threshold) | _hash_pairs(hashes, k, max_hash_distance)
    pairs = sorted((i, j) for i, j in pairs if records[i].content_hash != records[j].content_hash)
    near, unchecked = _confirmed(pairs, records, vecs, min_correlation)
    return Duplicates(_exact_groups(records), near, float(threshold), int(max_hash_distance),
                      float(min_correlation), neighbours, len(pairs), unchecked, len(records),
                      complete, calibration)


# ---- the page ------------------------------------------------------------------------------------


def _thumb(im: ImageRecord, size: int) -> str:
    from crossalign.data.transforms import jpeg_bytes, thumbnail

    try:
        data = jpeg_bytes(thumbnail(im.path, size))
    except Exception:  # noqa: BLE001 - a file gone or unreadable since the build: no picture
        return '<div class="gone">file not readable</div>'
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(data).decode()}" alt="">'


def _figure(im: ImageRecord, size: int) -> str:
    return (f"<figure>{_thumb(im, size)}<figcaption>#{im.id} {html.escape(im.name)}"
            f"</figcaption></figure>")


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330}
h2{margin-top:28px} .row{display:flex;gap:12px;align-items:center;margin:10px 0;
padding:8px;border:1px solid #d9dee7;border-radius:6px;background:#fff} figure{margin:0;width:160px}
img{width:160px;height:160px;object-fit:cover;border-radius:4px} figcaption{font-size:12px;
color:#667085;word-break:break-all} .score{font-weight:600;min-width:90px} body{background:#f7f8fa}
.gone{width:160px;height:160px;background:#eceff3;color:#667085;display:flex;align-items:center;
justify-content:center}"""


def write_duplicates_page(dup: Duplicates, path: str | Path, limit: int = 200, size: int = 160) -> Path:
    """One self-contained HTML page: the groups of true duplicates, then the near pairs (best
    aligned first), with thumbnails and how they were chosen; at most ``limit`` of each."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Duplicates</title>"
             f"<style>{_STYLE}</style></head><body><h1>Duplicates among {dup.images} images</h1>",
             f"<p>{len(dup.exact)} groups of true duplicates (the same file content), "
             f"{len(dup.near)} near-duplicate pairs.</p>",
             f"<p class='how'>{html.escape(dup.summary())}</p>", "<h2>True duplicates</h2>"]
    parts += [f"<div class='row exact'><span class='score'>{len(g)} copies</span>"
              + "".join(_figure(im, size) for im in g) + "</div>" for g in dup.exact[:limit]]
    if not dup.exact:
        parts.append("<p>none</p>")
    parts.append("<h2>Near-duplicates</h2>")
    parts += [f"<div class='row near'><span class='score'>cos {s:.4f}<br>corr {c:.3f}</span>"
              f"{_figure(a, size)}{_figure(b, size)}</div>" for a, b, s, c in dup.near[:limit]]
    if not dup.near:
        parts.append("<p>none</p>")
    if max(len(dup.exact), len(dup.near)) > limit:
        parts.append(f"<p>The first {limit} of each are shown; the JSON lists them all.</p>")
    parts.append("</body></html>")
    path = Path(path)
    atomic_write_text(path, "\n".join(parts))
    return path
