"""The evaluation room: retrieval metrics (:mod:`~crossalign.evaluate.retrieval`), ranking
(:mod:`~crossalign.evaluate.ranking`), chance levels, label agreement, zero-shot
classification (:mod:`~crossalign.evaluate.zeroshot`) and the scoring of a run
(:func:`crossalign.evaluate.run.evaluate`), which :func:`crossalign.evaluate` calls.
"""
