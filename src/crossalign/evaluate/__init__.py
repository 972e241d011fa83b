"""Evaluation: retrieval metrics, ranking, zero-shot classification, the ``evaluate`` entry point.

``crossalign.evaluate.evaluate(run, data, split="test")`` (also :func:`crossalign.api.evaluate`)
scores a run; zero-shot classification is :func:`crossalign.evaluate.zeroshot.zeroshot`.
"""

from crossalign.evaluate.retrieval import retrieval_metrics, retrieve, topk
from crossalign.evaluate.run import evaluate

__all__ = ["evaluate", "retrieval_metrics", "retrieve", "topk"]
