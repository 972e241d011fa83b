"""Metrics of a trained run on one split of a data set (what :func:`crossalign.evaluate` runs).

With ``gap=True`` the same metrics are computed separately for items the model trained on
("seen": the splits its weights learned from, ``train.fit_on``: train, and val too after a
refit) and items it did not ("unseen": the rest of the requested split), the comparison the seed reports made as "train 100 % vs held-out 11 %".
Each set is ranked among itself, and Recall@K depends on how many items compete, so by
default the seen images are sub-sampled (seeded) to the number of unseen images; the JSON
says so under ``gap_protocol``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from crossalign.config import trained_splits
from crossalign.data.splits import sample_images
from crossalign.data.table import PairTable
from crossalign.data.validate import count_skipped, report_problems
from crossalign.embed.collection import EmbeddedTable, tta_flip
from crossalign.errors import ConfigError, DataError
from crossalign.evaluate.bank import bank_rows, resolve_ranking, score_functions
from crossalign.evaluate.chance import chance_metrics
from crossalign.evaluate.labels import agreement_both
from crossalign.evaluate.protocol import PROTOCOLS, SEED_PROTOCOL_NOTE, seed_protocol
from crossalign.evaluate.retrieval import (MATRIX_MAX_CELLS, Retrieval, ScoreFn, metrics_from_ranks,
                                          retrieve, write_distance_matrix)
from crossalign.runs import RunData, embed_split, open_run, recorded_data, select_split

__all__ = ["evaluate", "seen_unseen", "score", "run_score_functions", "run_seed_protocol", "GAP_KEYS"]

# the metrics whose seen - unseen difference is reported as the generalization gap
GAP_KEYS = ("R@", "_median_rank", "_mean_rank", "_mrr", "_top1", "rsum")


def seen_unseen(table: PairTable, sub: PairTable, seed: int = 0, seen: str = "match",
                trained: Sequence[str] = ("train",)) -> tuple[PairTable, PairTable]:
    """The seen and unseen items to compare, one rule for every command.

    Seen are the rows of the splits the run's weights learned from (``trained``: the train
    split, and val too after a refit, see ``config.trained_splits``), with ``seen="match"``
    sampled (seeded) down to as many images as unseen has, so both sets are equally hard;
    unseen are the rows of ``sub`` outside them. Either table may be empty.
    """
    if seen not in ("match", "all"):
        raise ConfigError(f"`seen` must be 'match' or 'all', got {seen!r}")
    unseen_tab = sub.take(k for k, s in enumerate(sub.split) if s not in trained)
    seen_tab = table.select(list(trained))
    if seen == "match":
        seen_tab = sample_images(seen_tab, len(set(unseen_tab.image_id)), seed)
    return seen_tab, unseen_tab


def run_score_functions(rd: RunData, evaluated: PairTable, image_emb: np.ndarray, text_emb: np.ndarray,
                        progress: bool = True) -> tuple[ScoreFn | None, ScoreFn | None, dict]:
    """The ranking's score functions for ``evaluated``, its query bank embedded with the run."""
    bank_img = bank_txt = None
    if rd.cfg.evaluate.ranking != "plain":
        bank = bank_rows(rd.table, evaluated, rd.cfg.evaluate.qb_bank, rd.cfg.evaluate.qb_seed)
        if len(bank):
            emb = embed_split(rd, bank, progress)
            bank_img, bank_txt = emb.image_emb, emb.text_emb
    return score_functions(rd.cfg.evaluate, image_emb, text_emb, bank_img, bank_txt)


def run_seed_protocol(rd: RunData, ks: Sequence[int], progress: bool = True) -> dict:
    """The seed reports' protocol (:func:`seed_protocol`) over every item of the run's table."""
    emb = embed_split(rd, rd.table, progress)
    split_of = dict(zip(emb.table.image_id, emb.table.split))
    held = np.array([split_of[i] != "train" for i in emb.image_ids])
    if not held.any():
        raise ConfigError("`protocol` seed compares held-out items with the rest, and every item of the data "
                          "is in the run's train split")
    out = seed_protocol(emb.image_emb, emb.text_emb, emb.text_to_image, held, ks)
    out["protocol"] = {**SEED_PROTOCOL_NOTE,
                       "held_out_splits": sorted({s for s in emb.table.split if s != "train"})}
    return out


def require_label_column(table: PairTable, column: str) -> None:
    """A clear error unless ``table`` carries label ``column``."""
    if column not in table.labels:
        have = ", ".join(sorted(table.labels)) or "none"
        raise ConfigError(f"`label_column` {column!r}: the data has no such column (label columns: {have})")


def image_labels(emb: EmbeddedTable, column: str) -> list:
    """The value of label ``column`` for each embedded image (its first caption row's)."""
    require_label_column(emb.table, column)
    first: dict[str, object] = {}
    for iid, value in zip(emb.table.image_id, emb.table.labels[column]):
        first.setdefault(iid, value)
    return [first.get(i) for i in emb.image_ids]


def score(rd: RunData, sub: PairTable, ks: Sequence[int] = (1, 5, 10), progress: bool = True,
          k: int = 0, label_column: str | None = None) -> tuple[dict, EmbeddedTable, Retrieval]:
    """Metrics of ``sub``, its embeddings, and its ranks (plus top-``k`` lists) from one pass;
    with ``label_column``, also the label agreement of the same rankings (``metrics["labels"]``)."""
    emb = embed_split(rd, sub, progress)
    if len(emb.image_ids) == 0:
        raise DataError(f"no readable image left to evaluate in {len(set(sub.image_id))} image(s)")
    t2i_fn, i2t_fn, ranking = run_score_functions(rd, sub, emb.image_emb, emb.text_emb, progress)
    res = retrieve(emb.image_emb, emb.text_emb, emb.text_to_image, k=k, t2i_scores=t2i_fn,
                   i2t_scores=i2t_fn)
    metrics = metrics_from_ranks(res.t2i_ranks, res.i2t_ranks, ks)
    metrics["ranking"] = ranking
    metrics["chance"] = chance_metrics(emb.text_to_image, len(emb.image_ids), ks)
    metrics["skipped_rows"] = len(emb.problems)
    if label_column:
        metrics["labels"] = {"column": label_column,
                             **agreement_both(emb.image_emb, emb.text_emb, emb.text_to_image,
                                              image_labels(emb, label_column), ks, t2i_fn, i2t_fn)}
    return metrics, emb, res


def _label_gap(seen_m: dict, unseen_m: dict) -> dict:
    """Seen - unseen of each overall label-agreement figure, both directions."""
    if "labels" not in seen_m or "labels" not in unseen_m:
        return {}
    return {d: {k: seen_m["labels"][d][k] - unseen_m["labels"][d][k] for k, v in seen_m["labels"][d].items()
                if isinstance(v, float) and k != "mean_relevant"} for d in ("t2i", "i2t")}


def _gap(rd: RunData, sub: PairTable, split: str, top: dict, ks: Sequence[int], seen: str, seed: int,
         progress: bool, label_column: str | None = None) -> dict:
    """``seen`` / ``unseen`` metrics, their difference, and how the two sets were drawn."""
    trained = trained_splits(rd.cfg)
    named = "+".join(trained)
    seen_tab, unseen_tab = seen_unseen(rd.table, sub, seed, seen, trained)
    if len(unseen_tab) == 0:
        raise ConfigError(f"`gap` compares the images the run trained on ({named}) with held-out ones, and "
                          f"the {split!r} split holds none; use split test" + ("" if "val" in trained else ", val")
                          + " or all")
    if len(seen_tab) == 0:
        raise DataError(f"`gap` needs the splits the run trained on ({named}), and no row of the data is in them")
    n_unseen, n_train = len(set(unseen_tab.image_id)), len(set(rd.table.select(list(trained)).image_id))
    seen_m = score(rd, seen_tab, ks, progress, label_column=label_column)[0]
    unseen_m = top if len(unseen_tab) == len(sub) else \
        score(rd, unseen_tab, ks, progress, label_column=label_column)[0]
    seen_m["split"] = named
    unseen_m = {**unseen_m, "split": ",".join(sorted(set(unseen_tab.split)))}
    gap = {k: seen_m[k] - unseen_m[k] for k in seen_m
           if isinstance(seen_m[k], float) and any(tag in k for tag in GAP_KEYS)}
    if label_column:
        gap["labels"] = _label_gap(seen_m, unseen_m)
    protocol = {
        "seen": f"images of the splits the run trained on ({named}, train.fit_on)",
        "unseen": f"images of the {split!r} split it did not train on",
        "seen_images_available": n_train, "seen_images_used": len(set(seen_tab.image_id)),
        "unseen_images": n_unseen, "sampling": seen, "seed": seed,
        "note": ("each set is ranked among itself; with sampling 'match' the seen images are a seeded "
                 "sample of the unseen count, so Recall@K and ranks of the two are comparable"),
    }
    return {"seen": seen_m, "unseen": unseen_m, "gap": gap, "gap_protocol": protocol}


def _export(emb: EmbeddedTable, res: Retrieval, matrix: str | Path | None, float16: bool,
            lists: str | Path | None, ranking: dict | None = None) -> None:
    """The distance matrix (small sets) and per-query ranks and top-K lists (any size).

    The lists file says what its ``*_topk_scores`` are: ``ranking`` (``plain`` or ``qbnorm``),
    ``score_kind`` (cosine similarity, or a query-bank-normalised score that is not one) and
    ``ranking_json`` (the ranking's description of the metrics JSON, its parameters included);
    ``*_topk_cosine`` hold the cosine similarity of the same pairs under any ranking.
    """
    import json

    from crossalign._io import atomic_path, atomic_write_json

    if matrix:
        write_distance_matrix(matrix, emb.image_emb, emb.text_emb, float16)
        atomic_write_json(Path(matrix).with_suffix(".json"), {
            "matrix": "cosine distance 1 - cos; rows are images, columns are captions",
            "image_ids": emb.image_ids, "caption_image": emb.text_to_image.tolist(),
            "caption_origin": list(emb.table.origin)})
    if lists:
        ranking = ranking or {"name": res.t2i.ranking}
        kind = ranking.get("scores", "cosine similarity" if ranking["name"] == "plain" else "")
        with atomic_path(lists) as tmp, open(tmp, "wb") as f:
            np.savez(f, image_ids=np.array(emb.image_ids), caption_image=emb.text_to_image,
                     t2i_ranks=res.t2i_ranks, i2t_ranks=res.i2t_ranks,
                     t2i_topk=res.t2i.indices, t2i_topk_scores=res.t2i.scores,
                     t2i_topk_cosine=res.t2i.cosine,
                     i2t_topk=res.i2t.indices, i2t_topk_scores=res.i2t.scores,
                     i2t_topk_cosine=res.i2t.cosine,
                     ranking=np.array(ranking["name"]), score_kind=np.array(kind),
                     ranking_json=np.array(json.dumps(ranking, sort_keys=True)))


def evaluate(run: str | Path, data: str | Path | None = None, split: str = "test", ks: Sequence[int] = (1, 5, 10),
             which: str = "best", device: str = "cpu", progress: bool = True, *, gap: bool = False,
             seen: str = "match", seed: int = 0, matrix: str | Path | None = None, float16: bool = False,
             lists: str | Path | None = None, lists_k: int = 10, ranking: str | None = None,
             qb_beta: float | None = None, qb_k: int | None = None, qb_bank: int | None = None,
             protocol: str = "standard", label_column: str | None = None,
             wise: float | None = None, pretrained_weights: str = "") -> dict:
    """Retrieval metrics of the run's ``which`` checkpoint on ``split`` of ``data``.

    The split is the one stored in the run folder, so the held-out items are exactly
    those training held out.

    Args:
        data: the data set; None reads the one the run was trained on (``run.json``).
        split: a split name, names joined by commas, or ``all``.
        ks: the K of Recall@K.
        gap: also score seen (train) and unseen (held-out) items apart, under ``seen`` / ``unseen``.
        seen: ``match`` samples the seen images down to the unseen count (seeded); ``all`` keeps all.
        seed: seed of that sample.
        matrix: write the cosine distance matrix of ``split`` here (``.npy``; refused for huge sets).
        float16: store the matrix as float16.
        lists: write per-query ranks and top-``lists_k`` lists in both directions here (``.npz``).
        ranking: ``plain`` (cosine) or ``qbnorm`` (query-bank normalisation over training queries);
            None takes the run's ``evaluate.ranking``; ``qb_beta``, ``qb_k`` and ``qb_bank`` likewise
            (see :mod:`crossalign.evaluate.ranking`).
        protocol: ``seed`` adds ``seed_protocol``: top-1 accuracy over every item, training ones
            included, and for held-out items ranked among all (see :mod:`crossalign.evaluate.protocol`).
        label_column: also the label agreement of the rankings by this label column (precision@K,
            R-precision, MAP@R and Jaccard@K beside chance, per class too; see
            :mod:`crossalign.evaluate.labels`), under ``labels`` (and in ``seen`` / ``unseen`` with ``gap``).
        wise: for a pretrained model's run, evaluate the WiSE-FT ensemble ``(1 - wise) * zero-shot
            + wise * fine-tuned`` weights instead (0: the checkpoint as it was, 1: the run's).
        pretrained_weights: when ``run`` names a pretrained model (``open_clip:NAME``), its weights.

    ``run`` is a run folder, or a pretrained model (``hf:FOLDER``, ``open_clip:NAME``) measured
    zero-shot on ``data``'s own split.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"`k`: the K of Recall@K must be positive integers, got {list(ks)}")
    if lists and lists_k < 1:
        raise ConfigError(f"`lists_k`: the length of the top-K lists must be at least 1, got {lists_k}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"`protocol` must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    rd = open_run(run, recorded_data(run) if data is None else data, which, device, quiet=True, wise=wise,
                  pretrained_weights=pretrained_weights)
    rd.cfg.evaluate = resolve_ranking(rd.cfg.evaluate, ranking, qb_beta, qb_k, qb_bank)
    sub = select_split(rd.table, split)
    if matrix and len(set(sub.image_id)) * len(sub) > MATRIX_MAX_CELLS:  # refuse before embedding
        raise ConfigError(f"{matrix}: {len(set(sub.image_id)):,} images x {len(sub):,} captions is above "
                          f"the distance-matrix limit of {MATRIX_MAX_CELLS:,} entries; use `lists` instead")
    if label_column:
        require_label_column(rd.table, label_column)  # refuse before embedding
    metrics, emb, res = score(rd, sub, ks, progress, k=lists_k if lists else 0, label_column=label_column)
    problems = rd.problems + emb.problems
    report_problems(problems)
    metrics["split"] = split
    metrics["tta_flip"] = tta_flip(rd.model)  # image vectors average the image and its mirror
    metrics["skipped_rows"] = sum(p.level == "error" for p in problems)
    metrics["skipped"] = count_skipped(problems)
    _export(emb, res, matrix, float16, lists, metrics["ranking"])
    if gap:
        metrics.update(_gap(rd, sub, split, metrics, ks, seen, seed, progress, label_column))
    if protocol == "seed":
        metrics["seed_protocol"] = run_seed_protocol(rd, ks, progress)
    return metrics
