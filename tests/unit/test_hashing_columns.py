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


def test_small_blocks_joined_hash_as_they_would_one_by_one():
    """A worker joins consecutive blocks with the same columns before hashing (a producer of small
    batches makes blocks of a few events); the arrays are those of hashing each block alone."""
    from cstore.feedback import ColumnSpan
    from cstore.training._batching import hash_rows, merged_columns
    rng = np.random.default_rng(3)
    spans, start = [], 0
    for size in (3, 1, 7, 5, 2):
        cols = [("amount", rng.normal(size=size)), ("merchant", np.array([f"m{k}" * (k % 4 + 1) for k in
                                                                           rng.integers(0, 9, size)], "S"))]
        if size == 7:  # a block whose text column holds a missing value: stored as a list, joined apart
            cols[1] = ("merchant", [None] + [f"m{k}" for k in range(size - 1)])
        spans.append(ColumnSpan(start, start + size, cols))
        start += size
    assert [n for _, n in merged_columns(spans)] == [4, 7, 7]
    h = FeatureHasher(2**8)
    indptr, idx, val, keep = hash_rows(h, [None] * start, list(range(start)), spans)
    alone = [hash_columns(FeatureHasher(2**8), s.columns, s.stop - s.start) for s in spans]
    assert idx.tolist() == [i for a in alone for i in a[1].tolist()]
    assert val.tolist() == [v for a in alone for v in a[2].tolist()]
    assert np.diff(indptr).tolist() == [c for a in alone for c in np.diff(a[0]).tolist()]


def test_a_batch_mixing_blocks_and_single_events_hashes_each_its_own_way_to_the_row_arrays(monkeypatch):
    """Producers mix ``send_batch`` (columnar blocks) and ``send`` (one event): the blocks whose events
    are all kept are hashed by column, the single events, an event whose row is refused and a block
    partly left out by row — and the whole equals hashing every kept event's dict in order."""
    from cstore.feedback import IN_COLUMNS, ColumnSpan, feature_rows
    import cstore.training._batching as batching
    rng = np.random.default_rng(5)
    feats: list = []
    spans = []

    def block(size: int) -> None:
        cols = [("amount", rng.normal(size=size)),
                ("merchant", np.array([f"m{k}" for k in rng.integers(0, 9, size)], "S"))]
        spans.append(ColumnSpan(len(feats), len(feats) + size, cols))
        feats.extend([IN_COLUMNS] * size)

    block(4)
    feats.append({"probe_1": 1.0})
    block(3)
    block(5)
    bad = len(feats)
    feats.append({"bad": object()})  # refused by the hasher: skipped, the rest learned
    feats.append(None)                # left out (e.g. a lookup that found nothing)
    block(6)                          # partly left out below
    feats.append({"probe_2": 1.0, "merchant": "x"})
    keep = [i for i, f in enumerate(feats) if f is not None and i != spans[-1].start + 2]
    columnar_calls = []
    real = batching.hash_columns
    monkeypatch.setattr(batching, "hash_columns", lambda h, c, n: columnar_calls.append(n) or real(h, c, n))
    h = FeatureHasher(2**8)
    indptr, idx, val, done = batching.hash_rows(h, feats, keep, spans)

    rows = {}
    for sp in spans:
        rows.update(zip(range(sp.start, sp.stop), feature_rows(sp.columns, sp.stop - sp.start)))
    expected_events = [i for i in keep if i != bad]
    ref = FeatureHasher(2**8).transform_many([rows.get(i, feats[i]) for i in expected_events])
    assert done == expected_events
    assert np.diff(indptr).tolist() == np.diff(ref[0]).tolist()
    assert idx.tolist() == ref[1].tolist() and val.tolist() == ref[2].tolist()
    assert columnar_calls == [4, 8]  # the two runs of whole blocks (3 + 5 joined); the partial block by row
