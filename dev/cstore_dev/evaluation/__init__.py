"""``cstore eval``: prequential (test-then-train) learning quality of the whole system, compared with River.

A stream goes through the real system — the client scores each event from its cached model, the label
goes back as feedback, workers learn micro-batches and commit them to Cassandra, the client refreshes —
and, in the same run and order, through River's in-memory logistic regression and a frozen model.
See :func:`cstore_dev.evaluation.run.evaluate` and ``benchmarks/QUALITY.md``.

River and matplotlib are optional (cstore-dev's eval extra: ``pip install -e './dev[eval]'``); nothing
outside this package imports them.
"""
from cstore_dev.evaluation.datasets import DATASETS, Stream, load
from cstore_dev.evaluation.run import AUC_TOLERANCE, evaluate, summary_line

__all__ = ["AUC_TOLERANCE", "DATASETS", "Stream", "evaluate", "load", "summary_line"]
