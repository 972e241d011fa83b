"""Folder layouts: the canonical ``images/`` + ``captions.txt``, and images with sidecar ``.txt``.

Canonical (also the Kaggle Flickr8k download, whose folder is ``Images/``)::

    images/1000268201_693b08cb0e.jpg
    captions.txt          image,caption[,label,...]   one row per caption
    splits/train.txt      optional, one image file name per line (also val.txt, test.txt)

Sidecar: every image has a text file of the same stem beside it, one caption per line
(``photos/beach.jpg`` + ``photos/beach.txt``); a first folder named ``train``, ``val``
or ``test`` gives the split.
"""

from __future__ import annotations

from pathlib import Path

from crossalign.config import DataConfig
from crossalign.data.readers._base import (RowBuilder, add_csv_rows, column, csv_rows, read_text, resolve_separator)
from crossalign.data.transforms import IMAGE_EXTS, list_images
from crossalign.errors import DataError
from crossalign.data.splits import normalize_split, read_split_files
from crossalign.data.table import PairTable

__all__ = ["read_canonical", "read_sidecar", "canonical_image_dir", "looks_like_sidecar"]


def canonical_image_dir(root: Path, cfg: DataConfig) -> Path:
    """``images/`` (or ``Images/``, or ``cfg.image_dir``) of a canonical folder."""
    names = [cfg.image_dir] if cfg.image_dir else ["images", "Images"]
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root / names[0]}: images folder not found")


def read_canonical(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read ``images/`` + ``captions.txt`` (+ ``splits/``)."""
    root, cfg = Path(root), cfg or DataConfig()
    cap_path = root / "captions.txt"
    if not cap_path.is_file():
        raise DataError(f"{cap_path}: captions file not found")
    img_dir = canonical_image_dir(root, cfg)
    sep = resolve_separator(cfg.separator, read_text(cap_path).split("\n", 1)[0])
    rows = iter(csv_rows(cap_path, sep))
    _, header = next(rows, (0, None))
    if not header:
        raise DataError(f"{cap_path}: file is empty")
    ii = column(header, cfg.image_column, ["image"])
    ci = column(header, cfg.caption_column, ["caption"])
    if ii < 0 or ci < 0:
        raise DataError(f"{cap_path}: line 1: header must contain 'image' and 'caption', got {header}")
    splits = read_split_files(root / "splits")
    out = RowBuilder()
    add_csv_rows(out, rows, header, (ii, ci), sep, cap_path, lambda name: (img_dir / name, splits.get(name, "")))
    return out.finish(format="folder", root=str(root), image_dirs=[str(img_dir)])


def _sidecar_captions(txt: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a sidecar file with their line numbers."""
    return [(n, line) for n, line in enumerate(read_text(txt).splitlines(), 1) if line.strip()]


def looks_like_sidecar(root: Path) -> bool:
    """A folder where some image has a ``.txt`` of the same stem beside it."""
    for p in list_images(root)[:50]:
        if p.with_suffix(".txt").is_file():
            return True
    return False


def read_sidecar(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read a folder of images, each with a sidecar ``.txt`` (one caption per line)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: sidecar layout needs a folder")
    out = RowBuilder()
    images = list_images(root)
    stems = {p.with_suffix("") for p in images}
    uncaptioned: list[str] = []
    for img in images:
        rel = img.relative_to(root).as_posix()
        split = normalize_split(rel.split("/", 1)[0]) if "/" in rel else ""
        txt = img.with_suffix(".txt")
        captions = _sidecar_captions(txt) if txt.is_file() else []
        if not captions:
            uncaptioned.append(rel)
        for n, line in captions:
            out.add(rel, img, line, split, f"{txt}:{n}")
    for txt in sorted(root.rglob("*.txt")):
        if txt.with_suffix("") not in stems and txt.parent != root / "splits":
            out.skip("missing_image", str(txt), f"no image named {txt.stem}{{{','.join(IMAGE_EXTS)}}} beside it")
    return out.finish(format="sidecar", root=str(root), image_dirs=[str(root)], uncaptioned=uncaptioned)
