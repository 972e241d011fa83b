"""Evaluation: embeddings, retrieval metrics, zero-shot classification, the ``evaluate`` entry point.

``crossalign.evaluate(run, data, split="test")`` calls :func:`crossalign.evaluate.run.evaluate`;
zero-shot classification is :func:`crossalign.evaluate.zeroshot.zeroshot`.
"""

from crossalign._callable import make_callable
from crossalign.evaluate.retrieval import retrieval_metrics, retrieve, topk
from crossalign.evaluate.run import RunData, evaluate, open_run

__all__ = ["evaluate", "open_run", "RunData", "retrieval_metrics", "retrieve", "topk"]

make_callable(__name__, evaluate)
