"""Turning a user's update (values, optional indices) into per-chunk changes, with validation.

Everything here runs before anything is written: a rejected update leaves the database as it was.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cstore.core._models import ModelInfo, encode_metadata
from cstore.core._records import ChunkRow, CommitMeta, Transform
from cstore.errors import PayloadTooLarge, ValidationError

UPDATE_TYPES = ("gradient", "direct", "batch", "federated")
SOURCES = ("real_time", "batch", "feedback", "federated", "manual")


@dataclass(frozen=True)
class ChunkChange:
    """Chunk-local indices and values for one parameter."""

    indices: np.ndarray
    values: np.ndarray


def check_learning_rate(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer)):
        raise ValidationError(f"learning rate must be a number, got {type(lr).__name__}")
    step = float(lr)
    if not math.isfinite(step) or step <= 0:
        raise ValidationError(f"learning rate must be finite and > 0, got {step}")
    return step


def check_kind(update_type: str, source: str) -> None:
    if update_type not in UPDATE_TYPES:
        raise ValidationError(f"update_type {update_type!r} is not one of {', '.join(UPDATE_TYPES)}")
    if source not in SOURCES:
        raise ValidationError(f"source {source!r} is not one of {', '.join(SOURCES)}")


def split_update(info: ModelInfo, param: str, values: Any, indices: Any, update_type: str,
                 max_bytes: int) -> dict[int, ChunkChange]:
    """Validate one parameter's update and split it by chunk (duplicates summed for gradients)."""
    info.require_param(param)
    shape = info.params[param]
    vals = _numeric(values, f"values for {param!r}")
    if vals.nbytes > max_bytes:
        raise PayloadTooLarge(f"update of {param!r} is {vals.nbytes} bytes; the limit is {max_bytes} "
                              f"(max_payload_bytes): split it into several calls")
    if indices is None:
        if vals.shape != tuple(shape):
            raise ValidationError(f"dense update of {param!r} must have shape {tuple(shape)}, got {vals.shape}; "
                                  f"pass indices= for a sparse update")
        flat_idx = np.arange(int(np.prod(shape)), dtype=np.int64)
        flat_vals = vals.reshape(-1)
    else:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValidationError(f"indices for {param!r} must be a 1-D array of integers, got "
                                  f"dtype {idx.dtype} and shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size == 0:
            raise ValidationError(f"indices for {param!r} are empty: nothing to update")
        row_shape = tuple(shape[1:])
        if vals.shape != (len(idx),) + row_shape:
            raise ValidationError(f"sparse update of {param!r}: values must have shape "
                                  f"{(len(idx),) + row_shape} for {len(idx)} indices, got {vals.shape}")
        bad = (idx < 0) | (idx >= shape[0])
        if bad.any():
            raise ValidationError(f"indices for {param!r} out of range [0, {shape[0]}): e.g. {int(idx[bad][0])}")
        row = int(np.prod(row_shape)) if row_shape else 1
        flat_idx = idx if row == 1 else (idx[:, None] * row + np.arange(row, dtype=np.int64)).reshape(-1)
        flat_vals = vals.reshape(-1)
        if len(flat_idx) > 1 and not bool(np.all(flat_idx[1:] > flat_idx[:-1])):  # (sorted, unique: as is)
            uniq, inverse = np.unique(flat_idx, return_inverse=True)
            if len(uniq) != len(flat_idx):
                if update_type == "direct":
                    raise ValidationError(f"direct update of {param!r} has duplicate indices: which value wins "
                                          f"would be ambiguous")
                flat_vals = np.bincount(inverse, weights=flat_vals, minlength=len(uniq))
            else:
                flat_vals = flat_vals[np.argsort(flat_idx, kind="stable")]
            flat_idx = uniq
    first, last = int(flat_idx[0] // info.chunk_size), int(flat_idx[-1] // info.chunk_size)
    if first == last:  # the common atomic update: one chunk, no split
        return {first: ChunkChange((flat_idx - first * info.chunk_size).astype(np.int32), flat_vals)}
    chunk_of = flat_idx // info.chunk_size
    bounds = np.flatnonzero(np.diff(chunk_of)) + 1
    out = {}
    for part_idx, part_vals in zip(np.split(flat_idx, bounds), np.split(flat_vals, bounds)):
        k = int(part_idx[0] // info.chunk_size)
        out[k] = ChunkChange((part_idx - k * info.chunk_size).astype(np.int32), part_vals)
    return out


def _numeric(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except Exception as exc:
        raise ValidationError(f"{what} cannot be read as an array: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise ValidationError(f"{what} must be numeric (float or int), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr.reshape(-1)))[0])
        raise ValidationError(f"{what} contain NaN or infinity (first at flat position {bad}); "
                              f"nothing was written")
    return arr


def make_transform(changes: Mapping[str, Mapping[int, ChunkChange]], lr: float, update_type: str,
                   dtype: str) -> Transform:
    """A pure chunk transform: ``new = old - lr * values`` (or ``= values`` for direct) at the indices."""
    lr_typed = np.asarray(lr, dtype=dtype)

    def transform(chunk: int, rows: Mapping[str, ChunkRow]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for param, per_chunk in changes.items():
            change = per_chunk.get(chunk)
            if change is None:
                continue
            old = rows[param].data
            new = old.copy()
            vals = change.values.astype(dtype)
            if update_type == "direct":
                new[change.indices] = vals
            else:
                new[change.indices] = old[change.indices] - lr_typed * vals
            out[param] = (new, change.indices)
        return out
    return transform


def validated_update(info: ModelInfo, updates: Any, lr: Any, update_type: str, source: str,
                     metadata: Mapping[str, Any] | None, max_bytes: int
                     ) -> tuple[dict[str, dict[int, ChunkChange]], float, CommitMeta]:
    """A user's update checked, before anything is written: its changes split by chunk
    (:func:`split_update`, per parameter), the learning rate, and what history records of it."""
    check_kind(update_type, source)
    step = check_learning_rate(lr)
    if not isinstance(updates, Mapping) or not updates:
        raise ValidationError("updates must be a non-empty mapping of parameter name to values "
                              "or to (indices, values)")
    meta_json = encode_metadata(metadata)
    changes = {}
    for param, spec in updates.items():
        indices, values = spec if isinstance(spec, tuple) else (None, spec)
        changes[param] = split_update(info, param, values, indices, update_type, max_bytes)
    return changes, step, CommitMeta(update_type, None if update_type == "direct" else step, source, meta_json)
