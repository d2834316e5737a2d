"""``cstore eval``: prequential (test-then-train) learning quality of the whole system, compared with River and
Vowpal Wabbit.

A stream goes through the real system — the client scores each event from its cached model, the label
goes back as feedback, workers learn micro-batches and commit them to Cassandra, the client refreshes —
and, in the same run and order, through River's and Vowpal Wabbit's per-event logistic regressions and a frozen
model.
See :func:`cstore_dev.evaluation.run.evaluate` and ``benchmarks/QUALITY.md``.

River, Vowpal Wabbit and matplotlib are optional (cstore-dev's eval extra: ``pip install -e './dev[eval]'``);
nothing outside this package imports them.
"""
from cstore_dev.evaluation.datasets import DATASETS, Stream, load
from cstore_dev.evaluation.run import AUC_TOLERANCE, LOGLOSS_TOLERANCE, evaluate, summary_line

__all__ = ["AUC_TOLERANCE", "DATASETS", "LOGLOSS_TOLERANCE", "Stream", "evaluate", "load", "summary_line"]
