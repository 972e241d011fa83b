"""The notebook-facing API: the same power as the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from crossalign.config import RunConfig, load_config

__all__ = ["train", "resume", "tune", "load", "Aligner", "embed", "EmbedSummary"]


def _config(config: str | Path | RunConfig | None, overrides: Sequence[str]) -> RunConfig:
    from crossalign.config import apply_overrides

    if isinstance(config, RunConfig):
        return apply_overrides(config, list(overrides))
    return load_config(config, list(overrides))


def _search_config(auto, dist):
    from crossalign.errors import ConfigError
    from crossalign.train.search import SearchConfig

    if dist is not None and dist.world_size > 1:
        raise ConfigError("--auto searches in one process; start it without --nproc or torchrun")
    return auto if isinstance(auto, SearchConfig) else SearchConfig()


def train(data: str | Path, out: str | Path, config: str | Path | RunConfig | None = None,
          overrides: Sequence[str] = (), progress: bool = True, dist=None, auto=False):
    """Train on ``data`` into the run folder ``out``; returns a :class:`TrainResult`.

    Args:
        data: data folder (any supported layout).
        out: run folder to create.
        config: a YAML path or a :class:`RunConfig` (defaults otherwise).
        overrides: ``key=value`` strings, as ``--set`` takes.
        auto: True, or a :class:`~crossalign.train.search.SearchConfig`: search the recipe on
            held-out training data first (see :func:`tune`; ``config`` is the base recipe), then
            train the chosen one; the run folder also holds the search's records.
    """
    from crossalign.train.loop import train as _train

    cfg = _config(config, overrides)
    if auto:
        from crossalign.train.search import auto_train

        return auto_train(data, out, cfg, _search_config(auto, dist), progress)[1]
    return _train(data, out, cfg, progress=progress, dist=dist)


def resume(run: str | Path, progress: bool = True, dist=None, auto=False):
    """Continue a stopped run from its latest resume point; returns a :class:`TrainResult`.

    With ``auto`` (a run of ``train(..., auto=...)``) the search continues first, to the trial
    count or budget of the given SearchConfig when set, then the fit resumes or starts.
    """
    from crossalign.train.loop import resume as _resume

    if auto:
        from crossalign.train.search import auto_train

        return auto_train(None, run, None, _search_config(auto, dist), progress, resume=True)[1]
    return _resume(run, progress=progress, dist=dist)


def tune(data: str | Path | None, out: str | Path, config: str | Path | RunConfig | None = None,
         overrides: Sequence[str] = (), search=None, progress: bool = True, resume: bool = False,
         **settings):
    """Search the recipe for ``data`` into ``out`` without the final fit (``crossalign tune``).

    Frozen towers' features are extracted once; each trial trains only the heads. Trials are
    scored on the val split, or by K-fold cross-validation over train + val when the val split
    is small; never on test. Returns a :class:`~crossalign.train.search.TuneResult`; the folder
    holds ``study.journal``, ``trials.csv``, ``search.json`` and the chosen ``config.yaml``.

    Args:
        data: data folder (None with ``resume``: the one the search used).
        out: the search folder.
        config: the base recipe, a YAML path or a :class:`RunConfig` (defaults otherwise).
        overrides: ``key=value`` strings for the base recipe.
        search: a :class:`~crossalign.train.search.SearchConfig`; or give its fields as keywords
            (``trials=40``, ``budget="10m"``, ``towers=["lite0", "lite0+lite2"]``, ``folds=5``, ...).
        resume: continue the search stored in ``out``; ``trials`` and ``budget`` may be given anew.
    """
    import dataclasses

    from crossalign.train import search as _search

    settings = {k: v for k, v in settings.items() if v is not None}
    if "budget" in settings:
        settings["budget"] = _search.parse_budget(settings["budget"])
    if "towers" in settings:
        settings["towers"] = tuple(settings["towers"])
    if resume:
        return _search.resume_search(out, settings.get("trials"), settings.get("budget"), progress)
    chosen = dataclasses.replace(search or _search.SearchConfig(), **settings)
    return _search.tune(data, out, _config(config, overrides), chosen, progress)


class Aligner:
    """A trained model ready to embed: normalised vectors, batched, with the run's preprocessing.

    Both methods go through :mod:`crossalign.embed`, the same path evaluation and the index
    use, so an image embeds the same way from a path, from its bytes or as a PIL image.
    """

    def __init__(self, model, cfg: RunConfig, device: str = "cpu") -> None:
        self.model, self.cfg, self.device = model, cfg, device

    def encode_image(self, images, batch_size: int = 64) -> np.ndarray:
        """``[n, embed_dim]`` for image paths, file bytes or PIL images (one alone: ``[1, embed_dim]``).

        Every image goes through ``load_image`` (EXIF rotation, transparency on white, 16-bit
        scaling, the run's ``data.max_pixels``). Raises ``ImageError`` naming a bad one.
        """
        from crossalign.embed import embed_pictures

        if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or hasattr(images, "convert"):
            images = [images]
        return embed_pictures(self.model, list(images), device=self.device, batch_size=batch_size,
                              max_pixels=self.cfg.data.max_pixels)

    def encode_text(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """``[n, embed_dim]`` for a list of strings (a single string gives ``[1, embed_dim]``)."""
        from crossalign.embed import embed_texts

        if isinstance(texts, str):
            texts = [texts]
        return embed_texts(self.model, list(texts), device=self.device, batch_size=batch_size)

    def explain(self, image, text: str, method: str = "layercam", steps: int = 32):
        """Which regions of ``image`` and which words of ``text`` made them close: an
        :class:`~crossalign.explain.Explanation` (``.save(png, json)`` writes its picture and JSON)."""
        from crossalign.explain import explain_pair

        return explain_pair(self.model, image, text, method, steps, self.cfg.data.max_pixels)


def load(run: str | Path, which: str = "best", device: str = "cpu", pair_weights: str = "") -> Aligner:
    """Open a run folder's checkpoint (safetensors; nothing is unpickled) for embedding, or a
    pretrained pair as it is, before any training: ``"hf:FOLDER"`` (a CLIPModel or
    SiglipModel) or ``"open_clip:NAME"`` with ``pair_weights`` (a checkpoint file or a
    pretrained tag). A pair's vectors are its library's own, normalised
    (``get_image_features`` / ``get_text_features``, ``encode_image`` / ``encode_text``)."""
    from crossalign.runs import is_pair_spec, load_model, load_pair

    if is_pair_spec(run):
        model, cfg = load_pair(str(run), pair_weights, device)
        return Aligner(model, cfg, device)
    if pair_weights:
        from crossalign.errors import ConfigError

        raise ConfigError(f"pair_weights is for a pair (open_clip:NAME), not the run folder {run}")
    model, cfg = load_model(run, which, device)
    return Aligner(model, cfg, device)


class EmbedSummary:
    """What one embed task did: the units it owns, and which it wrote or found done."""

    def __init__(self, units: list[int], written: list[int], skipped: list[int], n_units: int) -> None:
        self.units, self.written, self.skipped, self.n_units = units, written, skipped, n_units


def _units(data: str | Path, cfg, run, partition_size: int) -> tuple[list, object]:
    """The work units: one per shard for webdataset shards (a folder, a file or a pattern),
    else chunks of ``partition_size`` images of the table (read once)."""
    from crossalign.data.formats import detect_format
    from crossalign.data.prepare import prepare_table
    from crossalign.data.readers.shards import shard_files

    path = Path(data)
    pattern = "{" in str(path) and not path.exists()
    if pattern or (path.exists() and detect_format(path, cfg.data) == "webdataset"):
        return shard_files(path), None
    table, _ = prepare_table(path, cfg.data, run_dir=run, quiet=True)
    ids = list(dict.fromkeys(table.image_id))
    return [ids[s:s + partition_size] for s in range(0, len(ids), partition_size)], table


def _unit_table(unit, table, cfg):
    from crossalign.data.prepare import prepare_table

    if table is None:  # a shard: read on its own, so a task reads only its shards
        return prepare_table(unit, cfg.data, quiet=True)[0]
    keep = set(unit)
    return table.take([r for r, i in enumerate(table.image_id) if i in keep])


def _partition_rows(emb) -> tuple[list[dict], list[dict]]:
    from crossalign.data.members import source_hash
    from crossalign.data.transforms import file_date

    t, first = emb.table, {}
    for r, iid in enumerate(t.image_id):
        first.setdefault(iid, r)
    images = []
    for iid in emb.image_ids:
        r = first[iid]
        path = t.image_path[r]
        images.append({"image_id": iid, "path": path, "split": t.split[r], "content_hash": source_hash(path),
                       "date": file_date(path),
                       "labels": {c: v[r] for c, v in t.labels.items() if v[r] is not None}})
    captions = [{"image": int(emb.text_to_image[r]), "caption": t.caption[r], "origin": t.origin[r]}
                for r in range(len(t.caption))]
    return images, captions


def embed(run: str | Path, data: str | Path, out: str | Path, shard: tuple[int, int] = (0, 1),
          partition_size: int = 10_000, which: str = "best", device: str = "cpu",
          progress: bool = True) -> EmbedSummary:
    """Embed ``data`` with ``run`` into partitions under ``out`` (``crossalign embed``).

    Task ``i`` of ``n`` (``shard=(i, n)``) takes units ``i, i + n, ...``: one unit per tar
    shard, or per ``partition_size`` images of any other layout. A unit whose partition is
    already written is skipped, so a task may simply be run again after a failure; see
    :mod:`crossalign.embed.partitions` for the layout. ``crossalign index RUN
    --from-embeddings OUT`` builds the index from the partitions.
    """
    from crossalign.embed import embed_table
    from crossalign.embed.partitions import is_done, write_partition
    from crossalign.errors import ConfigError
    from crossalign.features import weights_hash
    from crossalign.runs import open_run

    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {i}/{n}: give i/N with 0 <= i < N")
    if partition_size < 1:
        raise ConfigError(f"--partition-size must be at least 1, got {partition_size}")
    rd = open_run(run, None, which, device, quiet=True)
    units, table = _units(data, rd.cfg, run, partition_size)
    mine = list(range(i, len(units), n))
    whash, written, skipped = weights_hash(rd.model), [], []
    for u in mine:
        if is_done(out, u):
            skipped.append(u)
            continue
        emb = embed_table(rd.model, _unit_table(units[u], table, rd.cfg), cache_root=rd.cache_root,
                          device=device, batch_size=rd.cfg.train.eval_batch_size,
                          max_pixels=rd.cfg.data.max_pixels, progress=progress)
        images, captions = _partition_rows(emb)
        (written if write_partition(out, u, whash, emb.image_emb, emb.text_emb, images, captions)
         else skipped).append(u)
    return EmbedSummary(mine, written, skipped, len(units))
