"""The captioning room: captions proposed from the aligned space, by retrieval and consensus
(:mod:`crossalign.caption.nearest`), which :func:`crossalign.caption` calls."""
