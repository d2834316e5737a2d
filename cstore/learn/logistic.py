"""Sparse logistic regression maths (pure numpy, no state).

Rows are given either as one ``(indices, values)`` pair or as a CSR
micro-batch ``(indptr, indices, values)`` as produced by
:class:`cstore.learn.hashing.FeatureHasher`. Duplicate indices inside a row
are allowed and behave as if their values were summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import numpy as np

__all__ = [
    "SparseGradient",
    "batch_gradient",
    "log_loss",
    "predict_proba",
    "predict_proba_batch",
    "sigmoid",
]

# Probabilities are clipped to [EPS, 1 - EPS] in the reported loss so one
# confidently-wrong prediction costs at most ~34.5 nats instead of inf,
# which keeps drift detectors fed with the loss well-behaved.
LOG_LOSS_EPS = 1e-15
_DENSE_SUM_FACTOR = 32  # dense summing pays off while n_features <= 32 x the batch's non-zeros


@dataclass(frozen=True)
class SparseGradient:
    """Gradient of ``sum_i s_i * logloss_i`` over a micro-batch.

    ``values`` and ``bias`` are *sums* over the batch (divide by
    ``weight_sum`` for a mean); ``loss`` is the weighted *mean* log loss.
    ``indices`` are unique and sorted, which is what the optimizers need.
    """

    indices: np.ndarray  # int64[k], unique, sorted
    values: np.ndarray  # float64[k]
    bias: float
    loss: float
    n: int
    weight_sum: float


def _sigmoid_scalar(z: float) -> float:
    # Branch so that exp() only ever sees a non-positive argument.
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@overload
def sigmoid(x: float) -> float: ...


@overload
def sigmoid(x: np.ndarray) -> np.ndarray: ...


def sigmoid(x: float | np.ndarray) -> float | np.ndarray:
    """Numerically stable logistic function; scalars in, float out.

    >>> sigmoid(0.0), round(sigmoid(-800.0), 3), sigmoid(800.0)
    (0.5, 0.0, 1.0)
    >>> sigmoid(np.array([-1.0, 1.0])).round(4).tolist()
    [0.2689, 0.7311]
    """
    if np.ndim(x) == 0:
        return _sigmoid_scalar(float(x))
    a = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(a))
    return np.where(a >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_loss(p: float | np.ndarray, y: float | np.ndarray) -> float | np.ndarray:
    """Binary log loss with ``p`` clipped to ``[1e-15, 1 - 1e-15]``.

    ``y`` may be a soft label in [0, 1].

    >>> round(log_loss(0.5, 1), 4), round(log_loss(0.0, 1), 2)
    (0.6931, 34.54)
    """
    pc = np.clip(np.asarray(p, dtype=np.float64), LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    ya = np.asarray(y, dtype=np.float64)
    out = -(ya * np.log(pc) + (1.0 - ya) * np.log1p(-pc))
    return float(out) if out.ndim == 0 else out


def predict_proba(weights: np.ndarray, bias: float, indices: np.ndarray, values: np.ndarray) -> float:
    """P(y=1) for one sparse row: ``sigmoid(w[indices] . values + bias)``.

    Not validated, for speed: ``indices`` must be non-negative and within
    ``weights`` (the hasher guarantees this).

    >>> w = np.array([0.0, 2.0, -1.0], dtype=np.float32)
    >>> round(predict_proba(w, 0.5, np.array([1, 2]), np.array([1.0, 1.0], dtype=np.float32)), 4)
    0.8176
    """
    return _sigmoid_scalar(float(np.dot(weights[indices], values)) + float(bias))


def _check_csr(n_weights: int, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> int:
    """Validate a CSR batch against a weight vector; return the row count."""
    if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0:
        raise ValueError("indptr must be 1-D with indptr[0] == 0 (length = rows + 1)")
    if indices.ndim != 1 or values.ndim != 1 or indices.size != values.size:
        raise ValueError(
            f"indices and values must be 1-D of equal length, got {indices.shape} and {values.shape}"
        )
    if indptr[-1] != indices.size or (indptr.size > 1 and np.any(np.diff(indptr) < 0)):
        raise ValueError("indptr must be non-decreasing and end at len(indices)")
    if indices.size and (indices.min() < 0 or indices.max() >= n_weights):
        raise ValueError(f"indices must be in [0, {n_weights}); hasher and weights disagree on size")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    return indptr.size - 1


def _margins(weights: np.ndarray, bias: float, indptr: np.ndarray, indices: np.ndarray,
             values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row margins and the row id of every stored entry."""
    m = indptr.size - 1
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
    contrib = weights[indices].astype(np.float64) * values
    # bincount keeps empty rows (margin = bias), unlike add.reduceat.
    return np.bincount(rows, weights=contrib, minlength=m) + float(bias), rows


def predict_proba_batch(weights: np.ndarray, bias: float, indptr: np.ndarray, indices: np.ndarray,
                        values: np.ndarray) -> np.ndarray:
    """P(y=1) for every row of a CSR micro-batch (float64[rows]).

    >>> w = np.array([0.0, 2.0, -1.0])
    >>> predict_proba_batch(w, 0.0, np.array([0, 1, 1]), np.array([1]), np.array([1.0])).round(4).tolist()
    [0.8808, 0.5]
    """
    indptr, indices, values = (np.asarray(a) for a in (indptr, indices, values))
    _check_csr(len(weights), indptr, indices, values)
    margins, _ = _margins(weights, bias, indptr, indices, values)
    return sigmoid(margins)


def batch_gradient(weights: np.ndarray, bias: float, indptr: np.ndarray, indices: np.ndarray,
                   values: np.ndarray, labels: np.ndarray,
                   sample_weights: np.ndarray | None = None) -> SparseGradient:
    """Summed gradient of the sample-weighted log loss over a micro-batch.

    For row ``i`` with probability ``p_i``, label ``y_i`` and weight ``s_i``
    the contribution to coordinate ``j`` is ``s_i (p_i - y_i) x_ij``: the
    exact derivative of the (unclipped) log loss. Coordinates shared by
    several rows are summed with ``np.bincount`` (over the dense index space
    when it is at most 32x the batch's non-zeros, else after ``np.unique``).

    >>> w = np.zeros(4)
    >>> g = batch_gradient(w, 0.0, np.array([0, 2, 3]), np.array([1, 3, 1]),
    ...                    np.array([1.0, 2.0, 1.0]), np.array([1.0, 0.0]))
    >>> g.indices.tolist(), g.values.tolist(), g.bias, round(g.loss, 4), g.n
    ([1, 3], [0.0, -1.0], 0.0, 0.6931, 2)
    """
    indptr, indices, values = (np.asarray(a) for a in (indptr, indices, values))
    m = _check_csr(len(weights), indptr, indices, values)
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != (m,) or not np.all((y >= 0.0) & (y <= 1.0)):
        raise ValueError(f"labels must be {m} finite values in [0, 1] (one per row)")
    if sample_weights is None:
        s = np.ones(m)
    else:
        s = np.asarray(sample_weights, dtype=np.float64)
        if s.shape != (m,) or not np.all(np.isfinite(s) & (s >= 0.0)):
            raise ValueError(f"sample_weights must be {m} finite, non-negative values (one per row)")
    if not math.isfinite(float(bias)):
        raise ValueError("bias must be finite")

    margins, rows = _margins(weights, bias, indptr, indices, values)
    p = sigmoid(margins)
    residual = s * (p - y)
    contrib = residual[rows] * values
    if len(weights) <= _DENSE_SUM_FACTOR * len(indices):
        # Sum into a dense vector: O(n_features + nnz) instead of sorting nnz indices. bincount adds
        # each bin's terms in input order either way, so both paths give the same bits.
        uniq = np.flatnonzero(np.bincount(indices, minlength=len(weights)))
        grad = np.bincount(indices, weights=contrib, minlength=len(weights))[uniq]
    else:
        uniq, inverse = np.unique(indices, return_inverse=True)
        grad = np.bincount(inverse.ravel(), weights=contrib, minlength=uniq.size)

    weight_sum = float(s.sum())
    # An all-zero-weight batch carries no information: report zero loss
    # rather than 0/0.
    loss = float(np.dot(s, log_loss(p, y)) / weight_sum) if weight_sum > 0.0 else 0.0
    return SparseGradient(
        indices=uniq.astype(np.int64, copy=False),
        values=grad,
        bias=float(residual.sum()),
        loss=loss,
        n=m,
        weight_sum=weight_sum,
    )
