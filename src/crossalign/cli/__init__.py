"""crossalign.cli."""
