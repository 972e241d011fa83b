"""The embedding room: the one place where items become vectors (:func:`crossalign.embed`
writes a collection's vectors into partitions through it).

Evaluation, the report, :func:`crossalign.load` and the index all embed through here, so
an item gets the same vector whichever door it comes in by. Every function takes a
:class:`~crossalign.models.dual.DualEncoder` (``crossalign.load(run).model``) and returns
L2-normalised vectors ``[n, embed_dim]`` as float32 numpy arrays.

- :func:`~crossalign.embed.collection.embed_image_files` ``(model, paths, *, cache_root=None, device="cpu", batch_size=64,
  max_pixels=..., progress=False, dist=None, workers=0) -> ImageVectors``: image files; ``.paths``
  are the readable ones in input order (each once), ``.vectors`` their vectors and
  ``.failed`` maps every other path to the ``ImageError`` that names why. A frozen image
  tower reads and fills the feature cache under ``cache_root``; ``workers`` processes decode
  through a ``torch.utils.data.DataLoader`` (same vectors, same failures).
- :func:`~crossalign.embed.collection.embed_images` ``(model, images, *, device, batch_size, max_pixels) -> ndarray``:
  paths, file bytes (an upload) or PIL images, all through ``load_image``'s checks and
  conversion (EXIF rotation, transparency on white, 16-bit scaling); raises ``ImageError``.
- :func:`~crossalign.embed.collection.embed_texts` ``(model, texts, *, cache_root=None, device, batch_size, progress,
  dist) -> ndarray``: captions, prompts or queries.
- :func:`~crossalign.embed.collection.embed_table` ``(model, table, *, cache_root=None, device, batch_size, max_pixels,
  strict=False, progress, workers=0) -> EmbeddedTable``: every image and caption of a
  :class:`~crossalign.data.table.PairTable`; rows whose image failed are dropped and
  listed in ``.problems`` (one per row, named by file and row), or raise with ``strict``.
- Test-time flip averaging (``model.image.tta_flip``, read from the model's config by
  every function above, so every door sees the same vectors): an image's vector is the
  normalised mean of its own and its horizontal mirror's; :func:`~crossalign.embed.collection.tta_flip` says whether
  a model does it. A frozen tower caches the mirror's features (key suffix ``:flip``).
- Tower outputs before the heads, for training's feature mode: :func:`~crossalign.embed.towers.image_features`,
  :func:`~crossalign.embed.towers.text_features` and :func:`~crossalign.embed.towers.project` (``TowerOutputs``).
- Decoding for training: :class:`~crossalign.embed.towers.DecodeImages` (the dataset every image goes through) and
  :func:`~crossalign.embed.towers.decode_loader` (its ``DataLoader``, workers seeded privately, batches stacked in
  the workers as :class:`~crossalign.embed.towers.Decoded`, channels-last when the tower wants it).
- Query texts through ONNX Runtime: :class:`~crossalign.embed.onnx_text.OnnxText` ``(model, threads=1)`` exports a
  transformers text tower with its head in memory; calling it gives the same unit vectors
  as :func:`~crossalign.embed.collection.embed_texts` (to float rounding); :func:`~crossalign.embed.onnx_text.onnx_supported` says why a model's text
  side cannot (a from-scratch tower, no onnxruntime).

This room imports the data, model and feature-cache rooms only; training and evaluation
import it, never the other way.
"""
