"""One reader per layout users already have; each returns a :class:`crossalign.data.table.PairTable`.

The registry, detection and :func:`~crossalign.data.formats.read_pairs` live in :mod:`crossalign.data.formats`.
"""
