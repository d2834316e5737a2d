"""Column-wise feedback: validate and encode many events at once, for producers that hold batches.

A fraud service that scores in batches already holds its features as columns (a DataFrame, numpy
arrays). Sending them event by event costs a Python dict and ~30 checks per event; here every check
runs once per column, vectorised, and a segment stores columns (format 2) instead of one msgpack item
per event (format 1). The stored events are the same: :func:`decode_block` yields the
:class:`~cstore.feedback.Event` tuples that :func:`~cstore.feedback.make_event` would
have built from the same values, so workers learn the same thing from either path.

Columns of a batch:

* ``entity_ids``: a sequence of strings or 64-bit integers (one per event);
* ``labels``: numbers in [0, 1] (bools allowed);
* ``kind``: one kind for the whole batch;
* ``confidence`` / ``event_time``: ``None``, one value for all, or one per event;
* ``features``: ``{name: column}``; a numeric or bool column is stored as float64, ``NaN`` meaning
  "missing for this event" (the feature is left out of that event, as a per-event sender would);
  a column of strings may hold ``None`` for missing. A numpy string array (dtype ``U``) of ASCII
  text is the fastest form: it is checked and stored as one block of memory.

Per-event metadata is not part of a batch; send such events one by one.

>>> b = make_batch(["tx-1", "tx-2"], [0, 1], features={"amount": [12.5, float("nan")],
...                "country": ["FR", None]}, now=1.8e9)
>>> [ev.features for ev in decode_block(msgpack.unpackb(encode_block(b, 0, 2)))]
[{'amount': 12.5, 'country': 'FR'}, {}]
>>> make_batch(["tx-1"], [2.0])
Traceback (most recent call last):
...
cstore.errors.InvalidFeedback: labels must be in [0, 1] (1 = fraud/positive); event 0 has 2.0
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgpack
import numpy as np

from cstore.errors import InvalidFeedback, PayloadTooLarge
from cstore.feedback._events import (_F32_MAX, KINDS, MAX_ENTITY_CHARS, MAX_EVENT_BYTES, MAX_FEATURES, MAX_FUTURE_S,
                                     MAX_NAME_CHARS, MAX_STR_VALUE_CHARS, MIN_EVENT_TIME, Event, _entity)

MAX_BATCH_EVENTS = 100_000
# Encoded bytes of one numeric value and of one string's framing (msgpack header, worst case).
_NUM_BYTES, _STR_OVERHEAD = 9, 5


class Batch(NamedTuple):
    """Validated columns of ``n`` events (see :func:`make_batch`)."""
    n: int
    entity_ids: list
    labels: np.ndarray            # float64 (n,)
    kind: str
    confidence: np.ndarray | None  # float64 (n,)
    event_time: np.ndarray        # float64 (n,)
    features: dict[str, np.ndarray] | None  # name -> float64 (NaN = missing), object (str | None = missing),
                                     # or fixed-width ASCII bytes (dtype "S"); each (n,), in the order given


def _unit_column(values: Any, n: int, what: str) -> np.ndarray:
    """A float64 column of ``n`` finite values in [0, 1] (a scalar is broadcast)."""
    col = _numeric(values, n, what)
    bad = ~np.isfinite(col) | (col < 0.0) | (col > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidFeedback(f"{what} must be in [0, 1] (1 = fraud/positive); event {i} has {float(col[i])!r}")
    return col


def _numeric(values: Any, n: int, what: str) -> np.ndarray:
    try:
        col = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InvalidFeedback(f"{what} must be numbers: {exc}") from None
    if col.dtype.kind not in "biuf":
        raise InvalidFeedback(f"{what} must be numbers (or bools), got an array of {col.dtype}")
    col = col.astype(np.float64, copy=False)
    if col.ndim == 0:
        return np.full(n, float(col))
    if col.shape != (n,):
        raise InvalidFeedback(f"{what} has shape {col.shape}; expected one value per event ({n},)")
    return col


def _event_times(values: Any, n: int, now: float) -> np.ndarray:
    if values is None:
        return np.full(n, now)
    t = _numeric(values, n, "event_time (epoch seconds)")
    if not np.isfinite(t).all():
        raise InvalidFeedback("event_time must be finite epoch seconds")
    if (t > now + MAX_FUTURE_S).any():
        i = int(np.argmax(t))
        hint = " (it looks like milliseconds: divide by 1000)" if t[i] > now * 100 else ""
        raise InvalidFeedback(f"event_time {t[i]:.3f} (event {i}) is {t[i] - now:.0f} s in the future (more than "
                              f"{MAX_FUTURE_S:.0f} s); fix the producer's clock or the unit{hint}")
    if (t < MIN_EVENT_TIME).any():
        raise InvalidFeedback(f"event_time {t.min()!r} is before 2000-01-01; send epoch seconds (UTC)")
    return t


def _feature_column(name: Any, values: Any, n: int) -> np.ndarray:
    """A float64, object (str/None) or ASCII ("S") column; raises with what to fix."""
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
        raise InvalidFeedback(f"feature names must be strings of 1-{MAX_NAME_CHARS} characters, got {name!r}")
    col = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if col.ndim != 1 or len(col) != n:
        raise InvalidFeedback(f"feature {name!r} has shape {col.shape}; expected one value per event ({n},)")
    if col.dtype.kind in "biuf":
        return _finite_f32(name, col.astype(np.float64, copy=False))
    if col.dtype.kind == "U":  # fixed-width strings: checked and packed as one block of memory
        if col.dtype.itemsize // 4 > MAX_STR_VALUE_CHARS:
            longest = int(np.char.str_len(col).max())
            if longest > MAX_STR_VALUE_CHARS:
                raise PayloadTooLarge(f"feature {name!r} has a {longest}-character string; the limit is "
                                      f"{MAX_STR_VALUE_CHARS}")
        ascii_col = _ascii(col)
        if ascii_col is not None:
            return ascii_col
        col = col.astype(object)
    if col.dtype.kind != "O":
        raise InvalidFeedback(f"feature {name!r} has {col.dtype} values; use numbers, bools or strings")
    items = col.tolist()  # a list iterates ~3x faster than an object array
    types = set(map(type, items)) - {type(None)}
    if all(issubclass(t, str) for t in types):
        longest = max(map(len, filter(None, items)), default=0)
        if longest > MAX_STR_VALUE_CHARS:
            raise PayloadTooLarge(f"feature {name!r} has a {longest}-character string; the limit is "
                                  f"{MAX_STR_VALUE_CHARS}")
        return col
    if all(issubclass(t, (int, float, np.number, np.bool_)) for t in types):  # numbers, None = missing
        nums = np.array([np.nan if v is None else v for v in items], dtype=np.float64)
        return _finite_f32(name, nums)
    raise InvalidFeedback(f"feature {name!r} mixes {sorted(t.__name__ for t in types)}; a column holds numbers "
                          f"(NaN or None = missing) or strings (None = missing)")


def _ascii(col: np.ndarray) -> np.ndarray | None:
    """A ``U`` array as fixed-width ASCII bytes (``S``), or None when some text is not ASCII.

    Done on the UCS-4 code points as integers: ~100x faster than ``astype("S")``, which encodes
    element by element.
    """
    width = col.dtype.itemsize // 4
    codes = np.ascontiguousarray(col, dtype=f"=U{width}").view(np.uint32).reshape(len(col), width)
    if codes.size and codes.max() >= 128:
        return None
    return codes.astype(np.uint8).view(f"S{width}").reshape(len(col))


def _finite_f32(name: str, col: np.ndarray) -> np.ndarray:
    bad = np.isinf(col) | (np.abs(np.nan_to_num(col)) > _F32_MAX)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidFeedback(f"feature {name!r} = {float(col[i])!r} (event {i}) is not finite or overflows float32; "
                              f"clip it, or use NaN for missing")
    return col


def _check_event_sizes(batch: Batch) -> None:
    """Each event must stay under MAX_EVENT_BYTES, as a per-event send would require."""
    if not batch.features:
        return
    numeric = sum(1 for c in batch.features.values() if c.dtype.kind == "f")
    strings = [c for c in batch.features.values() if c.dtype.kind != "f"]
    names = sum(len(k) + _STR_OVERHEAD for k in batch.features)
    bound = names + _NUM_BYTES * numeric + (MAX_STR_VALUE_CHARS + _STR_OVERHEAD) * len(strings)
    if bound + MAX_ENTITY_CHARS + 64 <= MAX_EVENT_BYTES:
        return  # no event can be too large: skip the per-event sums (the common case)
    sizes = np.full(batch.n, names + _NUM_BYTES * numeric + 64, dtype=np.int64)
    for col in strings:
        sizes += np.fromiter((len(v) if v else 0 for v in col), dtype=np.int64, count=batch.n)
    if (sizes > MAX_EVENT_BYTES).any():
        i = int(np.argmax(sizes))
        raise PayloadTooLarge(f"event {i} ({batch.entity_ids[i]!r}) is about {sizes[i]} bytes encoded; the limit "
                              f"is {MAX_EVENT_BYTES}: send fewer or shorter features")


def make_batch(entity_ids: Sequence[Any], labels: Any, *, kind: str = "explicit", confidence: Any = None,
               event_time: Any = None, features: Mapping[str, Any] | None = None,
               now: float | None = None) -> Batch:
    """Validate a batch of events given as columns; raises with what to fix (nothing is kept)."""
    if isinstance(entity_ids, (str, bytes)) or not hasattr(entity_ids, "__len__"):
        raise InvalidFeedback(f"entity_ids must be a sequence (one id per event), got {type(entity_ids).__name__}")
    n = len(entity_ids)
    if not 0 < n <= MAX_BATCH_EVENTS:
        raise (PayloadTooLarge if n else InvalidFeedback)(
            f"a batch holds 1-{MAX_BATCH_EVENTS} events, got {n}; split it")
    if kind not in KINDS or type(kind) is not str:
        raise InvalidFeedback(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    ids = entity_ids.tolist() if isinstance(entity_ids, np.ndarray) else list(entity_ids)
    if not all(type(e) is str and 0 < len(e) <= MAX_ENTITY_CHARS for e in ids):
        ids = [_entity(e) for e in ids]  # the slow path says which id is wrong and why
    y = _unit_column(labels, n, "labels")
    conf = None if confidence is None else _unit_column(confidence, n, "confidence")
    t = _event_times(event_time, n, time.time() if now is None else now)
    if features is not None and not isinstance(features, Mapping):
        raise InvalidFeedback(f"features must be a mapping of name -> column, got {type(features).__name__}")
    if features is not None and len(features) > MAX_FEATURES:
        raise PayloadTooLarge(f"{len(features)} features; the limit is {MAX_FEATURES} per event: "
                              f"drop or aggregate some")
    cols = None if features is None else {name: _feature_column(name, values, n) for name, values in features.items()}
    batch = Batch(n, ids, y, kind, conf, t, cols)
    _check_event_sizes(batch)
    return batch


def reorder(batch: Batch, order: np.ndarray) -> Batch:
    """``batch`` with its events permuted by ``order`` (e.g. grouped by partition), columns included."""
    ids = batch.entity_ids
    return batch._replace(
        entity_ids=[ids[i] for i in order.tolist()], labels=batch.labels[order],
        confidence=None if batch.confidence is None else batch.confidence[order],
        event_time=batch.event_time[order],
        features=None if batch.features is None else {k: c[order] for k, c in batch.features.items()})


def encode_block(batch: Batch, lo: int, hi: int) -> bytes:
    """Events ``lo:hi`` of ``batch`` as one msgpack block (format 2's unit)."""
    block = {
        "n": hi - lo,
        "id": batch.entity_ids[lo:hi],
        "y": batch.labels[lo:hi].tobytes(),
        "k": batch.kind,
        "c": None if batch.confidence is None else batch.confidence[lo:hi].tobytes(),
        "t": batch.event_time[lo:hi].tobytes(),
        "f": None if batch.features is None else {k: _column_item(col[lo:hi]) for k, col in batch.features.items()},
    }
    return msgpack.packb(block, use_bin_type=True)


# A stored column is [tag, ...]: the tag says how its values are laid out.
_F64, _TEXT, _ASCII = 0, 1, 2


def _column_item(col: np.ndarray) -> list:
    if col.dtype.kind == "f":
        return [_F64, col.tobytes()]
    if col.dtype.kind == "S":
        return [_ASCII, col.dtype.itemsize, col.tobytes()]
    return [_TEXT, col.tolist()]


def _column_array(item: Any, n: int) -> Any:
    """One stored column as it is stored: a float64 array (NaN where missing), a numpy bytes array of
    ASCII text, or a list of ``str | None`` — what :func:`cstore.learn.hash_columns` hashes."""
    if type(item) is not list or not item:
        raise ValueError("a stored column must be [tag, ...]")
    if item[0] == _F64 and len(item) == 2:
        return _f64(item[1], n)
    if item[0] == _TEXT and len(item) == 2 and type(item[1]) is list and len(item[1]) == n:
        return item[1]
    if item[0] == _ASCII and len(item) == 3:
        width, raw = item[1], item[2]
        if type(width) is int and 0 < width <= MAX_STR_VALUE_CHARS and type(raw) is bytes and len(raw) == width * n:
            if not raw.isascii():  # what decoding it as ASCII would refuse: refused here, at once
                raise ValueError("a stored ASCII column holds bytes that are not ASCII")
            return np.frombuffer(raw, dtype=f"S{width}")
    raise ValueError(f"bad stored column (tag {item[0]!r})")


def _column_values(col: Any) -> list:
    """The Python values of one stored column (NaN or None where a value is missing)."""
    if isinstance(col, np.ndarray):
        return col.tolist() if col.dtype.kind == "f" else np.char.decode(col, "ascii").tolist()
    return col


def _f64(raw: Any, n: int) -> np.ndarray:
    if type(raw) is not bytes or len(raw) != 8 * n:
        raise ValueError("bad float64 column")
    return np.frombuffer(raw, dtype=np.float64)


#: The features of an event decoded with ``dicts=False``: held by its block's :class:`ColumnSpan`
#: instead of a dict of its own (:func:`feature_rows` builds the dicts when they are needed). Compared
#: by identity; never mutated.
IN_COLUMNS: dict[str, Any] = {}


def decode_block(block: Any) -> list[Event]:
    """The events of one stored block, as :func:`~cstore.feedback.make_event` returns them.

    Raises ``ValueError`` when the block is malformed (the caller sets it aside as poison).
    """
    return decode_block_columns(block)[0]


def decode_block_columns(block: Any, *, dicts: bool = True) -> tuple[list[Event], list[tuple[str, Any]] | None]:
    """:func:`decode_block`, and the block's feature columns as stored (``(name, column)`` in key
    order; None when the block has no features), so that a learner can hash them column by column.
    With ``dicts=False`` the events' features are :data:`IN_COLUMNS` (the columns hold them)."""
    if type(block) is not dict:
        raise ValueError("a columnar block must be a map")
    n = block.get("n")
    if type(n) is not int or n < 1 or type(block.get("id")) is not list or len(block["id"]) != n:
        raise ValueError("bad event count or ids")
    y = _f64(block.get("y"), n).tolist()
    t = _f64(block.get("t"), n).tolist()
    conf = [None] * n if block.get("c") is None else _f64(block["c"], n).tolist()
    kind, stored = block.get("k"), block.get("f")
    if kind not in KINDS or (stored is not None and type(stored) is not dict):
        raise ValueError("bad kind or feature map")
    ids = block["id"]
    if stored is None:
        return [Event(ids[i], y[i], kind, conf[i], t[i], None, None) for i in range(n)], None
    columns = [(name, _column_array(v, n)) for name, v in stored.items()]
    features = feature_rows(columns, n) if dicts else [IN_COLUMNS] * n
    return [Event(ids[i], y[i], kind, conf[i], t[i], features[i], None) for i in range(n)], columns


def feature_rows(columns: list[tuple[str, Any]], n: int) -> list[dict[str, Any]]:
    """The per-event feature dicts of ``n`` events held as stored columns (missing values left out).

    Raises ``ValueError`` for a text column that is not ASCII."""
    names = [name for name, _ in columns]
    values = [_column_values(col) for _, col in columns]
    rows = zip(*values) if values else ((),) * n
    complete = all(not (isinstance(a, np.ndarray) and a.dtype.kind == "f" and np.isnan(a).any())
                   and not (type(a) is list and not all(type(v) is str for v in a)) for _, a in columns)
    if complete:  # nothing missing: the plain constructor, about twice as fast
        return [dict(zip(names, row)) for row in rows]
    # NaN != NaN and None: both mean "missing for this event", left out as a per-event sender would.
    return [{k: v for k, v in zip(names, row) if v == v and v is not None} for row in rows]
