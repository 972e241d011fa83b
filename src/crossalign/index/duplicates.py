"""Duplicates in an index: true copies apart from near-copies.

A true duplicate is the same file content under another name (the same SHA-256, which every
build records). A near-duplicate is another file of nearly the same picture: re-encoded,
resized, lightly cropped or retouched. Two steps find those, as duplicate finders in the field
do (candidates from embeddings, a check on the pixels):

1. candidates: pairs whose image vectors are at least ``threshold`` apart in cosine
   similarity, compared through the index itself (exactly for a flat index: every pair above
   the threshold; through each image's nearest ``neighbours`` for an approximate one). An
   aligned space puts two photos of the same kind of scene close too, so this alone would
   call them duplicates;
2. the check: the pretrained model's difference hashes (:func:`~crossalign.data.transforms.dhash`, 64
   bits) differ in at most ``max_hash_distance`` bits. Another picture differs in about 32.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossalign._io import atomic_write_text
from crossalign.errors import ConfigError
from crossalign.index.store import ImageRecord, IndexStore

__all__ = ["Duplicates", "find_duplicates", "write_duplicates_page", "NEAR_THRESHOLD"]

NEAR_THRESHOLD = 0.9
MAX_HASH_DISTANCE = 10
BLOCK = 2048  # images compared against the rest at a time


@dataclass
class Duplicates:
    """What :func:`find_duplicates` found."""

    exact: list[list[ImageRecord]]  # groups of two or more images with the same content
    near: list[tuple[ImageRecord, ImageRecord, float, int]]  # pairs, cosine, hash distance
    threshold: float
    max_hash_distance: int
    candidates: int  # pairs above the threshold, before the check on the pixels
    images: int
    complete: bool  # every pair was compared (flat index); else each image's neighbours
    page: Path | None = None  # the HTML page of them, once written

    def to_dict(self) -> dict:
        def name(im: ImageRecord) -> dict:
            return {"id": im.id, "name": im.name}

        return {"images": self.images, "threshold": self.threshold,
                "max_hash_distance": self.max_hash_distance, "candidates": self.candidates,
                "complete": self.complete, "exact": [[name(im) for im in g] for g in self.exact],
                "near": [{"a": name(a), "b": name(b), "cosine": round(s, 6), "hash_distance": d}
                         for a, b, s, d in self.near]}


def _pairs_flat(vecs: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair of rows ``i < j`` whose vectors' inner product is at least ``threshold``."""
    out = []
    vecs = np.asarray(vecs, np.float32)  # a flat index's vectors: converted once
    for s in range(0, len(vecs), BLOCK):
        block = vecs[s:s + BLOCK]  # [b, dim]
        scores = block @ vecs[s:].T  # [b, n - s]: later rows only, each pair once
        i, j = np.nonzero(scores >= threshold)
        keep = j > i  # j indexes rows from s on; i < j is the upper triangle
        out += [(s + a, s + b, float(scores[a, b])) for a, b in zip(i[keep], j[keep])]
    return out


def _pairs_approximate(store: IndexStore, threshold: float, neighbours: int) -> list[tuple[int, int, float]]:
    from crossalign.index.recall import apply_params, approximate_top, tuned_params

    index, vecs = store.faiss["images"], store.vectors["images"]
    params, rerank = tuned_params(store.info, "images")
    apply_params(index, params)
    out = set()
    for s in range(0, len(vecs), BLOCK):
        q = np.asarray(vecs[s:s + BLOCK], np.float32)
        rows, scores = approximate_top(index, vecs, q, neighbours + 1, rerank)
        for a, (rr, ss) in enumerate(zip(rows, scores)):
            for r, sc in zip(rr, ss):
                if r >= 0 and r != s + a and sc >= threshold:
                    out.add((min(s + a, int(r)), max(s + a, int(r)), float(sc)))
    return sorted(out)


def _hashes(records: list[ImageRecord], rows: set[int]) -> dict[int, int | None]:
    from crossalign.data.transforms import dhash
    from crossalign.errors import ImageError

    out: dict[int, int | None] = {}
    for r in sorted(rows):
        try:
            out[r] = dhash(records[r].path)
        except (ImageError, OSError):  # gone or unreadable since the build: cannot be checked
            out[r] = None
    return out


def find_duplicates(store: IndexStore, threshold: float = NEAR_THRESHOLD,
                    max_hash_distance: int = MAX_HASH_DISTANCE, neighbours: int = 10) -> Duplicates:
    """The true duplicates (same content hash) and near-duplicates (image vectors at least
    ``threshold`` apart in cosine, and difference hashes at most ``max_hash_distance`` bits
    apart) of an index's images.

    Pairs of true duplicates are not repeated among the near ones.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"the near-duplicate threshold is a cosine similarity in [-1, 1], got "
                          f"{threshold}")
    records = store.all_images()  # row order
    groups: dict[str, list[ImageRecord]] = {}
    for im in records:
        groups.setdefault(im.content_hash, []).append(im)
    exact = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0].id))
    complete = store.info["factory"]["images"] == "Flat"
    vecs = store.vectors["images"]
    pairs = (_pairs_flat(vecs, threshold) if complete
             else _pairs_approximate(store, threshold, neighbours))
    pairs = [(i, j, s) for i, j, s in pairs if records[i].content_hash != records[j].content_hash]
    hashes = _hashes(records, {r for i, j, _ in pairs for r in (i, j)})
    near = []
    for i, j, s in pairs:
        if hashes[i] is not None and hashes[j] is not None:
            d = bin(hashes[i] ^ hashes[j]).count("1")
            if d <= max_hash_distance:
                near.append((records[i], records[j], s, d))
    near.sort(key=lambda p: (p[3], -p[2], p[0].id, p[1].id))
    return Duplicates(exact, near, float(threshold), int(max_hash_distance), len(pairs),
                      len(records), complete)


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
    """One self-contained HTML page: the groups of true duplicates, then the near pairs (most
    similar first), with thumbnails; at most ``limit`` of each."""
    how = ("every pair compared" if dup.complete
           else "each image against its nearest neighbours (approximate index)")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Duplicates</title>"
             f"<style>{_STYLE}</style></head><body><h1>Duplicates among {dup.images} images</h1>",
             f"<p>{len(dup.exact)} groups of true duplicates (the same file content), "
             f"{len(dup.near)} near-duplicate pairs: of the {dup.candidates} pairs whose image "
             f"vectors are at cosine &ge; {dup.threshold:.3f} ({how}), those whose difference "
             f"hashes differ in at most {dup.max_hash_distance} of 64 bits.</p>",
             "<h2>True duplicates</h2>"]
    parts += [f"<div class='row exact'><span class='score'>{len(g)} copies</span>"
              + "".join(_figure(im, size) for im in g) + "</div>" for g in dup.exact[:limit]]
    if not dup.exact:
        parts.append("<p>none</p>")
    parts.append("<h2>Near-duplicates</h2>")
    parts += [f"<div class='row near'><span class='score'>cos {s:.4f}<br>{d} bits</span>"
              f"{_figure(a, size)}{_figure(b, size)}</div>" for a, b, s, d in dup.near[:limit]]
    if not dup.near:
        parts.append("<p>none</p>")
    if max(len(dup.exact), len(dup.near)) > limit:
        parts.append(f"<p>The first {limit} of each are shown; the JSON lists them all.</p>")
    parts.append("</body></html>")
    path = Path(path)
    atomic_write_text(path, "\n".join(parts))
    return path
