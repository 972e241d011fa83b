"""The layouts public caption benchmarks ship in: Flickr8k/30k token files, Karpathy JSON, COCO JSON.

- Flickr token file: ``Flickr8k.token.txt`` lines ``image.jpg#n<TAB>caption``, with
  ``Flickr_8k.{train,dev,test}Images.txt`` beside it (dev is our val) and the photos in
  ``Flicker8k_Dataset/`` (the original spelling), ``Flickr8k_Dataset/`` or ``images/``.
- Karpathy split JSON (``dataset_flickr8k.json``, ``dataset_coco.json``): ``images``, each with
  ``filename``, optional ``filepath``, ``split`` (restval is train) and ``sentences[].raw``.
- COCO captions JSON (``captions_train2014.json``): ``images`` (``id``, ``file_name``) and
  ``annotations`` (``image_id``, ``caption``); the split comes from the file name and the
  photos from the folder of the same tag (``train2014/``) or ``images/``.

Rows of the JSON formats are named ``file.json:images[i].sentences[j]`` or
``file.json:annotations[k]`` in messages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from crossalign.config import DataConfig
from crossalign.data.readers._base import RowBuilder, find_image_root, read_text
from crossalign.errors import DataError
from crossalign.data.splits import split_from_name
from crossalign.data.table import PairTable

__all__ = ["read_flickr_token", "read_karpathy", "read_coco", "find_token_file", "json_files", "load_json"]

_TOKEN_LINE = re.compile(r"^(\S+?)#(\d+)\s+(.*)$", re.S)
_PHOTO_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset",
               "flickr30k-images", "flickr30k_images", "images", "Images")


def load_json(path: Path) -> object:
    """Parse a JSON file; a syntax error names the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def _image_candidates(base: Path, cfg: DataConfig, extra: tuple[str, ...] = ()) -> list[Path]:
    user = [base / cfg.image_dir, base.parent / cfg.image_dir] if cfg.image_dir else []
    near = [b / d for b in (base, base.parent) for d in (*extra, *_PHOTO_DIRS)]
    return user + near + [base, base.parent]


def find_token_file(root: Path) -> Path | None:
    """``Flickr8k.token.txt`` (or a Flickr30k ``*.token``) in ``root`` or one folder below."""
    if root.is_file():
        return root
    for pattern in ("*.token.txt", "*.token", "*/*.token.txt", "*/*.token"):
        found = sorted(p for p in root.glob(pattern) if "lemma" not in p.name.lower())
        if found:
            return found[0]
    return None


def read_flickr_token(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read the original Flickr8k (or Flickr30k) token file with its split files."""
    root, cfg = Path(root), cfg or DataConfig()
    token = find_token_file(root)
    if token is None:
        raise DataError(f"{root}: no Flickr token file (Flickr8k.token.txt) found")
    parsed = []
    out = RowBuilder()
    for n, line in enumerate(read_text(token).splitlines(), 1):
        if not line.strip():
            continue
        m = _TOKEN_LINE.match(line.strip())
        if not m:
            out.skip("bad_row", f"{token}:{n}", "expected 'image.jpg#n<TAB>caption'")
            continue
        parsed.append((n, m.group(1), m.group(3)))
    base = root if root.is_dir() else token.parent
    img_dir = find_image_root(_image_candidates(base, cfg) + _image_candidates(token.parent, cfg),
                              [name for _, name, _ in parsed[:20:5]])
    splits: dict[str, str] = {}
    for f in sorted(token.parent.glob("*Images.txt")):
        if split_from_name(f.name):
            splits.update(dict.fromkeys(read_text(f).split(), split_from_name(f.name)))
    for n, name, caption in parsed:
        out.add(name, img_dir / name, caption, splits.get(name, ""), f"{token}:{n}")
    return out.finish(format="flickr8k", root=str(root), image_dirs=[str(img_dir)])


def json_files(root: Path, key: str, name_glob: str) -> list[Path]:
    """JSON files at ``root``: the file itself, or those of a folder (and its ``annotations/``)
    named like ``name_glob`` or holding ``"key"`` near their start."""
    if root.is_file():
        return [root]
    found = []
    for p in sorted({*root.glob("*.json"), *root.glob("annotations/*.json")}):
        if p.match(name_glob):
            found.append(p)
            continue
        try:
            with open(p, "rb") as f:
                head = f.read(1 << 16).decode("utf-8", errors="replace")
        except OSError:
            continue
        if f'"{key}"' in head:
            found.append(p)
    return found


def _sentences(entry: dict) -> list[str]:
    out = []
    for s in entry.get("sentences") or []:
        if isinstance(s, dict):
            out.append(s.get("raw") if s.get("raw") is not None else " ".join(s.get("tokens") or []))
        else:
            out.append(str(s))
    return out


def read_karpathy(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read Karpathy split JSON (``dataset_flickr8k.json``, ``dataset_coco.json``)."""
    root, cfg = Path(root), cfg or DataConfig()
    files = json_files(root, "sentences", "dataset_*.json")
    if not files:
        raise DataError(f"{root}: no Karpathy split JSON (dataset_*.json) found")
    out, roots = RowBuilder(), []
    for path in files:
        data = load_json(path)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{path}: expected an object with an 'images' list (Karpathy split JSON)")
        rel = [f"{e.get('filepath', '')}/{e.get('filename', '')}".lstrip("/") for e in images if isinstance(e, dict)]
        img_root = find_image_root(_image_candidates(path.parent, cfg), rel[:20:5])
        roots.append(str(img_root))
        for i, entry in enumerate(images):
            where = f"{path}:images[{i}]"
            if not isinstance(entry, dict) or not entry.get("filename"):
                out.skip("bad_row", where, "image entry without 'filename'")
                continue
            name = str(entry["filename"])
            img = img_root / str(entry.get("filepath") or "") / name
            label = {"cocoid": entry["cocoid"]} if "cocoid" in entry else {}
            for j, caption in enumerate(_sentences(entry)):
                out.add(name, img, caption, str(entry.get("split", "")), f"{where}.sentences[{j}]", **label)
    return out.finish(format="karpathy", root=str(root), image_roots=list(dict.fromkeys(roots)))


def _coco_file(path: Path, cfg: DataConfig, out: RowBuilder, uncaptioned: list[str]) -> None:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: expected an object with 'images' and 'annotations' lists (COCO captions)")
    by_id = {e.get("id"): str(e.get("file_name", "")) for e in data["images"] if isinstance(e, dict)}
    tag = path.stem.split("_", 1)[-1]  # captions_train2014 -> train2014
    names = [n for n in by_id.values() if n]
    img_root = find_image_root(_image_candidates(path.parent, cfg, (tag, f"images/{tag}")), names[:20:5])
    out.image_roots.append(str(img_root))
    split = split_from_name(path.name)
    seen = set()
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}:annotations[{k}]"
        name = by_id.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if not name:
            out.skip("missing_image", where, f"image id {ann.get('image_id') if isinstance(ann, dict) else '?'} "
                                             f"is not in 'images'")
            continue
        seen.add(name)
        out.add(name, img_root / name, ann.get("caption"), split, where, coco_id=ann.get("image_id"))
    uncaptioned += [n for n in names if n not in seen]


def read_coco(root: str | Path, cfg: DataConfig | None = None) -> PairTable:
    """Read COCO captions JSON (one file, or every ``captions_*.json`` of a folder)."""
    root, cfg = Path(root), cfg or DataConfig()
    files = json_files(root, "annotations", "captions_*.json")
    if not files:
        raise DataError(f"{root}: no COCO captions JSON (captions_*.json) found")
    out, uncaptioned = RowBuilder(), []
    for path in files:
        _coco_file(path, cfg, out, uncaptioned)
    return out.finish(format="coco", root=str(root), uncaptioned=uncaptioned,
                      image_roots=list(dict.fromkeys(out.image_roots)))
