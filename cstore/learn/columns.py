"""Feature hashing of rows held as columns: the arrays :meth:`FeatureHasher.transform_many` gives for
the same rows as dicts, bit for bit, in one vectorised pass per column instead of one Python step per
feature. A worker's batch of columnar feedback segments arrives as columns (``send_batch``), so it
is hashed here without ever building the per-event dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cstore.learn.hashing import _F32_MAX, FeatureHasher

__all__ = ["hash_columns"]


def hash_columns(
    hasher: FeatureHasher, columns: Sequence[tuple[str, Any]], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Hash ``n`` rows held as columns: the arrays ``hasher.transform_many`` returns for the rows
    ``{name: column[r]}`` (a missing value, NaN in a float column or None in a text one, left out),
    bit for bit, with one pass per column instead of one step per feature.

    ``columns``: ``(name, values)`` in the rows' key order; ``values`` a float64 array, a numpy
    bytes array of ASCII text, or a sequence of ``str | None``. Returns None for anything the
    per-row path would refuse or that is not one of those forms, so that the caller hashes the
    rows one by one and gets that path's errors.

    >>> h = FeatureHasher(2**4)
    >>> cols = [("a", np.array([1.0, np.nan, 2.0])), ("b", np.array([b"x", b"y", b"x"]))]
    >>> got = hash_columns(h, cols, 3)
    >>> want = h.transform_many([{"a": 1.0, "b": "x"}, {"b": "y"}, {"a": 2.0, "b": "x"}])
    >>> [g.tolist() == w.tolist() for g, w in zip(got, want)]
    [True, True, True]
    """
    c = len(columns)
    idx = np.zeros((n, c), np.int64)
    val = np.ones((n, c), np.float64)
    present = np.ones((n, c), bool)
    for j, (name, col) in enumerate(columns):
        if type(name) is not str:
            return None
        if isinstance(col, np.ndarray) and col.dtype == np.float64:
            if col.shape != (n,) or np.any(np.abs(col) > _F32_MAX):  # NaN compares False: kept
                return None
            present[:, j] = col == col
            val[:, j] = col
            idx[:, j] = hasher.index(name)
        elif isinstance(col, np.ndarray) and col.dtype.kind == "S":
            codes = hasher.ascii_indices(name, col, n)
            if codes is None:
                return None
            idx[:, j] = codes
        else:
            column = _text_column(hasher, name, col, n)
            if column is None:
                return None
            idx[:, j], present[:, j] = column
    return _csr(idx, val, present)


def _text_column(hasher: FeatureHasher, name: str, col: Any, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    values = list(col)
    if len(values) != n:
        return None
    out, present = np.zeros(n, np.int64), np.ones(n, bool)
    seen: dict[str, int] = {}
    for r, v in enumerate(values):
        if v is None:
            present[r] = False
        elif type(v) is not str:
            return None
        else:
            k = seen.get(v)
            out[r] = seen[v] = hasher.index(name, v) if k is None else k
    return out, present


def _csr(
    idx: np.ndarray, val: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """CSR of the present cells, row-major; a row whose features collide is merged as
    ``transform_many`` merges it (rare: with 30 features in 2^20, a few rows per thousand)."""
    n, c = idx.shape
    marked = np.where(present, idx, -1 - np.arange(c))  # a missing cell never equals another
    ordered = np.sort(marked, axis=1)
    colliding = (np.flatnonzero(np.any(ordered[:, 1:] == ordered[:, :-1], axis=1)) if c > 1
                 else np.zeros(0, np.int64))
    keep = present.copy()
    merged = []
    for r in colliding:
        keep[r] = False
        try:
            merged.append(FeatureHasher.merge_row(idx[r][present[r]].tolist(), val[r][present[r]].tolist()))
        except ValueError:
            return None
    counts = keep.sum(axis=1)
    flat_idx, flat_val = idx[keep], val[keep]
    if merged:
        at = np.cumsum(counts)[colliding] - counts[colliding]  # where each merged row goes
        lens = [len(m[0]) for m in merged]
        flat_idx = np.insert(flat_idx, np.repeat(at, lens), np.concatenate([m[0] for m in merged]))
        flat_val = np.insert(flat_val, np.repeat(at, lens), np.concatenate([m[1] for m in merged]))
        counts[colliding] = lens
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, flat_idx.astype(np.int64), flat_val.astype(np.float32)
