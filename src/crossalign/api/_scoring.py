"""``crossalign.evaluate``, ``zeroshot``, ``report``, ``explain`` and ``caption``: what a trained
run (or a pretrained model) is worth, and why it matches what it matches."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from crossalign.caption.nearest import DEFAULT_NEIGHBOURS, DEFAULT_TOP_M, DEFAULT_WEIGHT
from crossalign.errors import ConfigError, InputNotFound
from crossalign.explain import DEFAULT_METHOD

__all__ = ["evaluate", "zeroshot", "report", "explain", "caption", "wise_alphas", "numbers"]


def _write_json(path: str | Path | None, value) -> None:
    if path:
        from crossalign._io import atomic_write_json

        atomic_write_json(path, value)


def numbers(value: str | Sequence, kind: type, name: str) -> list:
    """``"1,5,10"`` or a sequence -> a list of ``kind``; a ConfigError naming ``name`` otherwise."""
    try:
        return [kind(x) for x in (value.split(",") if isinstance(value, str) else value) if str(x).strip()]
    except (TypeError, ValueError):
        raise ConfigError(f"`{name}` must be comma-separated numbers, got {value!r}") from None


def wise_alphas(value: str | Sequence[float]) -> list[float]:
    """``"0,0.5,1"`` or a sequence -> the WiSE-FT mixing weights, each checked to be in [0, 1]."""
    try:
        alphas = [float(a) for a in (value.split(",") if isinstance(value, str) else value)
                  if str(a).strip()]
    except ValueError:
        alphas = []
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
        raise ConfigError(f"`wise` must be numbers in [0, 1], got {value!r}")
    return alphas


def evaluate(run: str | Path, data: str | Path | None = None, *, split: str = "test",
             k: str | Sequence[int] = (1, 5, 10), checkpoint: str = "best", gap: bool = False, seen: str = "match",
             seed: int = 0, matrix: str | Path | None = None, float16: bool = False,
             lists: str | Path | None = None, lists_k: int = 10, ranking: str | None = None,
             qb_beta: float | None = None, qb_k: int | None = None, qb_bank: int | None = None,
             protocol: str = "standard", label_column: str | None = None, pretrained_weights: str = "",
             wise: str | Sequence[float] | None = None, wise_data: str | Path | None = None,
             json: str | Path | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Retrieval metrics of a run (or a pretrained model, zero-shot) on one split (``crossalign evaluate``).

    Recall@K in both directions with several captions per image, median and mean rank, MRR and
    R-sum, each beside its chance level, from the full cross-modal similarity matrix.

    Args:
        run: a run folder, or a pretrained model (``hf:FOLDER``, ``open_clip:NAME`` with
            ``pretrained_weights``) measured on ``data``'s own split.
        data: the data folder (default: the one the run trained on).
        split: ``train``, ``val``, ``test``, several joined by commas, or ``all``.
        k: the K of Recall@K.
        checkpoint: ``best`` or ``last``.
        gap: also score images the model trained on and held-out images apart (the
            generalisation gap); what counts as trained on follows the run's ``train.fit_on``.
        seen: with ``gap``: sample the trained-on images down to the held-out count (``match``)
            or keep them all (``all``).
        seed: the seed of that sample.
        matrix: write the cosine distance matrix (``.npy``, rows images, columns captions) and a
            ``.json`` naming them.
        float16: store the matrix as float16.
        lists: write per-query ranks and top-``lists_k`` lists, both directions (``.npz``).
        lists_k: the length of those lists.
        ranking: ``plain`` cosine or ``qbnorm`` (default: the run's ``evaluate.ranking``).
        qb_beta: qbnorm's inverse temperature (default: ``evaluate.qb_beta``).
        qb_k: qbnorm's activation set, the top K of some bank query (default: ``evaluate.qb_k``).
        qb_bank: training images in qbnorm's bank, 0 all (default: ``evaluate.qb_bank``).
        protocol: ``seed`` also counts top-1 accuracy over every item, as the seed reports did.
        label_column: also the label agreement of the rankings by this column.
        pretrained_weights: the weights of an ``open_clip:NAME`` model (a file or a tag).
        wise: a pretrained model's run: evaluate WiSE-FT weight ensembles for these alphas
            (``"0,0.5,1"``), one table.
        wise_data: with ``wise``, also on all of this second data set.
        json: also write the result to this JSON file.
        device: ``cpu`` or ``cuda``.
        progress: progress bars.

    Returns:
        The metrics, a :class:`~crossalign.evaluate.tables.Metrics` (a dict: ``t2i_R@1``,
        ``i2t_R@1``, ..., ``rsum``, ``chance``, ``ranking``; printed as the command's table, shown
        as an HTML table in a notebook); with ``wise``, ``{"wise": {alpha: metrics},
        "wise_pools": ...}``.
    """
    from crossalign.distributed import resolve_device
    from crossalign.evaluate.run import evaluate as _evaluate

    device = resolve_device(device)

    ks = sorted(set(numbers(k, int, "k")))
    if not ks or ks[0] < 1:
        raise ConfigError(f"`k` must be positive integers, got {k!r}")
    if float16 and not matrix:
        raise ConfigError("`float16` applies to `matrix`; give `matrix` FILE.npy too")
    if wise_data and wise is None:
        raise ConfigError("`wise_data` goes with `wise`")
    if wise is not None:
        out = _wise_sweep(run, data, split, ks, checkpoint, device, progress, ranking, qb_beta, qb_k, qb_bank,
                          wise_alphas(wise), wise_data)
        _write_json(json, out)
        return out
    metrics = _evaluate(run, data, split, ks, checkpoint, device, progress=progress, gap=gap, seen=seen,
                        seed=seed, matrix=matrix, float16=float16, lists=lists, lists_k=lists_k,
                        ranking=ranking, qb_beta=qb_beta, qb_k=qb_k, qb_bank=qb_bank, protocol=protocol,
                        label_column=label_column, pretrained_weights=pretrained_weights)
    _write_json(json, metrics)
    from crossalign.evaluate.tables import Metrics

    return Metrics(metrics)


def _wise_sweep(run, data, split, ks, checkpoint, device, progress, ranking, qb_beta, qb_k, qb_bank,
                alphas: list[float], wise_data) -> dict:
    """The same evaluation for each alpha on the run's split, and on all of ``wise_data``."""
    from crossalign.evaluate.run import evaluate as _evaluate

    pools = [("data", data, split)] + ([("second", wise_data, "all")] if wise_data else [])
    out: dict[str, dict] = {}
    for key, where, part in pools:
        sweep = {f"{a:g}": _evaluate(run, where, part, ks, checkpoint, device, progress=progress,
                                     ranking=ranking, qb_beta=qb_beta, qb_k=qb_k, qb_bank=qb_bank, wise=a)
                 for a in alphas}
        out[key] = {"data": str(where) if where else None, "split": part, "alphas": sweep}
    return {"wise": out["data"]["alphas"], "wise_pools": out}


def zeroshot(run: str | Path, data: str | Path | None = None, *, label_column: str | None = None,
             template: Sequence[str] | None = None, classes: str | Sequence[str] | None = None, sep: str = "|",
             split: str = "test", checkpoint: str = "best", pretrained_weights: str = "",
             json: str | Path | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Zero-shot classification of the images of ``split`` by the values of ``label_column``
    (``crossalign zeroshot``): each class becomes prompts from ``template`` (default: a small
    set of photo templates), and an image takes the class whose prompts it is nearest.

    Args:
        run: a run folder, or a pretrained model (``hf:FOLDER``, ``open_clip:NAME``).
        data: the data folder.
        label_column: a column of it kept as a label.
        template: prompt templates with ``{}`` for the class.
        classes: the candidate classes (default: every value in the column).
        sep: the separator of several classes in one value.
        split: the split classified.
        checkpoint: ``best`` or ``last``.
        pretrained_weights: the weights of an ``open_clip:NAME`` model.
        json: also write the result to this JSON file.
        device: ``cpu`` or ``cuda``.
        progress: progress bars.
    """
    from crossalign.distributed import resolve_device
    from crossalign.evaluate.zeroshot import DEFAULT_TEMPLATES, zeroshot as _zeroshot

    device = resolve_device(device)

    if not data or not label_column:
        raise ConfigError("give `data` and `label_column`")
    names = [c.strip() for c in classes.split(",") if c.strip()] if isinstance(classes, str) else classes
    result = _zeroshot(run, data, label_column, template or DEFAULT_TEMPLATES, split, checkpoint, device,
                       progress=progress, classes=names, sep=sep, pretrained_weights=pretrained_weights)
    _write_json(json, result)
    return result


def report(runs: str | Path | Sequence[str | Path], data: str | Path | None = None, *,
           out: str | Path = "report.html", split: str = "test", gallery: int = 8, top: int = 5,
           seed: int = 0, label_column: str = "", explain: int = -1, checkpoint: str = "best",
           device: str = "auto", progress: bool = True):
    """One self-contained HTML page of curves, a distance heatmap, galleries and ranks for one run
    or several (``crossalign report``); every plot is also saved as a PNG beside it.

    Args:
        runs: one run folder or several (several add a comparison).
        data: the data folder the runs were trained on.
        out: the HTML file to write.
        split: the split of the heatmap, galleries and ranks.
        gallery: items in the heatmap and queries per gallery.
        top: neighbours shown per gallery query.
        seed: fixes the sampled items.
        label_column: also show label agreement by this column.
        explain: explain the first hit of the first N queries of each gallery (-1 every query, 0 none).

    Returns:
        A :class:`~crossalign.report.build.ReportResult` (``.html``, ``.plots``).
    """
    from crossalign.distributed import resolve_device
    from crossalign.report.build import report as _report

    device = resolve_device(device)

    if not data:
        raise ConfigError("give `data`: the data folder the runs were trained on")
    return _report(runs, data, out, split=split, k=gallery, seed=seed, top=top, device=device,
                   progress=progress, which=checkpoint, label_column=label_column, explain=explain)


def explain(run: str | Path, image: str | Path | None = None, text: str | None = None, *,
            out: str | Path | None = None, method: str = DEFAULT_METHOD, steps: int = 32, checkpoint: str = "best",
            device: str = "auto"):
    """Which regions of ``image`` and which words of ``text`` made them close (``crossalign explain``).

    Args:
        run: a run folder.
        image: an image file.
        text: the text to match against it.
        out: prefix of the two files written, ``OUT.png`` and ``OUT.json`` (default
            ``explain-<image name>`` in the working folder).
        method: a CAM method of grad-cam (``layercam``, ``gradcam``, ...).
        steps: integrated-gradient steps for the words.
        checkpoint: ``best`` or ``last``.
        device: ``cpu`` or ``cuda``.

    Returns:
        An :class:`~crossalign.explain.pair.Explanation`.
    """
    from crossalign.distributed import resolve_device
    from crossalign.explain.pair import explain_pair
    from crossalign.runs import load_model

    device = resolve_device(device)

    if not image or not Path(image).is_file():
        raise InputNotFound(f"`image` {image}: no such file")
    if not text or not text.strip():
        raise ConfigError("`text` is empty")
    if steps < 1:
        raise ConfigError(f"`steps` must be at least 1, got {steps}")
    model, cfg = load_model(run, checkpoint, device)
    expl = explain_pair(model, image, text, method, steps, cfg.data.max_pixels)
    prefix = out or f"explain-{Path(image).stem}"
    expl.save(Path(f"{prefix}.png"), Path(f"{prefix}.json"))
    return expl


def caption(run: str | Path, image: str | Path | Sequence[str | Path] = (), *, captions: str | Path | None = None,
            data: str | Path | None = None, split: str | None = None, pool_split: str = "train",
            score: bool = False, k: int = 5, neighbours: int = DEFAULT_NEIGHBOURS, weight: float = DEFAULT_WEIGHT,
            top_m: int = DEFAULT_TOP_M,
            json: str | Path | None = None, checkpoint: str = "best", device: str = "auto",
            progress: bool = True) -> dict:
    """Captions proposed for images from a pool of existing captions, by retrieval and consensus
    (``crossalign caption``); with ``score``, every image of a split captioned and scored
    (BLEU-1..4, CIDEr-D) against its own captions.

    Args:
        run: a run folder.
        image: image files to caption.
        captions: the caption pool as a text file, one a line.
        data: or a data folder's captions as the pool (default: the one the run trained on).
        split: the pool's split (default train); with ``score``, the split captioned (default test).
        pool_split: with ``score``: the pool's split.
        score: caption every image of ``split`` and score the captions.
        k: proposals per image.
        neighbours: nearest pool items whose captions compete.
        weight: share of the image-caption cosine in the score.
        top_m: consensus over each candidate's M most similar others (0: all).
        json: also write the result to this JSON file.
        checkpoint: ``best`` or ``last``.
        device: ``cpu`` or ``cuda``.
        progress: progress bars.

    Returns:
        ``{"images": [{"image", "proposals": [...]}]}``, or with ``score`` the scores.
    """
    from crossalign.caption.nearest import propose, score_split
    from crossalign.distributed import resolve_device
    from dataclasses import asdict

    device = resolve_device(device)

    images = [image] if isinstance(image, (str, Path)) else list(image)
    if score == bool(images):
        raise ConfigError("give `image` (one or more) to caption images, or `score` to score a split")
    if score:
        if captions:
            raise ConfigError("`score` takes its pool from `data`'s `pool_split`, not `captions`")
        out = score_split(run, data, split or "test", pool_split, neighbours, weight, top_m, checkpoint, device,
                          progress=progress)
    else:
        if captions and data:
            raise ConfigError("give `captions` FILE or `data` DIR as the caption pool, not both")
        found = propose(run, images, captions=captions, data=data, split=split or "train", k=k,
                        neighbours=neighbours, weight=weight, top_m=top_m, which=checkpoint, device=device,
                        progress=progress)
        out = {"images": [{"image": str(i), "proposals": [asdict(p) for p in props]}
                          for i, props in zip(images, found)]}
    _write_json(json, out)
    return out
