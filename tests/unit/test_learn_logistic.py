"""Sparse logistic regression: stability, batch/row agreement, exact gradient."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cstore.learn.logistic import (
    batch_gradient,
    log_loss,
    predict_proba,
    predict_proba_batch,
    sigmoid,
)


def _problem(seed: int = 0, m: int = 7, d: int = 12):
    rng = np.random.default_rng(seed)
    nnz = rng.integers(0, 5, size=m)
    nnz[2] = 0  # an empty row
    indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    indices = rng.integers(0, d, size=indptr[-1]).astype(np.int64)
    indices[indptr[0]:indptr[0] + 2] = 3  # a duplicate index inside row 0
    values = rng.normal(size=indptr[-1])
    labels = rng.random(m)  # soft labels are allowed
    labels[:3] = [1.0, 0.0, 1.0]
    sw = rng.uniform(0.1, 2.0, size=m)
    w = rng.normal(scale=0.7, size=d)
    return w, 0.3, indptr, indices, values, labels, sw


def test_sigmoid_is_stable_and_symmetric():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])
        s = sigmoid(x)
        assert s[0] == 0.0 and s[-1] == 1.0 and s[3] == 0.5
        np.testing.assert_allclose(s + sigmoid(-x), 1.0, rtol=0, atol=1e-15)
        assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0
        assert sigmoid(-40.0) == pytest.approx(math.exp(-40.0), rel=1e-12)  # no 1-1 cancellation


def test_log_loss_clips():
    assert log_loss(0.5, 1) == pytest.approx(math.log(2))
    assert log_loss(0.0, 1.0) == pytest.approx(-math.log(1e-15))
    # 1 - (1 - 1e-15) is 1.11e-15 in float64, hence the looser tolerance.
    assert log_loss(1.0, 0.0) == pytest.approx(-math.log(1e-15), rel=1e-4)
    assert log_loss(1.0, 1.0) < 1e-14
    np.testing.assert_allclose(log_loss(np.array([0.25, 0.75]), np.array([0.0, 1.0])), [-math.log(0.75)] * 2)


def test_batch_and_row_predictions_agree():
    w, b, indptr, indices, values, *_ = _problem()
    batch = predict_proba_batch(w, b, indptr, indices, values)
    assert batch.shape == (len(indptr) - 1,)
    for r in range(len(batch)):
        sl = slice(indptr[r], indptr[r + 1])
        assert predict_proba(w, b, indices[sl], values[sl]) == pytest.approx(batch[r], rel=1e-12)
    assert batch[2] == pytest.approx(sigmoid(b))  # empty row: bias only


def _total_loss(w, b, indptr, indices, values, labels, sw):
    # Independent of the module: sum_i s_i * logloss_i by a plain loop.
    tot = 0.0
    for r in range(len(labels)):
        z = b + sum(w[indices[k]] * values[k] for k in range(indptr[r], indptr[r + 1]))
        p = 1.0 / (1.0 + math.exp(-z))
        tot += sw[r] * -(labels[r] * math.log(p) + (1 - labels[r]) * math.log(1 - p))
    return tot


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_central_differences(seed):
    w, b, indptr, indices, values, labels, sw = _problem(seed)
    g = batch_gradient(w, b, indptr, indices, values, labels, sw)
    assert g.indices.tolist() == sorted(set(indices.tolist()))
    assert g.n == len(labels) and g.weight_sum == pytest.approx(sw.sum())
    assert g.loss * g.weight_sum == pytest.approx(_total_loss(w, b, indptr, indices, values, labels, sw), rel=1e-10)

    h = 1e-6
    dense = np.zeros_like(w)
    dense[g.indices] = g.values
    for j in range(len(w)):
        wp, wm = w.copy(), w.copy()
        wp[j] += h
        wm[j] -= h
        fd = (_total_loss(wp, b, indptr, indices, values, labels, sw)
              - _total_loss(wm, b, indptr, indices, values, labels, sw)) / (2 * h)
        assert dense[j] == pytest.approx(fd, rel=1e-6, abs=1e-8), j
    fd_b = (_total_loss(w, b + h, indptr, indices, values, labels, sw)
            - _total_loss(w, b - h, indptr, indices, values, labels, sw)) / (2 * h)
    assert g.bias == pytest.approx(fd_b, rel=1e-6)


def test_sample_weights_scale_rows_and_default_to_one():
    w, b, indptr, indices, values, labels, _ = _problem(4)
    m = len(labels)
    g1 = batch_gradient(w, b, indptr, indices, values, labels)
    g2 = batch_gradient(w, b, indptr, indices, values, labels, np.full(m, 2.0))
    np.testing.assert_allclose(g2.values, 2 * g1.values)
    assert g2.bias == pytest.approx(2 * g1.bias) and g2.loss == pytest.approx(g1.loss)
    g0 = batch_gradient(w, b, indptr, indices, values, labels, np.zeros(m))
    assert not g0.values.any() and g0.bias == 0.0 and g0.loss == 0.0 and g0.weight_sum == 0.0


def test_float32_weights_and_values_are_accepted():
    w, b, indptr, indices, values, labels, sw = _problem(5)
    g64 = batch_gradient(w, b, indptr, indices, values, labels, sw)
    g32 = batch_gradient(w.astype(np.float32), b, indptr, indices, values.astype(np.float32), labels, sw)
    assert g32.values.dtype == np.float64
    np.testing.assert_allclose(g32.values, g64.values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(labels=np.array([1.5] * 7)), "labels"),
    (lambda a: a.update(labels=np.ones(3)), "labels"),
    (lambda a: a.update(sample_weights=-np.ones(7)), "sample_weights"),
    (lambda a: a.update(indices=a["indices"] + 100), "indices must be in"),
    (lambda a: a.update(indptr=a["indptr"][::-1].copy()), "indptr"),
    (lambda a: a.update(values=np.full_like(a["values"], np.nan)), "finite"),
])
def test_batch_gradient_validates(change, match):
    w, b, indptr, indices, values, labels, sw = _problem()
    args = dict(weights=w, bias=b, indptr=indptr, indices=indices, values=values, labels=labels,
                sample_weights=sw)
    change(args)
    with pytest.raises(ValueError, match=match):
        batch_gradient(**args)


def test_dense_and_sorted_gradient_sums_give_the_same_bits(monkeypatch):
    import cstore.learn.logistic as logistic
    rng = np.random.default_rng(3)
    n_features, rows, per_row = 2**14, 400, 12
    indices = rng.integers(0, n_features, size=rows * per_row)
    indptr = np.arange(0, rows * per_row + 1, per_row)
    values = rng.normal(size=rows * per_row)
    labels = (rng.random(rows) < 0.3).astype(float)
    w = rng.normal(size=n_features) * 0.1
    monkeypatch.setattr(logistic, "_DENSE_SUM_FACTOR", 10**9)
    dense = logistic.batch_gradient(w, 0.2, indptr, indices, values, labels)
    monkeypatch.setattr(logistic, "_DENSE_SUM_FACTOR", 0)
    ranked = logistic.batch_gradient(w, 0.2, indptr, indices, values, labels)
    assert np.array_equal(dense.indices, ranked.indices) and np.array_equal(dense.values, ranked.values)
    assert dense.indices.dtype == ranked.indices.dtype == np.int64
    assert np.all(np.diff(dense.indices) > 0) and dense.bias == ranked.bias
