"""Explain a match: heat maps over the image, attributions over the words, for one pair.

``explain_pair(model, image, text)`` gives an :class:`Explanation` (its ``save`` writes the
picture and JSON); :mod:`crossalign.explain.checks` measures whether the maps are faithful.
"""

from crossalign.explain.image import METHODS, crop_box, heat_in_frame, image_heat, target_layers
from crossalign.explain.pair import Explanation, explain_pair
from crossalign.explain.words import WordScores, split_words, word_scores

__all__ = ["explain_pair", "Explanation", "image_heat", "word_scores", "WordScores", "split_words",
           "target_layers", "heat_in_frame", "crop_box", "METHODS"]
