"""Erasure of one entity's data (a data subject's request): its feedback events and prediction-log rows.

Where they are: the entity's events sit in segments of the one bulk partition its id hashes to, and
of the critical partition, among other entities' events; its prediction-log rows are one partition
of ``prediction_log`` plus a review row each.

How segments are rewritten without disturbing workers: a segment keeps its id, bucket and
remaining TTL, and loses only the entity's events. Consumers checkpoint by segment id, so a segment
already learned is not read again, and one not yet learned is learned once, with the entity's events
(if the worker fetched it before the rewrite) or without them: never lost, never twice. The rewrite
is a compare-and-set on the bytes read, so two erasures of one segment never undo each other; a
segment left with no event is deleted (workers skip segments that are gone).

Events of the entity written while the erasure runs (after its scan) are not covered: stop sending
for the entity first, or run it again.

What erasure does NOT do: weights learned from the entity's events are not unlearned (a logistic
regression's weights are not a list of examples); retrain or roll back to a snapshot taken before
them if that is required. The erasure is recorded in the model's audit trail (``audit_log``, which
outlives the model) with a hash of the id, never the id.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from cstore.backend import REVIEW_BUCKET_S, Row
from cstore.core import TICKS_PER_S, ticks_of, uuid_now
from cstore.errors import CorruptData, CstoreError, InvalidFeedback, KeyUnavailable, ValidationError
from cstore.feedback._events import _entity, encode_event
from cstore.feedback._layout import FeedbackLayout, context
from cstore.feedback._prediction_log import band_of
from cstore.feedback._segments import PAYLOAD_VERSION, Segment, decode_stored, open_segment, seal_segment
from cstore.store import Store, actor

__all__ = ["ERASE_ACTION", "ErasureReport", "entity_hash", "erase_entity", "erasures"]

log = logging.getLogger("cstore.erasure")
_MAX_REASON = 1000
_CAS_ATTEMPTS = 20
ERASE_ACTION = "erase"  # the audit-trail action of an erasure


@dataclass
class ErasureReport:
    """What one erasure removed (``entity_hash`` names the entity without keeping its id)."""

    model: str
    erasure_id: str
    entity_hash: str
    events: int = 0
    segments_rewritten: int = 0
    segments_deleted: int = 0
    predictions: int = 0
    unreadable_segments: list[str] = field(default_factory=list)  # damaged: could not be searched

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights_unlearned": False}


def entity_hash(model_id: uuid.UUID, entity_id: str | int) -> str:
    """SHA-256 of the model incarnation and the id: checkable by whoever holds the id, useless without it."""
    return hashlib.sha256(model_id.bytes + str(entity_id).encode("utf-8", "surrogatepass")).hexdigest()


def erase_entity(store: Store, model: str, entity_id: Any, *, reason: str,
                 requested_by: str | None = None) -> ErasureReport:
    """Remove every feedback event and prediction-log row of ``entity_id`` from ``model``; record it.

    Bad input (a malformed id, no reason, an unknown model, an entity of which nothing is stored)
    raises before anything is written. Safe while workers run (see the module's notes); learned
    weights are not unlearned.
    """
    ent = _entity(entity_id)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_REASON:
        raise ValidationError(f"give the erasure a reason of 1-{_MAX_REASON} characters (the request it honours, "
                              f"e.g. 'GDPR art. 17 request 2026-118'); it is kept in the erasure record")
    key = str(ent)
    ctx = context(store)
    info = store.model_info(model)
    try:
        layout: FeedbackLayout | None = ctx.layout(model, create=False)[1]
    except ValidationError:  # a model nobody ever sent feedback to: only its prediction log can hold the entity
        layout = None
    found = _segments_with(store, layout, key) if layout is not None else []
    logged = store.backend.predictions.entity_rows(info.model_id, key)
    report = ErasureReport(model, str(uuid_now()), entity_hash(info.model_id, ent),
                           unreadable_segments=[str(r["seg_id"]) for _, r in found if r.get("unreadable")])
    found = [(where, r) for where, r in found if not r.get("unreadable")]
    if not found and not logged:
        raise ValidationError(f"model {model!r} holds no feedback event and no prediction-log row of entity "
                              f"{key!r}: nothing to erase (check the id and the model; ids are matched as text)")
    for (part, lane, bucket), row in found:
        assert layout is not None
        _erase_in_segment(store, layout, part, lane, bucket, row, key, report)
    if logged:
        review = sorted({(b, band_of(r["score"]), abs(r["score"] - 0.5), r["scored_at"])
                         for r in logged for b in _review_buckets(r["scored_at"])}, key=repr)
        store.backend.predictions.erase_entity(info.model_id, key, review)
        report.predictions = len(logged)
    # Recorded once done: an erasure cut short recorded nothing, and running it again removes what is left.
    store.governance.record(model, ERASE_ACTION, before=str(info.model_id), reason=reason,
                            actor=requested_by or actor(), details=report.to_dict())
    log.info("erased entity %s of model %r: %d event(s), %d prediction-log row(s)", report.entity_hash[:12], model,
             report.events, report.predictions)
    return report


def erasures(store: Store, model: str) -> list[dict[str, Any]]:
    """The model's erasures from its audit trail, newest first (kept after the model is dropped)."""
    return [e for e in store.governance.audit(model, limit=10_000) if e["action"] == ERASE_ACTION]


def _review_buckets(scored_at: uuid.UUID) -> set[int]:
    # The writer buckets by int(seconds) // 600 of a float time; from the UUID's 100 ns ticks the second
    # can differ by one at a boundary, and deleting a review row that is not there costs a tombstone only.
    s = ticks_of(scored_at) // TICKS_PER_S
    return {s // REVIEW_BUCKET_S, (s + 1) // REVIEW_BUCKET_S, (s - 1) // REVIEW_BUCKET_S}


def _matches(events: list[Any], key: str) -> list[Any]:
    return [ev for ev in events if str(ev.entity_id) == key]


def _segments_with(store: Store, layout: FeedbackLayout, key: str) -> list[tuple[tuple[int, int, int], Row]]:
    """Every stored segment holding an event of ``key`` (and the damaged ones, marked ``unreadable``)."""
    fb = store.backend.feedback
    codec = store.chunks.codec
    parts = sorted({layout.part_of(key), layout.critical_part})
    out = []
    for part, rows in zip(parts, fb.buckets(layout.model_id, [(p, 0) for p in parts])):
        for b in rows:
            for r in fb.segment_rows(layout.model_id, part, b["lane"], b["bucket"]):
                try:
                    events, _ = decode_stored(open_segment(codec, layout.model_id, part, b["lane"], b["bucket"],
                                                           r["seg_id"], r["payload"]))
                except KeyUnavailable:
                    raise  # this process cannot search the segments: erase nothing rather than part
                except (CorruptData, InvalidFeedback) as exc:
                    log.error("segment %s cannot be searched for the entity (%s)", r["seg_id"], exc)
                    out.append(((part, b["lane"], b["bucket"]), {**r, "unreadable": True}))
                    continue
                if _matches(events, key):
                    out.append(((part, b["lane"], b["bucket"]), r))
    return out


def _erase_in_segment(store: Store, layout: FeedbackLayout, part: int, lane: int, bucket: int, row: Row, key: str,
                      report: ErasureReport) -> None:
    """Rewrite one segment without ``key``'s events, by compare-and-set on the bytes read; re-read and
    try again when another erasure rewrote it meanwhile (or the outcome is unknown)."""
    fb, codec, mid, seg_id = store.backend.feedback, store.chunks.codec, layout.model_id, row["seg_id"]
    current: Row | None = row
    unknown: tuple[int, bool] | None = None  # our last write's (events, deleted) when its outcome was unknown
    for _ in range(_CAS_ATTEMPTS):
        events, _ = decode_stored(open_segment(codec, mid, part, lane, bucket, seg_id, current["payload"])) \
            if current is not None else ([], 0)
        gone = _matches(events, key)
        if not gone:  # removed: by our write whose outcome was unknown, by a concurrent erasure, or expired
            if unknown is not None:
                _count(report, *unknown)
            return
        assert current is not None
        kept = [ev for ev in events if str(ev.entity_id) != key]
        payload = None
        if kept:
            seg = Segment(part, lane, items=[encode_event(ev) for ev in kept], version=PAYLOAD_VERSION)
            payload = seal_segment(codec, mid, part, lane, bucket, seg_id, seg.payload())
        ttl = current.get("ttl") or layout.ttl_s
        cas = fb.rewrite_segment(mid, part, lane, bucket, seg_id, bytes(current["payload"]), payload, len(kept),
                                 max(1, int(ttl)))
        if cas.applied:
            _count(report, len(gone), not kept)
            return
        unknown = (len(gone), not kept) if cas.applied is None else None
        current = fb.segment_row(mid, part, lane, bucket, seg_id)
    raise CstoreError(f"segment {seg_id} kept changing while erasing an entity from it; run the erasure again "
                      f"(it only removes what is still there)")


def _count(report: ErasureReport, events: int, deleted: bool) -> None:
    report.events += events
    if deleted:
        report.segments_deleted += 1
    else:
        report.segments_rewritten += 1
