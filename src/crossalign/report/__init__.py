"""crossalign.report."""
