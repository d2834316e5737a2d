"""Online-learning maths for cstore: feature hashing (of rows, or of columns), sparse logistic
regression, per-coordinate optimizers, drift detection, learning-rate
scheduling, per-event passes over a micro-batch and federated averaging.

Everything here is pure numpy with no I/O; persistence is the storage
layer's job (detectors and schedules expose plain-dict ``get_state``).

>>> h = FeatureHasher(n_features=2**10)
>>> opt = FTRLProximal()
>>> state = opt.init_state(h.n_features)
>>> indptr, idx, val = h.transform_many([{"amount": 1.0, "country": "FR"}])
>>> g = batch_gradient(state["w"], 0.0, indptr, idx, val, np.array([1.0]))
>>> new = opt.apply({k: state[k][g.indices] for k in opt.state_params}, g.values)
>>> bool((new["w"] > 0).all())  # positive example: weights move up
True
"""

import numpy as np  # noqa: F401  (the docstring's example uses it)

from cstore.learn.adwin import ADWIN
from cstore.learn.columns import hash_columns
from cstore.learn.drift import DriftConfirmer, PageHinkley, detector_from_state
from cstore.learn.federated import fedavg, fedavg_sparse
from cstore.learn.guard import GuardRule, GuardWindow, auc
from cstore.learn.hashing import FeatureHasher
from cstore.learn.label_rate import LabelRateCUSUM
from cstore.learn.logistic import (
    SparseGradient,
    batch_gradient,
    log_loss,
    predict_proba,
    predict_proba_batch,
    sigmoid,
)
from cstore.learn.optimizers import SGD, AdaGrad, FTRLProximal, optimizer_from_config
from cstore.learn.sequential import MAX_STEPS, SequentialResult, positions, replay, sequential_pass
from cstore.learn.schedule import KIND_WEIGHTS, AdaptiveLearningRate, age_weights, kind_weights, window_weights

__all__ = [
    "ADWIN",
    "KIND_WEIGHTS",
    "MAX_STEPS",
    "SGD",
    "AdaGrad",
    "AdaptiveLearningRate",
    "DriftConfirmer",
    "FTRLProximal",
    "FeatureHasher",
    "GuardRule",
    "GuardWindow",
    "LabelRateCUSUM",
    "PageHinkley",
    "SequentialResult",
    "SparseGradient",
    "age_weights",
    "auc",
    "batch_gradient",
    "detector_from_state",
    "fedavg",
    "fedavg_sparse",
    "hash_columns",
    "kind_weights",
    "log_loss",
    "optimizer_from_config",
    "positions",
    "predict_proba",
    "predict_proba_batch",
    "replay",
    "sequential_pass",
    "sigmoid",
    "window_weights",
]
