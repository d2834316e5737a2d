"""hash_columns gives exactly what transform_many gives for the same rows as
dicts (collisions, missing values, text forms), and declines what the per-row path would refuse."""
from __future__ import annotations

import numpy as np
import pytest

from cstore.learn import FeatureHasher, hash_columns


def _rows(columns, n):
    rows = []
    for r in range(n):
        row = {}
        for name, col in columns:
            v = col[r]
            if isinstance(v, bytes):
                v = v.decode("ascii")
            elif isinstance(v, float) and v != v:
                continue
            if v is None:
                continue
            row[name] = float(v) if isinstance(v, np.floating) else v
        rows.append(row)
    return rows


def _columns(rng, n, n_num=6, n_ascii=5, n_text=2):
    cols = []
    for j in range(n_num):
        col = rng.normal(size=n) * 10 ** rng.integers(0, 6)
        col[rng.random(n) < 0.2] = np.nan
        cols.append((f"num{j}", col))
    for j in range(n_ascii):
        cols.append((f"cat{j}", np.array([f"v{k}".encode() for k in rng.integers(0, 40, n)])))
    for j in range(n_text):
        cols.append((f"txt{j}", [None if k % 5 == 0 else f"é{k}" for k in rng.integers(0, 30, n)]))
    return cols


@pytest.mark.parametrize("n_features", [2**4, 2**8, 2**20])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_columns_hash_exactly_as_rows(n_features, seed):
    rng = np.random.default_rng(seed)
    n = 500
    cols = _columns(rng, n)
    h = FeatureHasher(n_features, seed=seed)
    got = hash_columns(h, cols, n)
    want = FeatureHasher(n_features, seed=seed).transform_many(_rows(cols, n))
    assert got is not None
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.tolist() == w.tolist()
    if n_features == 2**4:  # 13 features in 16 slots: most rows collide and are merged
        assert len(got[1]) < sum(len(r) for r in _rows(cols, n))


def test_empty_and_all_missing_rows():
    h = FeatureHasher(2**6)
    cols = [("a", np.array([np.nan, 1.0])), ("b", [None, "x"])]
    got = hash_columns(h, cols, 2)
    want = h.transform_many([{}, {"a": 1.0, "b": "x"}])
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
    empty = hash_columns(h, [], 3)
    assert empty[0].tolist() == [0, 0, 0, 0] and empty[1].size == 0


@pytest.mark.parametrize("cols", [
    [("a", np.array([np.inf, 1.0]))],                      # the per-row path raises
    [("a", np.array([3e39, 1.0]))],                        # over float32
    [("a", [1, "x"])],                                     # a number in a text column
    [("a", np.array([1, 2], np.int64))],                   # not one of the stored forms
    [("a", np.array([b"\xff", b"x"]))],                    # not ASCII
    [(1, np.array([1.0, 2.0]))],                           # a name that is not a str
    [("a", np.array([1.0]))],                              # the wrong length
])
def test_what_the_row_path_refuses_is_declined(cols):
    assert hash_columns(FeatureHasher(2**6), cols, 2) is None
