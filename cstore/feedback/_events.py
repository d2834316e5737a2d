"""Feedback events: validation at the boundary and the msgpack encoding of events and segments.

Everything here runs before anything is buffered or written: a bad event raises
:class:`~cstore.errors.InvalidFeedback` (or :class:`~cstore.errors.PayloadTooLarge`) saying what to fix.
Values come out as plain Python types, safe for msgpack and for the feature hasher.

>>> ev = make_event("tx-1", 1, "explicit", features={"amount": 12.5, "country": "FR"}, now=1.8e9)
>>> ev.label, ev.kind, ev.event_time
(1.0, 'explicit', 1800000000.0)
>>> make_event("tx-1", float("nan"))
Traceback (most recent call last):
...
cstore.errors.InvalidFeedback: label must be finite, got nan
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgpack
import numpy as np

from cstore.errors import InvalidFeedback, PayloadTooLarge

__all__ = ["DEFAULT_PRIORITIES", "KINDS", "MAX_EVENT_BYTES", "MAX_FEATURES", "Event", "encode_event", "make_event"]

KINDS = ("explicit", "implicit", "reward", "other")
DEFAULT_PRIORITIES = {"explicit": 0, "reward": 0, "implicit": 1, "other": 2}
MAX_FEATURES = 1000
MAX_NAME_CHARS = 200
MAX_STR_VALUE_CHARS = 512
MAX_EVENT_BYTES = 64 * 1024
MAX_METADATA_BYTES = 4 * 1024
MAX_ENTITY_CHARS = 256
MAX_FUTURE_S = 300.0
MIN_EVENT_TIME = 946684800.0  # 2000-01-01: earlier values are almost always a unit mistake
_F32_MAX = float(np.finfo(np.float32).max)


class Event(NamedTuple):
    entity_id: str | int
    label: float
    kind: str
    confidence: float | None
    event_time: float
    features: dict[str, Any] | None
    metadata: dict[str, Any] | None


def _number(value: Any, what: str) -> float:
    t = type(value)
    if (t is float or t is int) and math.isfinite(value):
        return float(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidFeedback(f"{what} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidFeedback(f"{what} must be finite, got {value!r}")
    return v


def _entity(entity_id: Any) -> str | int:
    t = type(entity_id)
    if t is str and 0 < len(entity_id) <= MAX_ENTITY_CHARS:  # the common case, checked cheaply
        return entity_id
    if t is int and -2**63 <= entity_id < 2**63:
        return entity_id
    if isinstance(entity_id, (bool, np.bool_)):
        raise InvalidFeedback("entity_id must be a string or an integer, not a bool")
    if isinstance(entity_id, (int, np.integer)):
        v = int(entity_id)
        if not -2**63 <= v < 2**63:
            raise InvalidFeedback(f"entity_id {v} does not fit in 64 bits; send it as a string")
        return v
    if isinstance(entity_id, str):
        if not 0 < len(entity_id) <= MAX_ENTITY_CHARS:
            raise InvalidFeedback(f"entity_id must have 1-{MAX_ENTITY_CHARS} characters, got {len(entity_id)}")
        return entity_id
    raise InvalidFeedback(f"entity_id must be a string or an integer (a transaction id), "
                          f"got {type(entity_id).__name__}")


def _event_time(value: Any, now: float) -> float:
    if value is None:
        return now
    if isinstance(value, datetime):
        t = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidFeedback(f"event_time {value!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00Z) "
                                  f"nor epoch seconds") from None
        t = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    else:
        t = _number(value, "event_time (epoch seconds)")
    if t > now + MAX_FUTURE_S:
        hint = " (it looks like milliseconds: divide by 1000)" if t > now * 100 else ""
        raise InvalidFeedback(f"event_time {t:.3f} is {t - now:.0f} s in the future (more than "
                              f"{MAX_FUTURE_S:.0f} s); fix the producer's clock or the unit{hint}")
    if t < MIN_EVENT_TIME:
        raise InvalidFeedback(f"event_time {t!r} is before 2000-01-01; send epoch seconds (UTC)")
    return t


def _features(features: Any) -> dict[str, Any] | None:
    if features is None:
        return None
    if type(features) is not dict and not isinstance(features, Mapping):
        raise InvalidFeedback(f"features must be a mapping of name -> number or string, got {type(features).__name__}")
    if len(features) > MAX_FEATURES:
        raise PayloadTooLarge(f"{len(features)} features; the limit is {MAX_FEATURES} per event: "
                              f"drop or aggregate some")
    out: dict[str, Any] = {}
    for name, v in features.items():
        if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
            raise InvalidFeedback(f"feature names must be strings of 1-{MAX_NAME_CHARS} characters, got {name!r}")
        t = type(v)
        if t is float:  # fast paths for the plain Python types (the hot loop of ingestion)
            if not -_F32_MAX <= v <= _F32_MAX:
                raise InvalidFeedback(f"feature {name!r} = {v!r} is not finite or overflows float32; "
                                      f"clip it or drop it")
            out[name] = v
        elif t is bool or (t is int and -2**53 < v < 2**53):
            out[name] = v
        elif t is str and len(v) <= MAX_STR_VALUE_CHARS:
            out[name] = v
        elif isinstance(v, str):
            if len(v) > MAX_STR_VALUE_CHARS:
                raise PayloadTooLarge(f"feature {name!r} has a {len(v)}-character string; the limit is "
                                      f"{MAX_STR_VALUE_CHARS}")
            out[name] = v
        elif isinstance(v, (bool, np.bool_)):
            out[name] = bool(v)
        elif isinstance(v, (int, float, np.integer, np.floating)):
            f = float(v)
            if not -_F32_MAX <= f <= _F32_MAX:
                raise InvalidFeedback(f"feature {name!r} = {v!r} is not finite or overflows float32; "
                                      f"clip it or drop it")
            out[name] = int(v) if isinstance(v, (int, np.integer)) and abs(int(v)) < 2**53 else f
        else:
            raise InvalidFeedback(f"feature {name!r} has a {type(v).__name__} value; use a number, bool or "
                                  f"string (leave missing values out)")
    return out


def _metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidFeedback(f"metadata must be a mapping (JSON object), got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, allow_nan=False, default=str)
    except (TypeError, ValueError) as exc:
        raise InvalidFeedback(f"metadata is not JSON-serialisable: {exc}") from None
    if len(text) > MAX_METADATA_BYTES:
        raise PayloadTooLarge(f"metadata is {len(text)} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return json.loads(text)


def make_event(entity_id: Any, label: Any, kind: Any = "explicit", confidence: Any = None, event_time: Any = None,
               features: Any = None, metadata: Any = None, *, now: float | None = None) -> Event:
    """Validate one event; raises with what to fix, returns plain msgpack-safe values."""
    if kind not in KINDS or type(kind) is not str:
        raise InvalidFeedback(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    y = float(label) if isinstance(label, (bool, np.bool_)) else _number(label, "label")  # True = positive
    if not 0.0 <= y <= 1.0:
        raise InvalidFeedback(f"label {y!r} must be in [0, 1] (1 = fraud/positive, 0 = legitimate; "
                              f"soft labels and rewards are probabilities)")
    conf = None
    if confidence is not None:
        conf = _number(confidence, "confidence")
        if not 0.0 <= conf <= 1.0:
            raise InvalidFeedback(f"confidence {conf!r} must be in [0, 1]")
    now = time.time() if now is None else now
    return Event(_entity(entity_id), y, kind, conf, _event_time(event_time, now), _features(features),
                 _metadata(metadata))


def encode_event(ev: Event) -> bytes:
    data = msgpack.packb(list(ev), use_bin_type=True)
    if len(data) > MAX_EVENT_BYTES:
        raise PayloadTooLarge(f"event for entity {ev.entity_id!r} is {len(data)} bytes encoded; the limit is "
                              f"{MAX_EVENT_BYTES}: send fewer or shorter features")
    return data
