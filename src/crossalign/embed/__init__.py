"""``crossalign.embed``: the one room where items become vectors.

Evaluation, the report, :func:`crossalign.load` and the index all embed through here, so
an item gets the same vector whichever door it comes in by. Every function takes a
:class:`~crossalign.models.dual.DualEncoder` (``crossalign.load(run).model``) and returns
L2-normalised vectors ``[n, embed_dim]`` as float32 numpy arrays.

- :func:`embed_images` ``(model, paths, *, cache_root=None, device="cpu", batch_size=64,
  max_pixels=..., progress=False, dist=None, workers=0) -> ImageVectors``: image files; ``.paths``
  are the readable ones in input order (each once), ``.vectors`` their vectors and
  ``.failed`` maps every other path to the ``ImageError`` that names why. A frozen image
  tower reads and fills the feature cache under ``cache_root``; ``workers`` processes decode
  through a ``torch.utils.data.DataLoader`` (same vectors, same failures).
- :func:`embed_pictures` ``(model, images, *, device, batch_size, max_pixels) -> ndarray``:
  paths, file bytes (an upload) or PIL images, all through ``load_image``'s checks and
  conversion (EXIF rotation, transparency on white, 16-bit scaling); raises ``ImageError``.
- :func:`embed_texts` ``(model, texts, *, cache_root=None, device, batch_size, progress,
  dist) -> ndarray``: captions, prompts or queries.
- :func:`embed_table` ``(model, table, *, cache_root=None, device, batch_size, max_pixels,
  strict=False, progress, workers=0) -> EmbeddedTable``: every image and caption of a
  :class:`~crossalign.data.table.PairTable`; rows whose image failed are dropped and
  listed in ``.problems`` (one per row, named by file and row), or raise with ``strict``.
- Test-time flip averaging (``model.image.tta_flip``, read from the model's config by
  every function above, so every door sees the same vectors): an image's vector is the
  normalised mean of its own and its horizontal mirror's; :func:`tta_flip` says whether
  a model does it. A frozen tower caches the mirror's features (key suffix ``:flip``).
- Tower outputs before the heads, for training's feature mode: :func:`image_features`,
  :func:`text_features` and :func:`project` (``TowerOutputs``).
- Decoding for training: :class:`DecodeImages` (the dataset every image goes through) and
  :func:`decode_loader` (its ``DataLoader``, workers seeded privately, batches stacked in
  the workers as :class:`Decoded`, channels-last when the tower wants it).
- Query texts through ONNX Runtime: :class:`OnnxText` ``(model, threads=1)`` exports a
  transformers text tower with its head in memory; calling it gives the same unit vectors
  as :func:`embed_texts` (to float rounding); :func:`onnx_supported` says why a model's text
  side cannot (a from-scratch tower, no onnxruntime).

This room imports the data, model and feature-cache rooms only; training and evaluation
import it, never the other way.
"""

from crossalign.embed._collection import (FLIP_SUFFIX, EmbeddedTable, ImageVectors, embed_images,
                                          embed_pictures, embed_table, embed_texts, tta_flip)
from crossalign.embed._onnx import OnnxText, onnx_supported
from crossalign.embed._towers import (Collate, DecodeImages, Decoded, TowerOutputs, decode_loader,
                                      image_features, mirror, project, text_features, wants_channels_last)

__all__ = ["embed_images", "embed_pictures", "embed_texts", "embed_table", "tta_flip", "ImageVectors",
           "EmbeddedTable", "image_features", "text_features", "project", "TowerOutputs", "DecodeImages",
           "Decoded", "Collate", "decode_loader", "wants_channels_last", "mirror", "FLIP_SUFFIX",
           "OnnxText", "onnx_supported"]
