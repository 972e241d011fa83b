"""``crossalign.index``: a FAISS index over a collection's images and captions, and search.

``build_index(run, out, images=FOLDER)`` (or ``data=DIR``) embeds a collection with a
trained run into an index folder, incrementally; ``open_index(out).search(text=...)``
searches it by text, by image, or by both, with weights and terms pushed away, narrowed by
``Filters`` (split, folder, date, labels) and a ``min_score`` cut-off.
``build_from_embeddings(run, out, parts)`` builds it from the partitions ``crossalign embed``
wrote, embedding nothing again.
"""

from crossalign.index.build import BuildSummary, build_from_embeddings, build_index
from crossalign.index.search import Filters, Hit, Index, SearchResult, open_index

__all__ = ["build_index", "build_from_embeddings", "open_index", "Index", "Hit", "SearchResult", "BuildSummary", "Filters"]
