"""Model metadata: name → incarnation id, parameter shapes, chunking, dtype.

A model's parameters share one ``chunk_size`` so that chunk ``k`` of every parameter covers the
same flat coordinates ``[k*chunk_size, (k+1)*chunk_size)``; the ``chunks`` partition
``(model_id, k)`` holds them all, which lets an optimizer commit weights and state together.
"""
from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from cstore.core._timeuuid import ticks_of
from cstore.errors import CorruptData, ValidationError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
PARAM_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
DTYPES = ("float32", "float64")
MIN_CHUNK, MAX_CHUNK = 16, 1 << 20
MAX_PARAM_ELEMENTS = 1 << 28  # 256 Mi elements: beyond this the model is not an online model
DEFAULT_CHUNK_SIZE = 16384


@dataclass(frozen=True)
class ModelInfo:
    """What the ``models`` table says about one model."""

    name: str
    model_id: uuid.UUID
    chunk_size: int
    dtype: str
    params: Mapping[str, tuple[int, ...]]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    created_by: str | None = None
    history_bucket_s: int | None = None   # None: a model older than migration 004 (use the configuration)
    history_indexed: bool = False         # its history buckets are listed in history_buckets (migration 006)

    def history_bucket_seconds(self, default_s: int) -> int:
        """Seconds per ``history`` partition: the model's own, or ``default_s`` (the configured one)
        for a model created before migration 004."""
        return self.history_bucket_s or default_s

    def history_bucket_of(self, op_id: uuid.UUID, default_s: int) -> int:
        """The ``history`` partition (bucket) of an op, in integer arithmetic so that writers and
        readers always agree (a float time can round across a bucket boundary)."""
        return ticks_of(op_id) // 10_000_000 // self.history_bucket_seconds(default_s)

    def size(self, param: str) -> int:
        return int(math.prod(self.params[param]))

    def n_chunks(self, param: str) -> int:
        return max(1, math.ceil(self.size(param) / self.chunk_size))

    @property
    def max_chunks(self) -> int:
        return max(self.n_chunks(p) for p in self.params)

    def chunk_bounds(self, param: str, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.size(param))

    def chunks_of(self, param: str) -> range:
        return range(self.n_chunks(param))

    def params_in_chunk(self, chunk: int) -> list[str]:
        return [p for p in self.params if chunk < self.n_chunks(p)]

    def require_param(self, param: str) -> None:
        if param not in self.params:
            raise ValidationError(f"model {self.name!r} has no parameter {param!r}; "
                                  f"its parameters are {', '.join(self.params)}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_id": str(self.model_id), "chunk_size": self.chunk_size,
                "dtype": self.dtype, "params": {k: list(v) for k, v in self.params.items()},
                "chunks": {p: self.n_chunks(p) for p in self.params}, "metadata": dict(self.metadata),
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "created_by": self.created_by, "history_bucket_s": self.history_bucket_s}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModelInfo:
        try:
            params = {str(k): tuple(int(d) for d in v) for k, v in json.loads(row["params"]).items()}
            meta = json.loads(row["metadata"] or "{}")
            ok = (params and all(params.values()) and row["dtype"] in DTYPES and isinstance(row["chunk_size"], int)
                  and MIN_CHUNK <= row["chunk_size"] <= MAX_CHUNK and row["model_id"] is not None)
        except (TypeError, ValueError, AttributeError):
            ok = False
        if not ok:  # a models row edited or damaged outside cstore: say so instead of a traceback
            raise CorruptData(f"the models row of {row.get('name')!r} is damaged (params {row.get('params')!r}, "
                              f"dtype {row.get('dtype')!r}, chunk_size {row.get('chunk_size')!r}); restore it "
                              f"or drop and re-create the model")
        bucket = row.get("history_bucket_s")
        return cls(row["name"], row["model_id"], row["chunk_size"], row["dtype"], params,
                   meta, row.get("created_at"), row.get("created_by"),
                   bucket if isinstance(bucket, int) and bucket > 0 else None, row.get("history_indexed") is True)


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
                              f"starting with a letter")
    return name


def validate_spec(params: Mapping[str, Any], chunk_size: int, dtype: str) -> tuple[dict[str, tuple[int, ...]],
                                                                                    dict[str, np.ndarray]]:
    """Check a model definition; return shapes and any explicit initial arrays."""
    if not isinstance(params, Mapping) or not params:
        raise ValidationError("params must be a non-empty mapping of parameter name to shape "
                              "(e.g. {'weights': (1048576,), 'bias': (1,)}) or to an initial array")
    if dtype not in DTYPES:
        raise ValidationError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ValidationError(f"chunk_size must be an integer in [{MIN_CHUNK}, {MAX_CHUNK}], got {chunk_size!r}")
    shapes: dict[str, tuple[int, ...]] = {}
    initial: dict[str, np.ndarray] = {}
    for name, spec in params.items():
        if not isinstance(name, str) or not PARAM_RE.match(name):
            raise ValidationError(f"invalid parameter name {name!r}: letters, digits and '_', starting "
                                  f"with a letter, at most 48 characters")
        if isinstance(spec, np.ndarray):
            arr = spec
            if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
                raise ValidationError(f"initial value of {name!r} must be a finite numeric array")
            initial[name] = arr.astype(dtype)
            shape = arr.shape
        else:
            shape = (spec,) if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) else spec
            try:
                shape = tuple(int(s) for s in shape)
            except (TypeError, ValueError):
                raise ValidationError(f"shape of {name!r} must be a tuple of positive integers, got {spec!r}") from None
            if any(isinstance(s, bool) for s in (spec if isinstance(spec, (tuple, list)) else [spec])):
                raise ValidationError(f"shape of {name!r} must be integers, got {spec!r}")
        if not shape or any(s <= 0 for s in shape) or len(shape) > 4:
            raise ValidationError(f"shape of {name!r} must have 1-4 positive dimensions, got {shape!r}")
        if math.prod(shape) > MAX_PARAM_ELEMENTS:
            raise ValidationError(f"parameter {name!r} has {math.prod(shape)} elements; the limit is "
                                  f"{MAX_PARAM_ELEMENTS}: shard it into several models")
        shapes[name] = shape
    return shapes, initial


def encode_metadata(metadata: Any, limit: int = 64 * 1024) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise ValidationError(f"metadata must be a mapping (JSON object), got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"metadata is not JSON-serialisable: {exc}") from None
    if len(text) > limit:
        raise ValidationError(f"metadata is {len(text)} bytes; the limit is {limit}")
    return text


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (uuid.UUID, datetime)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
