"""The index room: a FAISS index over a collection's images and captions, and search.

:func:`crossalign.index.build.build_index` embeds a collection with a trained run into an
index folder, incrementally, or :func:`~crossalign.index.build.build_from_embeddings` builds it
from the partitions ``crossalign embed`` wrote; :func:`crossalign.index.search.open_index`
opens it, and ``Index.search`` searches it by text, by image, or both, with weights and terms
pushed away, narrowed by ``Filters`` (split, folder, date, labels) and a ``min_score`` cut-off.
:func:`crossalign.index` and :func:`crossalign.search` call them.
"""
