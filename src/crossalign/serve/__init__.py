"""crossalign.serve."""
