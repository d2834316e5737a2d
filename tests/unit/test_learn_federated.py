"""Federated averaging, dense and sparse."""
from __future__ import annotations

import numpy as np
import pytest

from cstore.learn.federated import fedavg, fedavg_sparse


def test_fedavg_weights_by_sample_count_by_hand():
    d1 = np.array([1.0, 2.0, -4.0])
    d2 = np.array([3.0, 6.0, 0.0])
    # (1 * d1 + 3 * d2) / 4 = ([1, 2, -4] + [9, 18, 0]) / 4 = [2.5, 5.0, -1.0]
    np.testing.assert_allclose(fedavg([d1, d2], [1, 3]), [2.5, 5.0, -1.0])
    np.testing.assert_allclose(fedavg([d1], [7]), d1)


def test_fedavg_keeps_float32_and_does_not_mutate():
    d1, d2 = np.ones((2, 2), np.float32), np.full((2, 2), 3.0, np.float32)
    out = fedavg([d1, d2], [1, 1])
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, 2.0)
    np.testing.assert_array_equal(d1, 1.0)
    assert fedavg([np.array([1, 2])], [1]).dtype == np.float64  # ints average to floats


@pytest.mark.parametrize("deltas, counts, match", [
    ([], [], "at least one"),
    ([np.zeros(2), np.zeros(3)], [1, 1], "shape"),
    ([np.zeros(2)], [1, 1], "one sample count per delta"),
    ([np.zeros(2), np.zeros(2)], [1, 0], "positive int"),
    ([np.zeros(2)], [-3], "positive int"),
    ([np.zeros(2)], [1.5], "positive int"),
    ([np.array([1.0, np.nan])], [1], "NaN or inf"),
    ([np.array([1.0, np.inf])], [1], "NaN or inf"),
    ([np.array(["a"])], [1], "numeric"),
])
def test_fedavg_validates(deltas, counts, match):
    with pytest.raises(ValueError, match=match):
        fedavg(deltas, counts)


def test_sparse_by_hand_and_equal_to_dense():
    updates = [
        (np.array([0, 2]), np.array([3.0, 1.0]), 1),
        (np.array([2, 5]), np.array([4.0, -2.0]), 3),
    ]
    idx, val = fedavg_sparse(updates)
    # index 0: 1*3 / 4 = 0.75; index 2: (1*1 + 3*4) / 4 = 3.25; index 5: 3*(-2) / 4 = -1.5
    assert idx.tolist() == [0, 2, 5]
    np.testing.assert_allclose(val, [0.75, 3.25, -1.5])

    rng = np.random.default_rng(0)
    dense, sparse, counts = [], [], []
    for c in (5, 1, 12):
        i = np.sort(rng.choice(50, size=10, replace=False))
        v = rng.normal(size=10)
        d = np.zeros(50)
        d[i] = v
        dense.append(d)
        sparse.append((i, v, c))
        counts.append(c)
    idx, val = fedavg_sparse(sparse)
    expected = fedavg(dense, counts)
    np.testing.assert_allclose(val, expected[idx])
    assert not np.delete(expected, idx).any()


@pytest.mark.parametrize("updates, match", [
    ([], "at least one"),
    ([(np.array([1, 1]), np.array([1.0, 2.0]), 1)], "unique"),
    ([(np.array([-1]), np.array([1.0]), 1)], "non-negative"),
    ([(np.array([1]), np.array([1.0, 2.0]), 1)], "equal length"),
    ([(np.array([1]), np.array([np.nan]), 1)], "NaN"),
    ([(np.array([1]), np.array([1.0]), 0)], "positive int"),
])
def test_fedavg_sparse_validates(updates, match):
    with pytest.raises(ValueError, match=match):
        fedavg_sparse(updates)
