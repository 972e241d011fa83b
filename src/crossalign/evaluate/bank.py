"""The ranking option of ``evaluate``: which training queries form the bank, and the score functions.

:mod:`crossalign.evaluate.ranking` holds the maths on plain arrays; this module picks the bank
rows from a run's table (training rows whose images are not being evaluated, optionally a
seeded sample of them) and, given their embeddings, hands ``retrieve`` one score function per
direction, plus the description that goes into the metrics JSON.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from crossalign.config import EvaluateConfig
from crossalign.data.splits import sample_images
from crossalign.data.table import PairTable
from crossalign.errors import ConfigError
from crossalign.evaluate.ranking import RANKINGS, QBNormParams, fit_bank
from crossalign.evaluate.retrieval import ScoreFn

__all__ = ["resolve_ranking", "bank_rows", "score_functions"]

log = logging.getLogger(__name__)

def resolve_ranking(cfg: EvaluateConfig, ranking: str | None = None, qb_beta: float | None = None,
                    qb_k: int | None = None, qb_bank: int | None = None) -> EvaluateConfig:
    """The run's ``evaluate`` settings with the arguments given here (not None) taking over."""
    given = {"ranking": ranking, "qb_beta": qb_beta, "qb_k": qb_k, "qb_bank": qb_bank}
    out = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if out.ranking not in RANKINGS:
        raise ConfigError(f"ranking must be one of {', '.join(RANKINGS)}, got {out.ranking!r} "
                         f"(`ranking` or evaluate.ranking)")
    if out.qb_bank < 0:
        raise ConfigError(f"evaluate.qb_bank (`qb_bank`) must be 0 (all) or a positive count, got {out.qb_bank}")
    QBNormParams(out.qb_beta, out.qb_k)  # checks both
    return out


def bank_rows(table: PairTable, evaluated: PairTable, n_images: int = 0, seed: int = 0) -> PairTable:
    """Training rows whose image is not among ``evaluated``'s; ``n_images`` > 0 samples that many.

    The sample is a seeded hash of the image ids, so it does not depend on row order.
    """
    held = set(evaluated.image_id)
    train = table.select("train")
    bank = train.take(k for k, i in enumerate(train.image_id) if i not in held)
    return sample_images(bank, n_images, seed) if n_images and len(bank) else bank


def score_functions(cfg: EvaluateConfig, image_emb: np.ndarray, text_emb: np.ndarray,
                    bank_img: np.ndarray | None,
                    bank_txt: np.ndarray | None) -> tuple[ScoreFn | None, ScoreFn | None, dict]:
    """Score functions for text->image and image->text (None: cosine) and their description.

    Args:
        cfg: the resolved ``evaluate`` settings.
        image_emb: ``[n_images, dim]`` gallery of the text->image direction.
        text_emb: ``[n_captions, dim]`` gallery of the image->text direction.
        bank_img: ``[n_bank_images, dim]`` image queries of the bank (training images outside the
            evaluated set, see :func:`bank_rows`); None or empty when there are none.
        bank_txt: ``[n_bank_captions, dim]`` caption queries of the bank.
    """
    if cfg.ranking == "plain":
        return None, None, {"name": "plain", "scores": "cosine similarity"}
    if bank_img is None or bank_txt is None or len(bank_img) == 0 or len(bank_txt) == 0:
        log.warning("ranking qbnorm: no training rows outside the evaluated set to build the query bank "
                    "from; ranking by plain cosine similarity instead")
        return None, None, {"name": "plain", "requested": "qbnorm", "scores": "cosine similarity",
                            "note": "no training queries outside the evaluated set"}
    params = QBNormParams(cfg.qb_beta, cfg.qb_k)
    t2i = fit_bank(image_emb, bank_txt, params)  # caption queries rank images
    i2t = fit_bank(text_emb, bank_img, params)  # image queries rank captions
    info = {
        "name": "qbnorm", "method": "querybank normalisation, dynamic inverted softmax",
        "scores": "querybank-normalised similarity (not a cosine)",
        "beta": params.beta, "k": params.k,
        "bank": {"source": "train split, images of the evaluated set left out",
                 "images": int(bank_img.shape[0]), "captions": int(bank_txt.shape[0]),
                 "sampled": bool(cfg.qb_bank), "seed": cfg.qb_seed},
        "t2i": t2i.summary(), "i2t": i2t.summary(),
    }
    return t2i, i2t, info
