"""FeatureHasher: determinism, one-hot strings, collisions, validation, cache."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cstore.learn.hashing import FeatureHasher

REPO = Path(__file__).resolve().parents[2]
ROWS = [
    {"amount": 12.5, "country": "FR", "is_new": True, "n_items": 3, "city": "Paris"},
    {"amount": -0.25, "country": "DE", "is_new": False, "device": "ios"},
    {},
]


def _dump(h: FeatureHasher) -> list:
    return [[a.tolist(), b.tolist()] for a, b in (h.transform_one(r) for r in ROWS)]


def test_same_output_in_subprocess_with_other_hash_seed():
    code = (
        "import json; from cstore.learn.hashing import FeatureHasher; "
        f"rows = {ROWS!r}; h = FeatureHasher(2**18, seed=7); "
        "print(json.dumps([[a.tolist(), b.tolist()] for a, b in (h.transform_one(r) for r in rows)]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == _dump(FeatureHasher(2**18, seed=7))


def test_hash_is_keyed_blake2b_and_pinned():
    # The mapping name -> index is part of the stored model format: pin it.
    h = FeatureHasher(2**20, seed=0)
    digest = hashlib.blake2b(b"amount", digest_size=8, key=bytes(8)).digest()
    assert h.hash_token("amount") == int.from_bytes(digest, "little") % 2**20
    assert h.hash_token("amount") == 939974  # golden value: changing it invalidates stored weights
    assert FeatureHasher(2**20, seed=1).hash_token("amount") != h.hash_token("amount")


def test_numbers_strings_and_bools():
    h = FeatureHasher(2**20)
    idx, val = h.transform_one({"amount": 12.5, "country": "FR", "new": True, "old": False, "k": 3})
    assert idx.dtype == np.int64 and val.dtype == np.float32
    got = dict(zip(idx.tolist(), val.tolist()))
    assert got == {
        h.hash_token("amount"): 12.5,
        h.hash_token("country=FR"): 1.0,
        h.hash_token("new"): 1.0,
        h.hash_token("old"): 0.0,
        h.hash_token("k"): 3.0,
    }
    # numpy scalars behave like their Python counterparts
    i2, v2 = h.transform_one({"amount": np.float64(12.5), "k": np.int64(3), "new": np.bool_(True)})
    assert dict(zip(i2.tolist(), v2.tolist())) == {
        h.hash_token("amount"): 12.5, h.hash_token("k"): 3.0, h.hash_token("new"): 1.0}


def _colliding_pair(h: FeatureHasher) -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(1000):
        name = f"f{i}"
        j = h.hash_token(name)
        if j in seen:
            return seen[j], name
        seen[j] = name
    raise AssertionError("no collision among 1000 names in 16 buckets")


def test_collisions_sum_values():
    h = FeatureHasher(2**4)
    a, b = _colliding_pair(h)
    idx, val = h.transform_one({a: 1.5, b: 2.0, "zz": "q"})
    assert len(set(idx.tolist())) == len(idx)  # deduplicated
    got = dict(zip(idx.tolist(), val.tolist()))
    assert got[h.hash_token(a)] == pytest.approx(3.5)
    indptr, i2, v2 = h.transform_many([{a: 1.5, b: 2.0}])
    assert indptr.tolist() == [0, 1] and v2.tolist() == [3.5]


def test_transform_many_is_stacked_transform_one():
    h = FeatureHasher(2**12, seed=3)
    indptr, idx, val = h.transform_many(ROWS)
    assert indptr.tolist() == [0, 5, 9, 9]
    for r, row in enumerate(ROWS):
        i1, v1 = h.transform_one(row)
        assert idx[indptr[r]:indptr[r + 1]].tolist() == i1.tolist()
        assert val[indptr[r]:indptr[r + 1]].tolist() == v1.tolist()
    empty = h.transform_many([])
    assert [a.tolist() for a in empty] == [[0], [], []]


@pytest.mark.parametrize("n", [1000, 8, 2**27, True, 2.0**10])
def test_rejects_bad_n_features(n):
    with pytest.raises(ValueError, match="power of two"):
        FeatureHasher(n)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e39, 10**400, np.float64("nan")])
def test_rejects_non_finite_values_naming_the_feature(value):
    with pytest.raises(ValueError, match="'price'"):
        FeatureHasher(2**10).transform_one({"ok": 1.0, "price": value})


@pytest.mark.parametrize("row", [{"x": None}, {"x": [1, 2]}, {"x": 1 + 2j}, {3: 1.0}, {("a", "b"): 1.0}, [("x", 1.0)]])
def test_rejects_bad_names_values_and_rows(row):
    h = FeatureHasher(2**10)
    h.transform_one({"a": "b"})  # a cached ("a", "b") must not make the tuple name valid
    with pytest.raises(ValueError):
        h.transform_one(row)


def test_rejects_bad_seed_and_cache_size():
    with pytest.raises(ValueError, match="seed"):
        FeatureHasher(seed=-1)
    with pytest.raises(ValueError, match="cache_size"):
        FeatureHasher(cache_size=-5)


def test_cache_serves_repeats_and_stays_bounded(monkeypatch):
    h = FeatureHasher(2**16, cache_size=10)
    ref = FeatureHasher(2**16, cache_size=0)
    rows = [{f"n{i}": float(i), "cat": f"v{i}"} for i in range(100)]
    for r in rows:
        assert [a.tolist() for a in h.transform_one(r)] == [a.tolist() for a in ref.transform_one(r)]
    assert h.cache_len <= 20 and ref.cache_len == 0  # at most cache_size per cache

    warm = FeatureHasher(2**16)
    row = {"amount": 1.0, "country": "FR"}
    expected = [a.tolist() for a in warm.transform_one(row)]

    def boom(_token):
        raise AssertionError("cache miss on a repeated feature")

    monkeypatch.setattr(warm, "hash_token", boom)
    assert [a.tolist() for a in warm.transform_one(row)] == expected
