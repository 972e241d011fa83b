"""Training: the loop, checkpoints, resume state, schedules, logs.

The notebook entry points are :func:`crossalign.api.train` and :func:`crossalign.api.resume`
(``crossalign train`` on the command line); :mod:`crossalign.train.loop` holds them with a
resolved :class:`~crossalign.config.RunConfig`. The recipe search (:func:`crossalign.api.tune`,
``crossalign tune`` and ``train --auto``) is :mod:`crossalign.train.search`, over
:mod:`~crossalign.train.space`, :mod:`~crossalign.train.trial` and :mod:`~crossalign.train.folds`.
"""
