"""Towers and the dual encoder.

Importing the package imports the tower modules, whose ``register`` calls fill the registry
(:mod:`crossalign.models.registry`), so every registered name is known wherever a tower is made.
"""

from crossalign.models import image, pretrained, scratch, text  # noqa: F401  (registers the towers)
