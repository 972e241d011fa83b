"""Captions proposed from the aligned space: retrieval from a pool of captions, then consensus.

Nothing is generated: a caption is chosen among existing ones, after Devlin et al. 2015,
"Exploring Nearest Neighbor Approaches for Image Captioning" (arXiv:1505.04467).

1. Candidates. With a pool of images and their captions (a data set's split) the candidates
   are the captions of the image's ``neighbours`` nearest pool images; with a plain list of
   captions (a text file) they are the ``neighbours`` captions nearest the image. "Nearest"
   is the cosine of the run's unit vectors, one matrix product for every query.
2. Consensus. A candidate's consensus is its mean lexical similarity to the other candidates
   (with ``top_m``, to its ``top_m`` most similar ones, Devlin's *m*): the caption most like the
   others describes what the neighbours have in common. The similarity of two captions is the
   mean over n = 1..4 of the cosine of their TF-IDF weighted n-gram counts, CIDEr's vectors
   without its length penalty; document frequencies are counted over the pool's captions.
3. Score: ``(1 - weight) * consensus + weight * cosine(image, caption)``; the ``k`` best
   distinct captions are proposed.

Words (:func:`tokenize`): the text is lowercased and split into runs of letters and digits;
everything else (punctuation, apostrophes, spaces) only separates words, so "Dog's." gives
``dog s``. The same rule feeds the consensus and the scores of :func:`caption_scores`
(pycocoevalcap's BLEU-1..4 and CIDEr-D, without its Java tokenizer).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from crossalign.errors import ConfigError, DataError, InputNotFound

__all__ = ["Proposal", "CaptionPool", "Ngrams", "tokenize", "consensus", "read_caption_file",
           "pool_from_split", "pool_from_captions", "choose", "nearest_captions", "propose",
           "queries_from_split", "score_pool", "caption_scores", "score_split",
           "DEFAULT_NEIGHBOURS", "DEFAULT_WEIGHT", "DEFAULT_TOP_M", "MAX_N"]

# the defaults were chosen on Flickr8k's val split (bench/bench_caption.py --grid)
DEFAULT_NEIGHBOURS = 40  # pool images (or captions) whose captions are the candidates
DEFAULT_WEIGHT = 0.05  # share of the image-caption cosine in a candidate's score
DEFAULT_TOP_M = 50  # consensus over each candidate's m most similar others; 0: over all of them
MAX_N = 4  # n-grams of 1..MAX_N words
_WORD = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercased runs of letters and digits; everything else separates words."""
    return _WORD.findall(text.lower())


@dataclass
class Ngrams:
    """TF-IDF n-gram vectors of captions, one unit vector per n, stored row by row (CSR).

    The dot product of two rows is the sum over n of the two captions' n-gram cosines.
    """

    indptr: np.ndarray  # [n_captions + 1]
    indices: np.ndarray  # [n_entries] n-gram ids
    data: np.ndarray  # [n_entries] weights

    @classmethod
    def build(cls, captions: Sequence[str]) -> "Ngrams":
        """Vectors of ``captions``; document frequencies counted over these captions."""
        vocab: dict[tuple[str, ...], int] = {}
        counts = []
        for text in captions:
            words = tokenize(text)
            grams = Counter(tuple(words[i:i + n]) for n in range(1, MAX_N + 1)
                            for i in range(len(words) - n + 1))
            counts.append({vocab.setdefault(g, len(vocab)): c for g, c in grams.items()})
        df = np.zeros(len(vocab), np.float64)
        for row in counts:
            df[list(row)] += 1
        idf = np.log(max(len(captions), 1) / np.maximum(df, 1))
        order = {i: len(g) for g, i in vocab.items()}
        indptr, indices, data = [0], [], []
        for row in counts:
            ids = np.fromiter(row, np.int64, len(row))
            w = np.array([row[i] for i in ids], np.float64) * idf[ids]
            n_of = np.array([order[i] for i in ids], np.int64)
            for n in range(1, MAX_N + 1):  # each n's block to unit length
                norm = np.linalg.norm(w[n_of == n])
                w[n_of == n] /= norm if norm > 0 else 1.0
            indices.append(ids)
            data.append(w.astype(np.float32))
            indptr.append(indptr[-1] + len(ids))
        cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
        return cls(np.array(indptr, np.int64), cat(indices, np.int64), cat(data, np.float32))

    def similarity(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), len(rows)]``: mean over n of the n-gram cosines of those captions."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        flat = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)] or [np.zeros(0, int)])
        cols, local = np.unique(self.indices[flat], return_inverse=True)
        dense = np.zeros((len(rows), len(cols)), np.float32)  # [candidates, their n-grams]
        dense[np.repeat(np.arange(len(rows)), ends - starts), local] = self.data[flat]
        return dense @ dense.T / MAX_N


def consensus(sim: np.ndarray, top_m: int = 0) -> np.ndarray:
    """Each candidate's mean similarity to the other candidates (``[c]`` from ``sim [c, c]``).

    With ``top_m`` > 0 the mean runs over its ``top_m`` most similar others only. A lone
    candidate scores 0.
    """
    c = len(sim)
    if c < 2:
        return np.zeros(c, np.float32)
    others = np.asarray(sim, np.float64).copy()
    np.fill_diagonal(others, -np.inf)
    m = c - 1 if top_m <= 0 else min(top_m, c - 1)
    best = -np.sort(-others, axis=1)[:, :m]  # [c, m], highest first
    return best.mean(1).astype(np.float32)


@dataclass
class Proposal:
    """One proposed caption and the parts of its score."""

    caption: str
    score: float  # (1 - weight) * consensus + weight * cosine
    consensus: float  # mean n-gram similarity to the other candidates
    cosine: float  # image-caption cosine in the aligned space


@dataclass
class CaptionPool:
    """Captions to choose from, their vectors, and (for a data set) their images' vectors."""

    captions: list[str]
    text_emb: np.ndarray  # [n_captions, dim]
    ngrams: Ngrams
    source: str  # what the pool is, for messages and JSON
    image_emb: np.ndarray | None = None  # [n_images, dim]; None for a plain list of captions
    caption_image: np.ndarray | None = None  # [n_captions] row of image_emb
    image_paths: list[str] | None = None  # [n_images]

    def captions_of(self, images: np.ndarray) -> np.ndarray:
        """Caption rows of the given pool images, in pool order."""
        return np.flatnonzero(np.isin(self.caption_image, images))


def read_caption_file(path: str | Path) -> list[str]:
    """Captions of a UTF-8 text file, one a line; blank lines are skipped.

    Raises:
        InputNotFound: no such file.
        DataError: not UTF-8 (naming the line), or no caption in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"--captions {path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None
    captions = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not captions:
        raise DataError(f"{path}: holds no caption (one caption a line)")
    return captions


def pool_from_split(rd, split: str = "train", progress: bool = False) -> CaptionPool:
    """The captions and images of ``split`` of a run's data (an opened run, ``runs.RunData``)."""
    from crossalign.runs import embed_split, select_split

    emb = embed_split(rd, select_split(rd.table, split), progress)
    if len(emb.image_ids) == 0:
        raise DataError(f"the {split!r} split of the data holds no readable image for the caption pool")
    path_of = dict(zip(*emb.table.images()))
    return CaptionPool(list(emb.table.caption), emb.text_emb, Ngrams.build(emb.table.caption),
                       f"the {split} split of {rd.table.meta.get('root', 'the data')}", emb.image_emb,
                       emb.text_to_image, [path_of[i] for i in emb.image_ids])


def pool_from_captions(rd, captions: Sequence[str], source: str = "captions",
                       progress: bool = False) -> CaptionPool:
    """A pool of plain captions (no images), embedded with the run; ``source`` names them."""
    from crossalign.embed.collection import embed_texts

    captions = list(captions)
    text_emb = embed_texts(rd.model, captions, cache_root=rd.cache_root, device=rd.device,
                           batch_size=rd.cfg.runtime.eval_batch_size, progress=progress)
    return CaptionPool(captions, text_emb, Ngrams.build(captions), source)


def _check(k: int, neighbours: int, weight: float, top_m: int) -> None:
    if k < 1:
        raise ConfigError(f"`k`: the number of proposals must be at least 1, got {k}")
    if neighbours < 1:
        raise ConfigError(f"`neighbours` must be at least 1, got {neighbours}")
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"`weight` must lie in [0, 1], got {weight}")
    if top_m < 0:
        raise ConfigError(f"`top_m` must be 0 (every other candidate) or more, got {top_m}")


def _ranked(pool: CaptionPool, rows: np.ndarray, cos: np.ndarray, k: int, weight: float,
            top_m: int) -> list[Proposal]:
    """The ``k`` best distinct candidates among caption ``rows`` (``cos``: their cosines)."""
    agree = consensus(pool.ngrams.similarity(rows), top_m)
    score = (1.0 - weight) * agree + weight * cos
    out, seen = [], set()
    for j in np.lexsort((-cos, -score)):  # ties: the nearer caption first
        key = " ".join(tokenize(pool.captions[rows[j]]))
        if key not in seen:
            seen.add(key)
            out.append(Proposal(pool.captions[rows[j]], float(score[j]), float(agree[j]), float(cos[j])))
        if len(out) == k:
            break
    return out


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest scores, highest first; a score of -inf (left out) never."""
    n = min(n, len(scores))
    part = np.argpartition(-scores, n - 1)[:n]
    part = part[np.isfinite(scores[part])]
    return part[np.argsort(-scores[part], kind="stable")]


def choose(pool: CaptionPool, image_emb: np.ndarray, k: int = 5, neighbours: int = DEFAULT_NEIGHBOURS,
           weight: float = DEFAULT_WEIGHT, top_m: int = DEFAULT_TOP_M,
           exclude: Sequence[int | None] | None = None, chunk: int = 1024) -> list[list[Proposal]]:
    """The ``k`` proposals for each image vector of ``image_emb [n, dim]``.

    Args:
        exclude: per query, a pool image to leave out of its neighbours (the query itself) or None.
    """
    _check(k, neighbours, weight, top_m)
    out: list[list[Proposal]] = []
    keys = pool.text_emb if pool.image_emb is None else pool.image_emb
    for s in range(0, len(image_emb), chunk):
        sims = image_emb[s:s + chunk] @ keys.T  # [chunk, pool images or captions]
        for q, row in enumerate(sims, start=s):
            if exclude is not None and exclude[q] is not None:
                row[exclude[q]] = -np.inf
            near = _top(row, neighbours)
            rows = near if pool.image_emb is None else pool.captions_of(near)
            out.append(_ranked(pool, rows, pool.text_emb[rows] @ image_emb[q], k, weight, top_m))
    return out


def nearest_captions(pool: CaptionPool, image_emb: np.ndarray, chunk: int = 1024) -> list[str]:
    """The baseline without consensus: each image's nearest pool caption (image->text cosine)."""
    best = [np.argmax(image_emb[s:s + chunk] @ pool.text_emb.T, axis=1)
            for s in range(0, len(image_emb), chunk)]  # [chunk] each
    return [pool.captions[j] for j in np.concatenate(best or [np.zeros(0, int)])]


def _open(run: str | Path, data: str | Path | None, which: str, device: str, with_data: bool = True):
    """The run with ``data`` (None: the data it was trained on), or without any data."""
    from crossalign.runs import open_run, recorded_data

    if with_data and data is None:
        data = recorded_data(run)
    return open_run(run, data if with_data else None, which, device, quiet=True)


def propose(run: str | Path, images: Sequence, *, captions: str | Path | None = None,
            data: str | Path | None = None, split: str = "train", k: int = 5,
            neighbours: int = DEFAULT_NEIGHBOURS, weight: float = DEFAULT_WEIGHT, top_m: int = DEFAULT_TOP_M,
            which: str = "best", device: str = "cpu", progress: bool = False) -> list[list[Proposal]]:
    """The ``k`` best captions for each image (paths, file bytes or PIL images), best first.

    Args:
        captions: a text file of captions, one a line, as the pool (candidates: the nearest captions).
        data: the data set whose ``split`` is the pool (candidates: the captions of the nearest
            images); None takes the data the run was trained on. An image of the pool given as a
            query is left out of its own neighbours.
        neighbours, weight, top_m: see the module docstring.
    """
    from crossalign.embed.collection import embed_images

    _check(k, neighbours, weight, top_m)
    if captions is not None and data is not None:
        raise ConfigError("give `captions` FILE or `data` DIR as the caption pool, not both")
    texts = None if captions is None else read_caption_file(captions)  # refused before the model loads
    rd = _open(run, data, which, device, with_data=texts is None)
    pool = pool_from_split(rd, split, progress) if texts is None else \
        pool_from_captions(rd, texts, str(captions), progress)
    vectors = embed_images(rd.model, list(images), device=device, batch_size=rd.cfg.runtime.eval_batch_size,
                             max_pixels=rd.cfg.data.max_pixels)  # [n, dim]
    row_of = {str(Path(p).resolve()): i for i, p in enumerate(pool.image_paths or [])}
    exclude = [row_of.get(str(Path(x).resolve())) if isinstance(x, (str, Path)) else None for x in images]
    return choose(pool, vectors, k, neighbours, weight, top_m, exclude)


def caption_scores(references: dict[str, list[str]], hypotheses: dict[str, str]) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr-D of one caption per image against its references (pycocoevalcap).

    Every text is first put through :func:`tokenize` and joined by spaces.

    Raises:
        DataError: an image without a hypothesis or without a reference.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if set(references) != set(hypotheses) or not references:
        raise DataError(f"{len(references)} images with references and {len(hypotheses)} with a caption "
                        f"do not match")
    gts = {i: [" ".join(tokenize(r)) for r in refs if tokenize(r)] for i, refs in references.items()}
    empty = [i for i, refs in gts.items() if not refs]
    if empty:
        raise DataError(f"image {empty[0]!r} has no reference caption with a word in it")
    res = {i: [" ".join(tokenize(hypotheses[i]))] for i in gts}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"BLEU-{n}": float(b) for n, b in enumerate(bleu, 1)}, "CIDEr": float(cider)}


def queries_from_split(rd, split: str, progress: bool = False) -> tuple[np.ndarray, list[str], dict]:
    """Image vectors ``[n, dim]``, image paths and references (image id -> captions) of ``split``."""
    from crossalign.runs import embed_split, select_split

    emb = embed_split(rd, select_split(rd.table, split), progress)
    if len(emb.image_ids) == 0:
        raise DataError(f"the {split!r} split holds no readable image to caption")
    refs: dict[str, list[str]] = {i: [] for i in emb.image_ids}
    for iid, text in zip(emb.table.image_id, emb.table.caption):
        refs[iid].append(text)
    path_of = dict(zip(*emb.table.images()))
    return emb.image_emb, [path_of[i] for i in emb.image_ids], refs


def score_pool(pool: CaptionPool, image_emb: np.ndarray, references: dict[str, list[str]],
               neighbours: int = DEFAULT_NEIGHBOURS, weight: float = DEFAULT_WEIGHT,
               top_m: int = DEFAULT_TOP_M, baseline: bool = True) -> dict:
    """Scores of the consensus captions (and of the nearest caption) for images in ``references``
    order; returns ``consensus`` (and ``nearest_caption``) score dicts and the chosen captions."""
    ids = list(references)
    chosen = [p[0].caption for p in choose(pool, image_emb, 1, neighbours, weight, top_m)]
    out = {"consensus": caption_scores(references, dict(zip(ids, chosen))), "captions": chosen}
    if baseline:
        nearest = nearest_captions(pool, image_emb)
        out["nearest_caption"] = caption_scores(references, dict(zip(ids, nearest)))
        out["nearest_captions"] = nearest
    return out


def _split_names(split: str, option: str) -> set[str]:
    names = {s.strip() for s in split.split(",") if s.strip()}
    if not names or "all" in names:
        raise ConfigError(f"{option}: name the split(s), not {split!r}: the scored images and the caption "
                          f"pool must not share a split")
    return names


def score_split(run: str | Path, data: str | Path | None = None, split: str = "test",
                pool_split: str = "train", neighbours: int = DEFAULT_NEIGHBOURS,
                weight: float = DEFAULT_WEIGHT, top_m: int = DEFAULT_TOP_M, which: str = "best",
                device: str = "cpu", progress: bool = False, examples: int = 5) -> dict:
    """Caption every image of ``split`` from the ``pool_split`` captions and score them against
    the image's own captions: BLEU-1..4 and CIDEr-D with consensus, and for the nearest caption.

    The two splits must differ, so an image's references are never in its pool.
    """
    _check(1, neighbours, weight, top_m)
    shared = _split_names(split, "--split") & _split_names(pool_split, "--pool-split")
    if shared:
        raise ConfigError(f"`split` {split} and `pool_split` {pool_split} share {', '.join(sorted(shared))}: "
                          f"an image's own captions would be in its pool")
    rd = _open(run, data, which, device)
    pool = pool_from_split(rd, pool_split, progress)
    image_emb, paths, refs = queries_from_split(rd, split, progress)
    result = score_pool(pool, image_emb, refs, neighbours, weight, top_m)
    ids = list(refs)
    return {"split": split, "pool": pool.source, "n_images": len(ids), "n_pool_captions": len(pool.captions),
            "neighbours": neighbours, "weight": weight, "top_m": top_m,
            "tokenizer": "lowercase; words are runs of letters and digits, all else separates them",
            "consensus": result["consensus"], "nearest_caption": result["nearest_caption"],
            "examples": [{"image": paths[j], "consensus": result["captions"][j],
                          "nearest_caption": result["nearest_captions"][j], "references": refs[ids[j]]}
                         for j in range(min(examples, len(ids)))]}
