"""What a build adds beside the vectors: the words read in the pictures, and the calibration
of the search's cut-off.

Both are kept from the previous version where they still hold: words by the picture's content
hash (a rebuild reads no picture twice), the calibration while the model is the same.
"""

from __future__ import annotations

import logging
import random

import numpy as np

from crossalign.errors import CrossalignError
from crossalign.index.store import ImageRecord, IndexStore

__all__ = ["read_words", "fit_from_run", "CALIBRATION_IMAGES"]

log = logging.getLogger("crossalign.index")
CALIBRATION_IMAGES = 2000  # validation images (with all their captions) a calibration reads at most


def read_words(images: list[ImageRecord], old: IndexStore | None, progress: bool) -> int:
    """Fill each image's ``ocr`` with the words read in it: from ``old`` where a picture of the
    same content was read before, else by reading it now. Returns how many were read now."""
    from crossalign.index.ocr import WordReader, words_text

    known = old.words_by_hash() if old is not None else {}  # hashes and words, not whole records
    todo = [im for im in images if known.get(im.content_hash) is None]
    for im in images:
        im.ocr = known.get(im.content_hash)
    if not todo:
        return 0
    reader = WordReader()
    bar = _progress(len(todo), progress)
    for im in todo:
        try:
            im.ocr = words_text(reader(im.path))
        except (CrossalignError, OSError) as e:  # the vector was made; the words stay unknown
            log.warning("%s: no words read (%s)", im.path, e)
            im.ocr = ""
        bar.update(1)
    bar.close()
    return len(todo)


def _progress(total: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="reading words", unit="image", disable=not show)


def fit_from_run(emb, old: IndexStore | None, progress: bool) -> tuple[dict, str]:
    """The calibration of the images target (``{"images": Calibration.to_dict()}``) fitted on
    the validation pairs of the run's own data (never its test split), and a note; or ``{}``
    and why there is none (the build goes on without: the cut-offs that need it say why)."""
    if old is not None and old.info.get("weights_hash") == emb.weights_hash and \
            "calibration" in old.info:
        return old.info["calibration"], old.info.get("calibration_note", "")
    from crossalign.config import trained_splits
    from crossalign.index.calibrate import MIN_QUERIES, fit_calibration
    from crossalign.runs import recorded_data

    if "val" in trained_splits(emb.cfg):
        return {}, ("the run was trained on its validation pairs too (train.fit_on="
                    f"{emb.cfg.train.fit_on}), so none are left unseen to calibrate on, and pairs it "
                    "learned from would make the cut-offs far too narrow; train with --no-refit "
                    "(train.fit_on=train) to calibrate them")
    try:
        data = recorded_data(emb.run)
        table = emb.read_table(data, split="val", quiet=True)
    except CrossalignError as e:
        return {}, f"the run's validation pairs could not be read ({e})"
    if len(table.caption) < MIN_QUERIES:  # nothing is embedded for a calibration that cannot be
        return {}, (f"the run's validation split has {len(table.caption)} pairs; a calibration "
                    f"needs at least {MIN_QUERIES}")
    ids = list(dict.fromkeys(table.image_id))
    if len(ids) > CALIBRATION_IMAGES:
        ids = sorted(random.Random(0).sample(ids, CALIBRATION_IMAGES))
    keep = set(ids)
    rows = [r for r, i in enumerate(table.image_id) if i in keep]
    paths = {table.image_id[r]: table.image_path[r] for r in rows}
    try:
        vecs, failed = emb.images([paths[i] for i in ids], progress)
        ok = [i for i in ids if paths[i] not in failed]
        rows = [r for r in rows if table.image_id[r] in set(ok)]
        texts = emb.captions([table.caption[r] for r in rows], progress)
        where = {i: n for n, i in enumerate(ok)}
        truth = np.array([where[table.image_id[r]] for r in rows], dtype=np.int64)
        cal = fit_calibration(texts, vecs, truth)
    except CrossalignError as e:
        return {}, f"no calibration from the run's validation pairs: {e}"
    log.info("%s", cal.summary())
    return {"images": cal.to_dict()}, ""
