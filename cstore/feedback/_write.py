"""Durable writes of segments: the bucket index first, then the segments, retried while idempotent.

Segment and bucket-index writes are idempotent (same key, same bytes), so a send that may or may not
have happened — a timeout, a connection that died under it — is simply repeated, under the same stamp
while it is young enough for the lateness contract (``_layout``), under a fresh one otherwise.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from cstore.core import TICKS_PER_S, ticks_now
from cstore.errors import ConsistencyUnavailable, FeedbackWriteFailed, InvalidFeedback, TransientError
from cstore.feedback._events import encode_event, make_event
from cstore.feedback._layout import FeedbackContext, FeedbackLayout, context
from cstore.feedback._segments import Segment
from cstore.store import Store

__all__ = ["WriteReport", "check_critical", "raise_failures", "send_feedback", "write_now", "write_segments"]


@dataclass
class WriteReport:
    written: int = 0
    retries: int = 0
    restamped: int = 0
    failed: list[tuple[Segment, BaseException]] = field(default_factory=list)


def write_segments(ctx: FeedbackContext, cfg: FeedbackLayout, segments: list[Segment], *, max_attempts: int = 6,
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
            errs = ctx.tables.announce([(cfg.model_id, p, b, ln, cfg.ttl_s + 2 * cfg.bucket_s) for p, b, ln in new])
            ctx.mark_announced(cfg, [k for k, e in zip(new, errs) if e is None])
            if any(e is not None for e in errs):
                failed_keys = {k for k, e in zip(new, errs) if e is not None}
                bad = [s for s in todo if (s.part, s.bucket, s.lane) in failed_keys]
                err = next(e for e in errs if e is not None)
                todo = _retry_or_fail(report, bad, err, max_attempts) + \
                    [s for s in todo if (s.part, s.bucket, s.lane) not in failed_keys]
                continue
        errors = ctx.tables.write_segments([(cfg.model_id, s.part, s.lane, s.bucket, s.seg_id, s.n_events,
                                             ctx.writer_id, s.stored(ctx.codec, cfg.model_id), cfg.ttl_s)
                                            for s in todo],
                                           concurrency=concurrency)
        acked_at = ticks_now()
        again: list[Segment] = []
        for seg, failure in zip(todo, errors):
            if failure is not None:
                again += _retry_or_fail(report, [seg], failure, max_attempts)
            elif acked_at - seg.ticks <= half_window:
                report.written += 1
            else:  # acknowledged too late for the lateness contract: re-send under a new stamp
                seg.restamps += 1
                report.restamped += 1
                seg.stamp(cfg)
                again.append(seg)
        for seg in again:
            if seg.restamps == 0 and ticks_now() - seg.ticks > half_window:
                seg.stamp(cfg)  # too old to reuse its stamp: a consumer may have moved past it
        todo = again
    return report


def _retry_or_fail(report: WriteReport, segs: list[Segment], err: BaseException,
                   max_attempts: int) -> list[Segment]:
    keep = []
    for seg in segs:
        seg.attempts += 1
        if isinstance(err, TransientError) and seg.attempts < max_attempts:
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
    _, err = report.failed[0]
    n = sum(s.n_events for s, _ in report.failed)
    if isinstance(err, ConsistencyUnavailable):
        raise ConsistencyUnavailable(f"{err}; those {n} event(s) were not written", operation=err.operation,
                                     consistency=err.consistency, required=err.required, alive=err.alive) from None
    raise FeedbackWriteFailed(f"{n} feedback event(s) in {len(report.failed)} segment(s) could not be written "
                              f"({type(err).__name__}: {err}); they are not durable: send them again",
                              events=n) from None


def send_feedback(store: Store, model: str, entity_id: Any, label: Any, *, kind: str = "explicit",
                  confidence: Any = None, event_time: Any = None, features: Any = None, metadata: Any = None,
                  critical: bool = False) -> None:
    """Validate and durably write one event; returns once it is acknowledged (nothing is written if it is bad).

    ``critical=True`` (a confirmed chargeback, say) puts the event in the model's critical partition,
    which a worker polls every few milliseconds and learns at once, beside the bulk micro-batches.

    >>> cstore.send_feedback(store, "fraud", "tx-42", 1, kind="explicit", features={"amount": 120.0})  # doctest: +SKIP
    """
    ctx = context(store)
    _, cfg = ctx.layout(model)
    ev = make_event(entity_id, label, kind, confidence, event_time, features, metadata)
    write_now(ctx, cfg, ev.entity_id, ev.kind, encode_event(ev), critical=check_critical(critical))


def write_now(ctx: FeedbackContext, cfg: FeedbackLayout, entity_id: Any, kind: str, data: bytes, *,
              critical: bool, max_attempts: int = 6) -> None:
    """Write one encoded event as its own segment, on the caller's thread; raise if it is not durable."""
    part = cfg.critical_part if critical else cfg.part_of(entity_id)
    seg = Segment(part, cfg.lane_of(kind), [data], len(data))
    raise_failures(write_segments(ctx, cfg, [seg], max_attempts=max_attempts))


def check_critical(critical: Any) -> bool:
    if not isinstance(critical, bool):
        raise InvalidFeedback(f"critical must be True or False, got {critical!r}")
    return critical
