"""What a worker batch is: the worker's options, which listed segments make up one batch, and the
batch's events as hashed rows and sample weights.

Pure, no I/O: :func:`select_segments` is tested on its own (``tests/unit/test_feedback_pure.py``).
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import uuid
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cstore.core import ChunkRow
from cstore.errors import ValidationError
from cstore.feedback import ColumnSpan, Event, LaneListing, SegmentRef, feature_rows
from cstore.learn import FeatureHasher, age_weights, hash_columns, window_weights
from cstore.training._learner import LearnerConfig

__all__ = ["FeatureLookup", "WorkerOptions", "batch_metadata", "gather", "hash_rows", "in_event_order", "weights_at",
           "merged_columns", "sample_weights", "select_segments"]

log = logging.getLogger("cstore.worker")

#: ``feature_lookup(model, entity_ids) -> {entity_id: features}`` for events sent without features
#: (the hook for a prediction log that remembers what was scored). Default: :class:`PredictionLog`, the
#: features logged by ``model.score(..., log=True)``; its misses are counted in ``prediction_log_stats``.
FeatureLookup = Callable[[str, list[Any]], Mapping[Any, Mapping[str, Any]]]


@dataclasses.dataclass
class WorkerOptions:
    group: str = "default"
    # The most events one bulk batch takes. A batch goes as soon as min_batch events wait (default
    # min(100, batch_size)); below that the worker waits up to max_wait_ms for more. Under load a batch
    # is what arrived while the previous one was learned (up to batch_size): it never waits to fill, and
    # a bigger batch costs little more than a small one (each touched chunk is committed once), so
    # throughput follows the inflow while freshness stays about two batch times.
    batch_size: int = 5000
    min_batch: int | None = None
    max_wait_ms: float = 200.0
    lease_ttl_s: float = 15.0
    heartbeat_s: float | None = None  # default: a third of the lease TTL
    poll_ms: float = 100.0
    list_limit: int = 2000
    max_buckets: int = 4
    starvation_reserve: float = 0.1
    feature_lookup: FeatureLookup | None = None
    critical: bool = True             # also serve the critical partition (one worker of the group holds it)
    critical_poll_ms: float = 5.0
    critical_batch_size: int = 200
    # Learn another model's feedback (a challenger beside its champion): read ``feedback_of``'s
    # partitions in a consumer group of this model's own (the group defaults to this model's name), so
    # both learn every event and neither disturbs the other's checkpoints.
    feedback_of: str | None = None

    @property
    def go_at(self) -> int:
        """Events that start a batch without waiting (``min_batch``, or min(100, ``batch_size``))."""
        return self.min_batch if self.min_batch is not None else min(100, self.batch_size)

    def check(self) -> None:
        if not isinstance(self.group, str) or not 0 < len(self.group) <= 64:
            raise ValidationError(f"group must be a name of 1-64 characters, got {self.group!r}")
        if self.batch_size < 1 or self.max_wait_ms < 0 or self.poll_ms <= 0 or self.list_limit < 1:
            raise ValidationError("batch_size, list_limit and poll_ms must be positive, max_wait_ms >= 0")
        if self.lease_ttl_s < 2:
            raise ValidationError(f"lease_ttl_s must be at least 2 s, got {self.lease_ttl_s}")
        if self.heartbeat_s is not None and not 0 < self.heartbeat_s < self.lease_ttl_s / 2:
            raise ValidationError("heartbeat_s must be positive and below half the lease TTL")
        if not 0 <= self.starvation_reserve < 1:
            raise ValidationError("starvation_reserve must be in [0, 1)")
        if self.min_batch is not None and not 1 <= self.min_batch <= self.batch_size:
            raise ValidationError(f"min_batch must be between 1 and batch_size ({self.batch_size}), "
                                  f"got {self.min_batch}")
        if not isinstance(self.critical, bool) or self.critical_poll_ms <= 0 or self.critical_batch_size < 1:
            raise ValidationError("critical must be True or False, critical_poll_ms and critical_batch_size positive")


def select_segments(listings: Mapping[tuple[int, int], LaneListing], batch_size: int, *,
                    by_age: bool = False) -> list[SegmentRef]:
    """Segments for one batch: higher-priority lanes (lower numbers) first, oldest first within a lane.

    ``by_age`` ignores the lanes and takes the oldest segments: the worker does that for one batch in
    every ``1 / starvation_reserve``, so a flood of high-priority feedback slows the rest down without
    starving it. Whole segments only; a batch exceeds ``batch_size`` only when its first segment does.
    """
    refs = [r for lst in listings.values() for r in lst.refs]
    key = (lambda r: (r.ticks, r.seg_id.bytes)) if by_age else (lambda r: (r.lane, r.ticks, r.seg_id.bytes))
    budget, chosen = batch_size, list[SegmentRef]()
    for r in sorted(refs, key=key):
        if chosen and r.n_events > budget:
            break
        chosen.append(r)
        budget -= r.n_events
    return chosen


def gather(chosen: Sequence[SegmentRef], fetched: Mapping[uuid.UUID, tuple[list[Event], list[ColumnSpan]]]
           ) -> tuple[list[Event], list[ColumnSpan]]:
    """The batch's events in the order of ``chosen`` (segments that expired meanwhile left out), and
    the spans of them whose features are also held as columns, placed in that order."""
    events: list[Event] = []
    spans: list[ColumnSpan] = []
    for r in chosen:
        evs, own = fetched.get(r.seg_id, ([], []))
        spans += [s._replace(start=s.start + len(events), stop=s.stop + len(events)) for s in own]
        events += evs
    return events, spans


def merged_columns(spans: Sequence[ColumnSpan]) -> list[tuple[list[tuple[str, Any]], int]]:
    """Consecutive spans with the same columns (names and stored forms) as one set of columns, and its
    row count. A producer that sends small batches makes blocks of a few events each (a 100-event
    call split over 16 partitions); hashing them one by one would cost numpy's per-call overhead per
    block, while rows hash independently, so joining them first gives the same arrays."""
    groups: list[tuple[tuple[tuple[str, str], ...], list[ColumnSpan]]] = []
    for s in spans:
        key = tuple((name, _form(col)) for name, col in s.columns)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(s)
        else:
            groups.append((key, [s]))
    out = []
    for key, members in groups:
        n = sum(m.stop - m.start for m in members)
        if len(members) == 1:
            out.append((members[0].columns, n))
            continue
        joined = []
        for j, (name, form) in enumerate(key):
            cols = [m.columns[j][1] for m in members]
            joined.append((name, np.concatenate(cols) if form != "list" else [v for c in cols for v in c]))
        out.append((joined, n))
    return out


def _form(col: Any) -> str:
    return col.dtype.kind if isinstance(col, np.ndarray) and col.dtype.kind in "fS" else "list"


def hash_rows(hasher: FeatureHasher, feats: list[Mapping[str, Any] | None], keep: list[int],
              spans: Sequence[ColumnSpan] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """CSR rows of the batch's events ``keep`` (increasing; ``feats``: every event's features, None for
    those left out), and the events they are for: a row the hasher refuses (e.g. from a feature
    lookup) is skipped with a warning, so that one bad event never blocks its partition.

    Events in ``spans`` have their features in the span's columns (:data:`~cstore.feedback.IN_COLUMNS`
    in ``feats``). A span whose events are all kept is hashed column by column (the same arrays,
    several times faster); the other events — sent one by one, looked up, or of a span partly left
    out — row by row. Real streams mix both (``send`` beside ``send_batch``), so one row event must
    not send a whole batch down the slow path."""
    by_start = {sp.start: sp for sp in spans}
    parts: list[tuple[bool, list[Any]]] = []  # (columnar?, spans | event indices), in event order
    j = 0
    while j < len(keep):
        sp = by_start.get(keep[j])
        n = sp.stop - sp.start if sp is not None else 0
        columnar = sp is not None and j + n <= len(keep) and keep[j + n - 1] == sp.stop - 1
        item: Any = sp if columnar else keep[j]
        if parts and parts[-1][0] == columnar:
            parts[-1][1].append(item)
        else:
            parts.append((columnar, [item]))
        j += n if columnar else 1
    rows_of = _SpanRows(feats, spans)
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    done: list[int] = []
    for columnar, items in parts:
        if columnar:
            hashed = [hash_columns(hasher, columns, n) for columns, n in merged_columns(items)]
            if all(h is not None for h in hashed):
                pieces += [h for h in hashed if h is not None]
                done += [e for sp in items for e in range(sp.start, sp.stop)]
                continue
            items = [e for sp in items for e in range(sp.start, sp.stop)]  # declined: the row path decides
        indptr, idx, val, good = _hash_row_events(hasher, items, rows_of)
        pieces.append((indptr, idx, val))
        done += good
    if not pieces:
        return (*hasher.transform_many([]), [])
    offsets = np.cumsum([0] + [int(p[0][-1]) for p in pieces[:-1]])
    indptr = np.concatenate([[0]] + [p[0][1:] + o for p, o in zip(pieces, offsets)]).astype(np.int64)
    return indptr, np.concatenate([p[1] for p in pieces]), np.concatenate([p[2] for p in pieces]), done


def in_event_order(rows: tuple[np.ndarray, np.ndarray, np.ndarray, list[int]], events: Sequence[Event]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """:func:`hash_rows`' CSR rows and their events sorted by event time (ties keep batch order).

    A batch is gathered segment by segment, partition by partition, so its events arrive grouped by
    partition. The per-event pass is order-sensitive (FTRL's and AdaGrad's per-coordinate state), and a
    per-event learner learns events in the order they happened: sorting makes the batch's pass what that
    learner would do with the same events, whatever partitions and segments they came through.

    >>> ev = [Event(i, 0.0, "explicit", None, t, None, None) for i, t in enumerate([2.0, 1.0, 3.0])]
    >>> rows = (np.array([0, 1, 3, 4]), np.array([7, 8, 9, 6]), np.ones(4), [0, 1, 2])
    >>> indptr, idx, val, keep = in_event_order(rows, ev)
    >>> indptr.tolist(), idx.tolist(), keep
    ([0, 2, 3, 4], [8, 9, 7, 6], [1, 0, 2])
    """
    indptr, idx, val, keep = rows
    times = np.fromiter((events[i].event_time for i in keep), np.float64, len(keep))
    if times.size < 2 or bool(np.all(times[1:] >= times[:-1])):
        return rows
    order = np.argsort(times, kind="stable")
    lengths = np.diff(indptr)[order]
    out_ptr = np.zeros(order.size + 1, np.int64)
    np.cumsum(lengths, out=out_ptr[1:])
    take = np.repeat(indptr[:-1][order] - out_ptr[:-1], lengths) + np.arange(out_ptr[-1])
    return out_ptr, idx[take], val[take], [keep[i] for i in order.tolist()]


class _SpanRows:
    """Per-event feature dicts, built from a span's columns when an event needs the row path."""

    def __init__(self, feats: list[Mapping[str, Any] | None], spans: Sequence[ColumnSpan]) -> None:
        self.feats, self.spans = feats, sorted(spans, key=lambda sp: sp.start)
        self._starts = [sp.start for sp in self.spans]
        self._built: dict[int, list[dict[str, Any]] | None] = {}

    def row(self, e: int) -> Mapping[str, Any] | None:
        """Event ``e``'s features; None when its span's columns cannot be read as rows (warned)."""
        pos = bisect.bisect_right(self._starts, e) - 1
        sp = self.spans[pos] if pos >= 0 else None
        if sp is None or not sp.start <= e < sp.stop:
            return self.feats[e]
        if sp.start not in self._built:
            try:
                self._built[sp.start] = feature_rows(sp.columns, sp.stop - sp.start)
            except ValueError as exc:
                log.warning("skipping %d events whose stored features cannot be read: %s", sp.stop - sp.start, exc)
                self._built[sp.start] = None
        rows = self._built[sp.start]
        return None if rows is None else rows[e - sp.start]


def _hash_row_events(hasher: FeatureHasher, events: list[int], rows_of: _SpanRows
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    pairs = [(e, r) for e in events if (r := rows_of.row(e)) is not None]
    try:
        indptr, idx, val = hasher.transform_many([r for _, r in pairs])
        return indptr, idx, val, [e for e, _ in pairs]
    except ValueError:
        good = []
        for e, row in pairs:
            try:
                hasher.transform_one(row)
                good.append((e, row))
            except ValueError as exc:
                log.warning("skipping an event with unusable features: %s", exc)
        indptr, idx, val = hasher.transform_many([r for _, r in good])
        return indptr, idx, val, [e for e, _ in good]


def weights_at(rows: Mapping[int, Mapping[str, ChunkRow]], idx: np.ndarray, chunk_size: int) -> np.ndarray:
    """The ``weights`` at hashed indices ``idx``, gathered from the chunks' rows.

    >>> from cstore.core import ChunkRow
    >>> rows = {0: {"weights": ChunkRow("weights", np.array([1, 2], np.float32), 1, None)},
    ...         1: {"weights": ChunkRow("weights", np.array([3, 4], np.float32), 1, None)}}
    >>> weights_at(rows, np.array([3, 0, 2]), 2).tolist()
    [4.0, 1.0, 3.0]
    """
    out = np.empty(idx.size, np.float32)
    chunk_of = idx // chunk_size
    for k, by_param in rows.items():
        mask = chunk_of == k
        if mask.any():
            out[mask] = by_param["weights"].data[idx[mask] - k * chunk_size]
    return out


def sample_weights(cfg: LearnerConfig, events: Sequence[Event]) -> np.ndarray:
    """Per event: its kind's weight times its confidence, decayed by age when ``half_life_s`` is set,
    and 0 outside the ``window_s`` window (older events teach nothing)."""
    kw = cfg.kind_weights
    s = np.array([kw.get(ev.kind, 0.0) * (1.0 if ev.confidence is None else ev.confidence) for ev in events])
    if cfg.half_life_s or cfg.window_s:
        times, now = np.array([ev.event_time for ev in events]), time.time()
        s *= age_weights(times, now, cfg.half_life_s) * window_weights(times, now, cfg.window_s)
    return s


def batch_metadata(batch_id: uuid.UUID, worker: str, group: str, chosen: Sequence[SegmentRef], learned: int,
                   skipped: int, weight_sum: float, loss: float, score: float, drift: bool, lr_scale: float) -> str:
    """The history metadata of a batch's commit: what it learned from where (``offsets``: per
    ``part.lane`` the first and last segment time, segments and events), and how it went."""
    offsets: dict[str, list[int]] = {}
    for r in chosen:
        o = offsets.setdefault(f"{r.part}.{r.lane}", [r.ticks, r.ticks, 0, 0])
        o[0], o[1], o[2], o[3] = min(o[0], r.ticks), max(o[1], r.ticks), o[2] + 1, o[3] + r.n_events
    return json.dumps({"batch": str(batch_id), "worker": worker, "group": group, "samples": learned,
                       "skipped": skipped, "weight_sum": round(weight_sum, 6), "loss": round(loss, 6),
                       "drift_score": score, "drift": drift, "lr_scale": round(lr_scale, 6), "offsets": offsets},
                      sort_keys=True)
