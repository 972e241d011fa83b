"""The training room: the loop, checkpoints, resume state, schedules, logs, recipe search.

:func:`crossalign.train` and :func:`crossalign.tune` (``crossalign train``, ``crossalign tune``)
decide what to run; :mod:`crossalign.train.loop` trains a resolved
:class:`~crossalign.config.RunConfig`. The recipe search is :mod:`crossalign.train.tune`, over
:mod:`~crossalign.train.space`, :mod:`~crossalign.train.trial` and :mod:`~crossalign.train.folds`.
"""
