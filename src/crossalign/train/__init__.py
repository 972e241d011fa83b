"""Training: the loop, checkpoints, distributed state.

``crossalign.train(data, out, ...)`` calls :func:`crossalign.api.train`.
"""


def __call_train(*args, **kwargs):
    from crossalign.api import train

    return train(*args, **kwargs)


from crossalign._callable import make_callable  # noqa: E402

make_callable(__name__, __call_train)
