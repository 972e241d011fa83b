"""Zero-shot classification: label values become text prompts; each image takes the nearest one.

Any label column a reader kept (``PairTable.labels``) works: genres of movie posters, the
colour of a shape. Several templates are averaged per class, as CLIP does: each prompt
embedding is L2-normalised, the mean over templates is normalised again.

Multi-label items. A label value may hold several classes separated by ``|``
("Action|Comedy"); the classes of an image are the union over its caption rows. Such an
item counts once in the accuracy and is a hit when its top-ranked class is any of its own
classes (as an image query hits when any of its captions is in the top K). In per-class
accuracy it counts under each of its classes, with that same hit, and in the confusion
matrix it adds one to the row of each of its classes, in the column of the predicted class.
Ties count against the item, as in retrieval: a wrong class scoring the same as the best
correct one wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from crossalign.errors import ConfigError
from crossalign.errors import DataError
from crossalign.data.table import PairTable
from crossalign.evaluate.chance import rank_distribution

__all__ = ["zeroshot", "split_labels", "image_classes", "class_embeddings", "classification_metrics",
           "DEFAULT_TEMPLATES", "MULTI_LABEL_POLICY"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)
MULTI_LABEL_POLICY = ("a value may hold several classes separated by '|'; an item is a hit when its "
                      "top-ranked class is any of its classes; per-class accuracy and the confusion "
                      "matrix count the item under each of its classes")


def split_labels(value: object, sep: str = "|") -> list[str]:
    """The classes in one label value (``None`` or blank: none)."""
    if value is None:
        return []
    return [p.strip() for p in str(value).split(sep) if p.strip()]


def image_classes(table: PairTable, column: str, sep: str = "|") -> dict[str, list[str]]:
    """Image id -> its classes in ``column`` (union over the image's rows, first-seen order)."""
    if column not in table.labels:
        raise ConfigError(f"label column {column!r} not in the data; available: {sorted(table.labels) or 'none'}")
    out: dict[str, list[str]] = {}
    for iid, value in zip(table.image_id, table.labels[column]):
        have = out.setdefault(iid, [])
        have.extend(c for c in split_labels(value, sep) if c not in have)
    return out


def class_embeddings(encode: Callable[[list[str]], np.ndarray], classes: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
    """``[n_classes, dim]``: the normalised mean over templates of the normalised prompt embeddings."""
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ConfigError(f"every template needs a '{{}}' where the class name goes, got {bad or list(templates)}")
    per_template = []
    for t in templates:
        emb = encode([t.replace("{}", c) for c in classes])  # [n_classes, dim]
        per_template.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    mean = np.mean(per_template, axis=0)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def _truth(item_classes: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    is_true = np.zeros((len(item_classes), n_classes), dtype=bool)  # [n_items, n_classes]
    for i, cs in enumerate(item_classes):
        if not cs:
            raise ValueError(f"item {i} has no class")
        is_true[i, list(cs)] = True
    return is_true


def classification_metrics(scores: np.ndarray, item_classes: Sequence[Sequence[int]], classes: Sequence[str],
                           ks: Sequence[int] = (1, 5)) -> dict:
    """Accuracy (top-K), per-class accuracy, confusion matrix and chance, in percent.

    Args:
        scores: ``[n_items, n_classes]`` similarity of each item to each class.
        item_classes: per item, the indices of its classes (one or more).
        classes: class names, in column order.
        ks: the K of top-K accuracy (K >= the number of classes is left out).
    """
    n, c = scores.shape
    is_true = _truth(item_classes, c)
    best_true = np.where(is_true, scores, -np.inf).max(1, keepdims=True)  # [n, 1]
    rank = 1 + ((scores >= best_true) & ~is_true).sum(1)  # [n] rank of the best correct class
    wrong_top = (scores >= scores.max(1, keepdims=True)) & ~is_true  # wrong classes tied at the top
    pred = np.where(wrong_top.any(1), wrong_top.argmax(1), scores.argmax(1))  # [n]
    hit = rank == 1
    m = is_true.sum(1)
    out: dict = {"n_items": n, "n_classes": c, "multi_label_items": int((m > 1).sum()),
                 "accuracy": float(100 * hit.mean())}
    chance: dict = {"accuracy": float(100 * np.mean(m / c))}
    for k in ks:
        if 1 < k < c:
            out[f"top{k}_accuracy"] = float(100 * np.mean(rank <= k))
            dist = {int(j): rank_distribution(c, int(j))[:k].sum() for j in np.unique(m)}
            chance[f"top{k}_accuracy"] = float(100 * np.mean([dist[int(j)] for j in m]))
    per_class = {}
    for j, name in enumerate(classes):
        rows = is_true[:, j]
        per_class[name] = {"n": int(rows.sum()),
                           "accuracy": float(100 * hit[rows].mean()) if rows.any() else None}
    seen = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    out["mean_per_class_accuracy"] = float(np.mean(seen))
    out["chance"] = chance
    out["per_class"] = per_class
    confusion = np.zeros((c, c), dtype=np.int64)  # [true, predicted]
    for t in range(c):
        confusion[t] = np.bincount(pred[is_true[:, t]], minlength=c)
    out["confusion"] = confusion.tolist()
    return out


def zeroshot(run: str | Path, data: str | Path, label_column: str, templates: Sequence[str] = DEFAULT_TEMPLATES,
             split: str = "test", which: str = "best", device: str = "cpu", progress: bool = True,
             classes: Sequence[str] | None = None, sep: str = "|", pretrained_weights: str = "") -> dict:
    """Zero-shot classification of the images of ``split`` by the values of ``label_column``.

    ``run`` is a run folder, or a pretrained model (``hf:FOLDER``, ``open_clip:NAME`` with
    ``pretrained_weights``) as it is, before any training, on the data's own split.

    Args:
        templates: prompts with ``{}`` where the class name goes; their embeddings are averaged.
        classes: the candidate classes (default: every class in the column, all splits).
        sep: separator of several classes in one label value.
    """
    from crossalign.embed.collection import embed_image_files
    from crossalign.runs import encode_texts, open_run, select_split

    rd = open_run(run, data, which, device, pretrained_weights=pretrained_weights)
    by_image = image_classes(rd.table, label_column, sep)  # whole table: every class is a candidate
    names = list(classes) if classes else sorted({c for cs in by_image.values() for c in cs})
    if len(names) < 2:
        raise ConfigError(f"label column {label_column!r} has {len(names)} class(es); need at least 2")
    col = {name: j for j, name in enumerate(names)}
    sub = select_split(rd.table, split)
    labelled = [i for i in dict.fromkeys(sub.image_id) if any(c in col for c in by_image.get(i, []))]
    unlabelled = len(set(sub.image_id)) - len(labelled)
    keep = set(labelled)
    sub = sub.take(k for k, i in enumerate(sub.image_id) if i in keep)
    if len(sub) == 0:
        raise DataError(f"no image of the {split!r} split has a label in {label_column!r} among the classes")
    all_ids, paths = sub.images()
    vec = embed_image_files(rd.model, paths, cache_root=rd.cache_root, device=device, progress=progress,
                       batch_size=rd.cfg.runtime.eval_batch_size, max_pixels=rd.cfg.data.max_pixels,
                       workers=rd.cfg.runtime.num_workers)
    readable = set(vec.paths)
    ids = [i for i, p in zip(all_ids, paths) if p in readable]
    img, failed = vec.vectors, vec.failed
    text = class_embeddings(lambda t: encode_texts(rd.model, t, device, rd.cfg.runtime.eval_batch_size),
                            names, templates)
    scores = img @ text.T  # [n_images, n_classes]
    item_classes = [[col[c] for c in by_image[i] if c in col] for i in ids]
    out = {"label_column": label_column, "split": split, "templates": list(templates), "classes": names}
    out.update(classification_metrics(scores, item_classes, names))
    out["skipped_items"] = {"no_label": unlabelled, "unreadable_image": len(failed)}
    out["multi_label_policy"] = MULTI_LABEL_POLICY
    return out
