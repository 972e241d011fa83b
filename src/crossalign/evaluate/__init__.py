"""Evaluation: embeddings, retrieval metrics, the ``evaluate`` entry point.

``crossalign.evaluate(run, data, split="test")`` calls :func:`crossalign.evaluate.run.evaluate`.
"""

from crossalign._callable import make_callable
from crossalign.evaluate.retrieval import retrieval_metrics
from crossalign.evaluate.run import evaluate

__all__ = ["evaluate", "retrieval_metrics"]

make_callable(__name__, evaluate)
