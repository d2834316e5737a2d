"""Feedback: the per-model layout, segments, and durable writes (``Store.feedback`` lands here).

An event is ``(entity_id, label, kind, confidence, event_time, features, metadata)``, validated by
:func:`cstore.feedback_events.make_event` *before* anything is buffered or written: a bad event
raises :class:`~cstore.errors.InvalidFeedback` (or :class:`~cstore.errors.PayloadTooLarge`, or
:class:`~cstore.errors.UnknownModel`) and leaves the database untouched. The buffered writer is
:class:`cstore.feedback_writer.FeedbackWriter`; the consumer side is :mod:`cstore.feedback_reader`.

Storage (``cql/002_feedback.cql``): the entity id hashes to one of P partitions, the kind picks a
priority *lane*, the producer's clock stamps each segment with a timeuuid whose time picks the bucket.
A segment is one CQL row holding many msgpack-encoded events.

Lateness contract (what lets consumers checkpoint by time without missing late segments, see
:mod:`cstore.feedback_reader`): a segment counts as written only if its write was acknowledged
within ``lateness_s / 2`` of its stamp; a slower acknowledgement makes the writer re-send the same
events under a fresh stamp (a possible duplicate, never a loss). The other half of the window
absorbs clock skew between producers and consumers.

>>> import cstore                                                   # doctest: +SKIP
>>> store = cstore.connect()                                        # doctest: +SKIP
>>> store.feedback("fraud", "tx-42", 1, kind="explicit", features={"amount": 120.0})  # doctest: +SKIP
"""
from __future__ import annotations

import random
import threading
import time
import uuid
import weakref
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import msgpack
import numpy as np
from cassandra import OperationTimedOut, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.concurrent import execute_concurrent_with_args

from cstore.errors import ConsistencyUnavailable, FeedbackWriteFailed, ValidationError
from cstore.feedback_events import (DEFAULT_PRIORITIES, KINDS, PAYLOAD_VERSION, Event, decode_payload,  # noqa: F401
                                    encode_event, make_event)
from cstore.models import UUID_EPOCH_TICKS

TICKS_PER_S = 10_000_000  # timeuuid resolution: 100 ns


# -- time-based UUIDs at 100 ns resolution (the driver's helpers go through float seconds) ---------
def ticks_now() -> int:
    """Now, in 100 ns ticks since the Unix epoch."""
    return time.time_ns() // 100


def ticks_of(u: uuid.UUID) -> int:
    return u.time - UUID_EPOCH_TICKS


def uuid_at(ticks: int, node: int | None = None, clock_seq: int | None = None) -> uuid.UUID:
    """A version-1 UUID at ``ticks``; random node and clock sequence unless given."""
    t = ticks + UUID_EPOCH_TICKS
    cs = random.getrandbits(14) if clock_seq is None else clock_seq
    nd = random.getrandbits(48) if node is None else node
    return uuid.UUID(fields=(t & 0xFFFFFFFF, (t >> 32) & 0xFFFF, (t >> 48) & 0x0FFF,
                             0x80 | ((cs >> 8) & 0x3F), cs & 0xFF, nd), version=1)


def max_uuid_at(ticks: int) -> uuid.UUID:
    """The greatest timeuuid at ``ticks`` in Cassandra's order (signed-byte comparison)."""
    return uuid_at(ticks, node=0x7F7F7F7F7F7F, clock_seq=0x3F7F)


# -- the per-model layout ----------------------------------------------------------------------------
def _entity_key(entity_id: str | int) -> bytes:
    """The bytes an entity id is partitioned by."""
    return str(entity_id).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class FeedbackConfig:
    """How a model's feedback is laid out; fixed when first written."""

    model_id: uuid.UUID
    partitions: int
    bucket_s: int
    ttl_s: int
    lateness_s: int
    priorities: Mapping[str, int]
    created_at: float

    @property
    def lanes(self) -> tuple[int, ...]:
        """Lane numbers, highest priority (lowest number) first."""
        return tuple(sorted(set(self.priorities.values())))

    def part_of(self, entity_id: str | int) -> int:
        # CRC-32: stable across processes and versions, and ~8x cheaper than a keyed hash, which matters
        # at 100k events/s. Only the write side uses it (readers list every partition), so the choice
        # affects balance and per-entity order, never what is read.
        return zlib.crc32(_entity_key(entity_id)) % self.partitions

    def parts_of(self, entity_ids: list) -> np.ndarray:
        """:meth:`part_of` of many ids at once."""
        crcs = map(zlib.crc32, map(_entity_key, entity_ids))
        return np.fromiter(crcs, dtype=np.int64, count=len(entity_ids)) % self.partitions

    def lane_of(self, kind: str) -> int:
        return self.priorities[kind]

    def bucket_of(self, ticks: int) -> int:
        return ticks // (self.bucket_s * TICKS_PER_S)

    def to_dict(self) -> dict[str, Any]:
        return {"partitions": self.partitions, "bucket_s": self.bucket_s, "ttl_s": self.ttl_s,
                "lateness_s": self.lateness_s, "priorities": dict(self.priorities), "created_at": self.created_at}


def check_layout(partitions: int, bucket_s: int, ttl_s: int, lateness_s: int,
                 priorities: Mapping[str, int]) -> None:
    """Reject a feedback layout that would not work, with the reason."""
    for name, v, lo, hi in (("partitions", partitions, 1, 1024), ("bucket_s", bucket_s, 1, 86400),
                            ("ttl_s", ttl_s, 60, 10 * 365 * 86400), ("lateness_s", lateness_s, 1, 3600)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValidationError(f"feedback {name} must be an integer in [{lo}, {hi}], got {v!r}")
    if lateness_s * 2 >= ttl_s:
        raise ValidationError(f"feedback lateness_s ({lateness_s}) must be well below ttl_s ({ttl_s})")
    if not isinstance(priorities, Mapping) or set(priorities) != set(KINDS):
        raise ValidationError(f"feedback priorities must map every kind ({', '.join(KINDS)}) to a lane 0-9")
    if any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9 for p in priorities.values()):
        raise ValidationError(f"feedback priorities must be integers 0-9 (0 = learned first), got {dict(priorities)}")


class FeedbackTables:
    """Prepared statements for the feedback tables, one set per session."""

    def __init__(self, session) -> None:
        p = session.prepare
        self.session = session
        self.q_config = p("SELECT * FROM feedback_config WHERE model_id = ?")
        self.q_config_create = p("INSERT INTO feedback_config (model_id, partitions, bucket_s, ttl_s, lateness_s, "
                                 "priorities, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self.q_segment = p("INSERT INTO feedback_segments (model_id, part, lane, bucket, seg_id, n_events, writer, "
                           "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")
        self.q_announce = p("INSERT INTO feedback_buckets (model_id, part, bucket, lane) VALUES (?, ?, ?, ?) "
                            "USING TTL ?")


def _config_from_row(row: Mapping[str, Any]) -> FeedbackConfig:
    created = row["created_at"]
    return FeedbackConfig(row["model_id"], row["partitions"], row["bucket_s"], row["ttl_s"], row["lateness_s"],
                          dict(row["priorities"] or DEFAULT_PRIORITIES),
                          created.replace(tzinfo=timezone.utc).timestamp() if created else 0.0)


def ensure_config(tables: FeedbackTables, model_id: uuid.UUID, *, partitions: int, bucket_s: int, ttl_s: int,
                  lateness_s: int, priorities: Mapping[str, int] | None = None,
                  create: bool = True) -> FeedbackConfig | None:
    """The model's layout, creating it with these values if none exists yet (first writer wins).

    ``create=False`` only reads: None when the model has never had feedback nor a learner.
    """
    row = tables.session.execute(tables.q_config, (model_id,), execution_profile="coordination").one()
    if row is not None:
        return _config_from_row(row)
    if not create:
        return None
    prios = dict(priorities or DEFAULT_PRIORITIES)
    check_layout(partitions, bucket_s, ttl_s, lateness_s, prios)
    rs = tables.session.execute(tables.q_config_create, (model_id, partitions, bucket_s, ttl_s, lateness_s, prios,
                                                         datetime.now(timezone.utc)),
                                execution_profile="coordination")
    if not rs.was_applied:  # somebody else created it first: theirs is the layout
        return _config_from_row(rs.one())
    row = tables.session.execute(tables.q_config, (model_id,), execution_profile="coordination").one()
    return _config_from_row(row)


class FeedbackContext:
    """Per-``Store`` feedback state: statements, layouts, and which buckets this process announced."""

    def __init__(self, store) -> None:
        self.store = store
        self.tables = FeedbackTables(store.session)
        self.writer_id = f"{store.stats_recorder.writer}"
        self._configs: dict[uuid.UUID, FeedbackConfig] = {}
        self._announced: set[tuple] = set()
        self._lock = threading.Lock()

    def config(self, model: str, *, create: bool = True, **layout: Any) -> tuple[Any, FeedbackConfig]:
        """``(ModelInfo, FeedbackConfig)`` for ``model``; unknown models raise UnknownModel.

        ``create=False`` never writes: a model without a feedback layout raises ValidationError.
        """
        info = self.store.model_info(model)
        cfg = self._configs.get(info.model_id)
        if cfg is None:
            c = self.store.config
            opts = {"partitions": c.feedback_partitions, "bucket_s": c.feedback_bucket_s,
                    "ttl_s": c.feedback_ttl_s, "lateness_s": c.feedback_lateness_s, **layout}
            cfg = ensure_config(self.tables, info.model_id, create=create, **opts)
            if cfg is None:
                raise ValidationError(f"model {model!r} has no feedback yet and is not a learner; create one "
                                      f"with `cstore model create-learner` or send feedback first")
            self._configs[info.model_id] = cfg
        return info, cfg

    def unannounced(self, cfg: FeedbackConfig, keys: set[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        with self._lock:
            return [k for k in keys if (cfg.model_id, *k) not in self._announced]

    def mark_announced(self, cfg: FeedbackConfig, keys: list[tuple[int, int, int]]) -> None:
        with self._lock:
            self._announced.update((cfg.model_id, *k) for k in keys)
            if len(self._announced) > 100_000:  # old buckets are never written again
                self._announced.clear()


_CONTEXTS: "weakref.WeakKeyDictionary[Any, FeedbackContext]" = weakref.WeakKeyDictionary()
_CONTEXTS_LOCK = threading.Lock()


def context(store) -> FeedbackContext:
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(store)
        if ctx is None:
            ctx = _CONTEXTS[store] = FeedbackContext(store)
        return ctx


# -- segments and durable writes ----------------------------------------------------------------------
@dataclass
class Segment:
    """Encoded events bound for one (partition, lane); stamped when sealed, re-stamped if acked late.

    Format 1 holds one msgpack item per event; format 2 (:mod:`cstore.feedback_columns`) holds blocks
    of columns, ``block_events`` events in all. A segment never mixes the two.
    """

    part: int
    lane: int
    items: list[bytes] = field(default_factory=list)
    nbytes: int = 0
    seg_id: uuid.UUID | None = None
    ticks: int = 0
    bucket: int = 0
    attempts: int = 0
    restamps: int = 0
    version: int = PAYLOAD_VERSION
    block_events: int = 0

    @property
    def n_events(self) -> int:
        return len(self.items) if self.version == PAYLOAD_VERSION else self.block_events

    def stamp(self, cfg: FeedbackConfig) -> None:
        self.ticks = ticks_now()
        self.seg_id = uuid_at(self.ticks)
        self.bucket = cfg.bucket_of(self.ticks)

    def payload(self) -> bytes:
        packer = msgpack.Packer(use_bin_type=True)
        return packer.pack_array_header(len(self.items) + 1) + packer.pack(self.version) + b"".join(self.items)


@dataclass
class WriteReport:
    written: int = 0
    retries: int = 0
    restamped: int = 0
    failed: list[tuple[Segment, Exception]] = field(default_factory=list)


# Segment and bucket-index writes are idempotent (same key, same bytes), so a send that may or may not
# have happened -- a timeout, or a connection that died under it (NoHostAvailable) -- is simply repeated.
_RETRYABLE = (WriteTimeout, OperationTimedOut, Unavailable, NoHostAvailable)


def write_segments(ctx: FeedbackContext, cfg: FeedbackConfig, segments: list[Segment], *, max_attempts: int = 6,
                   concurrency: int = 32) -> WriteReport:
    """Write ``segments`` at the ``ingest_feedback`` level; return once each is durable or given up on.

    A segment acknowledged later than ``lateness_s / 2`` after its stamp is written again under a
    new stamp (the lateness contract); timeouts are retried with the same stamp while it is young.
    """
    report = WriteReport()
    todo = list(segments)
    for seg in todo:
        if seg.seg_id is None:
            seg.stamp(cfg)
    half_window = cfg.lateness_s * TICKS_PER_S // 2
    while todo:
        keys = {(s.part, s.bucket, s.lane) for s in todo}
        new = ctx.unannounced(cfg, keys)
        if new:  # bucket index rows first, so a consumer that sees a segment can find its bucket
            res = execute_concurrent_with_args(ctx.tables.session, ctx.tables.q_announce,
                                               [(cfg.model_id, p, b, ln, cfg.ttl_s + 2 * cfg.bucket_s)
                                                for p, b, ln in new], concurrency=concurrency,
                                               raise_on_first_error=False, execution_profile="ingest_feedback")
            ctx.mark_announced(cfg, [k for k, (ok, _) in zip(new, res) if ok])
            if not all(ok for ok, _ in res):
                failed_keys = {k for k, (ok, _) in zip(new, res) if not ok}
                bad = [s for s in todo if (s.part, s.bucket, s.lane) in failed_keys]
                err = next(r for ok, r in res if not ok)
                todo = _retry_or_fail(report, bad, err, max_attempts) + \
                    [s for s in todo if (s.part, s.bucket, s.lane) not in failed_keys]
                continue
        args = [(cfg.model_id, s.part, s.lane, s.bucket, s.seg_id, s.n_events, ctx.writer_id, s.payload(),
                 cfg.ttl_s) for s in todo]
        results = execute_concurrent_with_args(ctx.tables.session, ctx.tables.q_segment, args,
                                               concurrency=concurrency, raise_on_first_error=False,
                                               execution_profile="ingest_feedback")
        acked_at = ticks_now()
        again: list[Segment] = []
        for seg, (ok, res) in zip(todo, results):
            if ok and acked_at - seg.ticks <= half_window:
                report.written += 1
            elif ok:  # acknowledged too late for the lateness contract: re-send under a new stamp
                seg.restamps += 1
                report.restamped += 1
                seg.stamp(cfg)
                again.append(seg)
            else:
                again += _retry_or_fail(report, [seg], res, max_attempts)
        for seg in again:
            if seg.restamps == 0 and ticks_now() - seg.ticks > half_window:
                seg.stamp(cfg)  # too old to reuse its stamp: a consumer may have moved past it
        todo = again
    return report


def _retry_or_fail(report: WriteReport, segs: list[Segment], err: Exception, max_attempts: int) -> list[Segment]:
    keep = []
    for seg in segs:
        seg.attempts += 1
        if isinstance(err, _RETRYABLE) and seg.attempts < max_attempts:
            report.retries += 1
            keep.append(seg)
        else:
            report.failed.append((seg, err))
    if keep:
        time.sleep(min(2.0, 0.05 * 2 ** max(s.attempts for s in keep)) * random.uniform(0.5, 1.0))
    return keep


def raise_failures(report: WriteReport) -> None:
    if not report.failed:
        return
    seg, err = report.failed[0]
    n = sum(s.n_events for s, _ in report.failed)
    if isinstance(err, Unavailable):
        raise ConsistencyUnavailable(f"ingest_feedback: not enough replicas for {n} event(s) ({err}); bring nodes "
                                     f"back or use a weaker profile; those events were not written") from None
    raise FeedbackWriteFailed(f"{n} feedback event(s) in {len(report.failed)} segment(s) could not be written "
                              f"({type(err).__name__}: {err}); they are not durable: send them again") from None


def send_one(store, model: str, entity_id: Any, label: Any, *, kind: str = "explicit", confidence: Any = None,
             event_time: Any = None, features: Any = None, metadata: Any = None) -> None:
    """Validate and durably write one event (``Store.feedback``); returns once it is acknowledged."""
    ctx = context(store)
    _, cfg = ctx.config(model)
    ev = make_event(entity_id, label, kind, confidence, event_time, features, metadata)
    data = encode_event(ev)
    seg = Segment(cfg.part_of(ev.entity_id), cfg.lane_of(ev.kind), [data], len(data))
    raise_failures(write_segments(ctx, cfg, [seg]))
