"""crossalign.index."""
