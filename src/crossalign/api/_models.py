"""``crossalign.load``, ``embed`` and ``export``: a run (or a pretrained model) opened to embed,
a collection embedded in partitions, a fine-tuned pretrained model written back."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from crossalign.config import RunConfig
from crossalign.errors import ConfigError

__all__ = ["load", "Aligner", "embed", "EmbedSummary", "export", "parse_shard"]


class Aligner:
    """A trained model ready to embed: normalised vectors, batched, with the run's preprocessing.

    Both methods go through :mod:`crossalign.embed`, the same path evaluation and the index
    use, so an image embeds the same way from a path, from its bytes or as a PIL image.
    """

    def __init__(self, model, cfg: RunConfig, device: str = "cpu") -> None:
        self.model, self.cfg, self.device = model, cfg, device  # the device the model is on

    def encode_image(self, images, batch_size: int = 64) -> np.ndarray:
        """``[n, embed_dim]`` for image paths, file bytes or PIL images (one alone: ``[1, embed_dim]``).

        Every image goes through ``load_image`` (EXIF rotation, transparency on white, 16-bit
        scaling, the run's ``data.max_pixels``). Raises ``ImageError`` naming a bad one.
        """
        from crossalign.embed.collection import embed_images

        if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or hasattr(images, "convert"):
            images = [images]
        return embed_images(self.model, list(images), device=self.device, batch_size=batch_size,
                              max_pixels=self.cfg.data.max_pixels)

    def encode_text(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """``[n, embed_dim]`` for a list of strings (a single string gives ``[1, embed_dim]``)."""
        from crossalign.embed.collection import embed_texts

        if isinstance(texts, str):
            texts = [texts]
        return embed_texts(self.model, list(texts), device=self.device, batch_size=batch_size)

    def explain(self, image, text: str, method: str = "layercam", steps: int = 32):
        """Which regions of ``image`` and which words of ``text`` made them close: an
        :class:`~crossalign.explain.pair.Explanation` (``.save(png, json)`` writes its picture and JSON)."""
        from crossalign.explain.pair import explain_pair

        return explain_pair(self.model, image, text, method, steps, self.cfg.data.max_pixels)


def load(run: str | Path, checkpoint: str = "best", device: str = "auto", pretrained_weights: str = "") -> Aligner:
    """Open a run folder's checkpoint (safetensors; nothing is unpickled) for embedding, or a
    pretrained model as it is, before any training: ``"hf:FOLDER"`` (a CLIPModel or
    SiglipModel) or ``"open_clip:NAME"`` with ``pretrained_weights`` (a checkpoint file or a
    pretrained tag). A pretrained model's vectors are its library's own, normalised
    (``get_image_features`` / ``get_text_features``, ``encode_image`` / ``encode_text``)."""
    from crossalign.distributed import resolve_device
    from crossalign.runs import is_pretrained_spec, load_model, load_pretrained

    device = resolve_device(device)

    if is_pretrained_spec(run):
        model, cfg = load_pretrained(str(run), pretrained_weights, device)
        return Aligner(model, cfg, device)
    if pretrained_weights:
        raise ConfigError(f"`pretrained_weights` is for a pretrained model (open_clip:NAME), not the run "
                          f"folder {run}")
    model, cfg = load_model(run, checkpoint, device)
    return Aligner(model, cfg, device)


class EmbedSummary:
    """What one embed task did: the units it owns, and which it wrote or found done."""

    def __init__(self, units: list[int], written: list[int], skipped: list[int], n_units: int,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.units, self.written, self.skipped, self.n_units = units, written, skipped, n_units
        self.shard = shard


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


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/N"`` or ``(i, N)`` -> ``(i, N)``; empty: torchrun's RANK and WORLD_SIZE, else ``(0, 1)``."""
    import os

    if isinstance(shard, tuple):
        i, n = shard
    elif not shard:
        i, n = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    else:
        a, sep, b = shard.partition("/")
        if not (sep and a.strip().isdigit() and b.strip().isdigit()):
            raise ConfigError(f"`shard` {shard!r}: give i/N, e.g. 3/16")
        i, n = int(a), int(b)
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"`shard` {i}/{n}: give i/N with 0 <= i < N")
    return i, n


def embed(run: str | Path, data: str | Path | None = None, out: str | Path | None = None, *,
          shard: str | tuple[int, int] = "", partition_size: int = 10_000, checkpoint: str = "best",
          device: str = "auto", progress: bool = True) -> EmbedSummary:
    """Embed ``data`` with ``run`` into partitions under ``out`` (``crossalign embed``).

    Task ``i`` of ``n`` (``shard="i/n"``; default: torchrun's rank and world size, else the
    only task) takes units ``i, i + n, ...``: one unit per tar shard, or per ``partition_size``
    images of any other layout. A unit whose partition is already written is skipped, so a
    task may simply be run again after a failure; see :mod:`crossalign.embed.partitions` for
    the layout. ``index(run, out=..., from_embeddings=OUT)`` builds the index from them.
    """
    from crossalign.distributed import resolve_device
    from crossalign.embed.collection import embed_table
    from crossalign.embed.partitions import is_done, write_partition
    from crossalign.features import weights_hash
    from crossalign.runs import open_run

    device = resolve_device(device)

    if not data or not out:
        raise ConfigError("give `data` and `out`")
    i, n = parse_shard(shard)
    if partition_size < 1:
        raise ConfigError(f"`partition_size` must be at least 1, got {partition_size}")
    rd = open_run(run, None, checkpoint, device, quiet=True)
    units, table = _units(data, rd.cfg, run, partition_size)
    mine = list(range(i, len(units), n))
    whash, written, skipped = weights_hash(rd.model), [], []
    for u in mine:
        if is_done(out, u):
            skipped.append(u)
            continue
        emb = embed_table(rd.model, _unit_table(units[u], table, rd.cfg), cache_root=rd.cache_root,
                          device=device, batch_size=rd.cfg.runtime.eval_batch_size,
                          max_pixels=rd.cfg.data.max_pixels, progress=progress)
        images, captions = _partition_rows(emb)
        (written if write_partition(out, u, whash, emb.image_emb, emb.text_emb, images, captions)
         else skipped).append(u)
    return EmbedSummary(mine, written, skipped, len(units), (i, n))


def export(run: str | Path, *, out: str | Path | None = None, wise: float | None = None,
           checkpoint: str = "best") -> str:
    """Write the run of a pretrained model in the format of the library it came from
    (``crossalign export``): an ``hf:`` model as a folder ``CLIPModel`` / ``SiglipModel``
    ``.from_pretrained`` loads, an ``open_clip:`` model as a checkpoint file
    ``open_clip.create_model(NAME, pretrained=FILE)`` loads. ``wise`` writes the WiSE-FT ensemble
    ``(1 - wise) * zero-shot + wise * fine-tuned`` instead. Returns what was written, in words."""
    from crossalign.models.pretrained import export_pretrained
    from crossalign.models.wise import apply_wise
    from crossalign.runs import load_model

    if not out:
        raise ConfigError("give `out`: a new folder (hf:) or file (open_clip:)")
    model, _ = load_model(run, checkpoint)
    if wise is not None:
        apply_wise(model, wise)
    return export_pretrained(model, out)
