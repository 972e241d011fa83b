"""The explanation room: heat maps over the image (:mod:`~crossalign.explain.image`),
attributions over the words (:mod:`~crossalign.explain.words`), for one pair.

:func:`crossalign.explain.pair.explain_pair` gives an ``Explanation`` (its ``save`` writes the
picture and JSON); :mod:`crossalign.explain.checks` measures whether the maps are faithful.
:func:`crossalign.explain` calls it.
"""

# the Grad-CAM-family methods of image heat maps; the default gave the most faithful maps of
# bench/bench_explain.py (its pointing game and deletion figures are in bench/RESULTS.md)
METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")
DEFAULT_METHOD = "layercam"
