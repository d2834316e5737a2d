"""Federated averaging of model deltas (McMahan et al. 2017, FedAvg).

Each participant sends the *change* it made to the model and how many
samples produced it; the server applies the sample-count-weighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["fedavg", "fedavg_sparse"]


def _counts(sample_counts: Sequence[int], expected: int) -> np.ndarray:
    if len(sample_counts) != expected:
        raise ValueError(f"need one sample count per delta: {expected} deltas, {len(sample_counts)} counts")
    out = []
    for i, c in enumerate(sample_counts):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c <= 0:
            raise ValueError(f"sample_counts[{i}] must be a positive int, got {c!r}; drop empty participants")
        out.append(int(c))
    return np.array(out, dtype=np.float64)


def fedavg(deltas: Sequence[np.ndarray], sample_counts: Sequence[int]) -> np.ndarray:
    """Sample-count-weighted mean of equally shaped deltas.

    Computed in float64; returned in the inputs' common float dtype
    (float32 stays float32).

    >>> fedavg([np.array([1.0, 0.0]), np.array([4.0, 3.0])], [1, 2]).tolist()
    [3.0, 2.0]
    """
    if len(deltas) == 0:
        raise ValueError("fedavg needs at least one delta")
    arrays = [np.asarray(d) for d in deltas]
    counts = _counts(sample_counts, len(arrays))
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(f"deltas[{i}] has shape {a.shape}, expected {shape} like deltas[0]")
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise ValueError(f"deltas[{i}] must be a real numeric array, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"deltas[{i}] contains NaN or inf; reject that participant's update")
    acc = np.zeros(shape, dtype=np.float64)
    for a, c in zip(arrays, counts):
        acc += c * a.astype(np.float64, copy=False)
    acc /= counts.sum()
    return acc.astype(np.result_type(np.float32, *[a.dtype for a in arrays]), copy=False)


def fedavg_sparse(
    updates: Sequence[tuple[np.ndarray, np.ndarray, int]],
) -> tuple[np.ndarray, np.ndarray]:
    """FedAvg of sparse deltas given as ``(indices, values, count)`` triples.

    A coordinate a participant did not send counts as a zero delta from it,
    so the result equals :func:`fedavg` on the densified deltas: each value
    is divided by the *total* sample count. Returns ``(indices int64 sorted
    unique, values float64)``; indices within one update must be unique.

    >>> idx, val = fedavg_sparse([(np.array([0, 2]), np.array([3.0, 1.0]), 1),
    ...                           (np.array([2]), np.array([4.0]), 3)])
    >>> idx.tolist(), val.tolist()
    ([0, 2], [0.75, 3.25])
    """
    if len(updates) == 0:
        raise ValueError("fedavg_sparse needs at least one update")
    all_idx, all_val = [], []
    counts = _counts([u[2] if len(u) == 3 else None for u in updates], len(updates))
    for i, (u, c) in enumerate(zip(updates, counts)):
        idx, val = np.asarray(u[0]), np.asarray(u[1], dtype=np.float64)
        if idx.ndim != 1 or val.shape != idx.shape:
            raise ValueError(f"updates[{i}]: indices and values must be 1-D of equal length")
        if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0):
            raise ValueError(f"updates[{i}]: indices must be non-negative integers")
        if np.unique(idx).size != idx.size:
            raise ValueError(f"updates[{i}]: indices must be unique; sum duplicates before sending")
        if not np.all(np.isfinite(val)):
            raise ValueError(f"updates[{i}] contains NaN or inf; reject that participant's update")
        all_idx.append(idx.astype(np.int64, copy=False))
        all_val.append(c * val)
    idx = np.concatenate(all_idx)
    uniq, inverse = np.unique(idx, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=np.concatenate(all_val), minlength=uniq.size)
    return uniq, summed / counts.sum()
