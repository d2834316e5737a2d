"""A segment: one CQL row of ``feedback_segments`` holding many events, and how stored segments are read back.

Payload: a msgpack array whose first item is the format — ``1``: then one msgpack item per event
(:func:`~cstore.feedback.make_event`'s fields); ``2``: then blocks of columns (``_columns``).
Readers accept both; an event a learner cannot use (written by something other than cstore, or
damaged) is counted as poison and set aside, never learned.

With encryption at rest on, the stored payload is that msgpack sealed by the key ring's AES-GCM stage,
its associated data naming the row (:func:`~cstore.core.segment_context`: model incarnation,
partition, lane, bucket, segment id), so a payload copied to another row fails like a flipped bit.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import numpy as np

from cstore.core import CodecPipeline, segment_context, ticks_now, uuid_at
from cstore.errors import InvalidFeedback
from cstore.feedback._columns import IN_COLUMNS, decode_block_columns
from cstore.feedback._events import KINDS, Event
from cstore.feedback._layout import FeedbackLayout

__all__ = ["COLUMNAR_VERSION", "PAYLOAD_VERSION", "ColumnSpan", "Segment", "decode_payload", "decode_stored",
           "decode_stored_columns", "open_segment", "seal_segment"]

PAYLOAD_VERSION = 1    # a segment of one msgpack item per event
COLUMNAR_VERSION = 2   # a segment of column blocks


@dataclass
class Segment:
    """Encoded events bound for one (partition, lane); stamped when sealed, re-stamped if acked late.

    Format 1 holds one msgpack item per event; format 2 (``_columns``) holds blocks of columns,
    ``block_events`` events in all. A segment never mixes the two.
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
    sealed: tuple[uuid.UUID, bytes] | None = None  # the stored bytes under ``seg_id``: a retry sends the same

    def stored(self, codec: CodecPipeline, model_id: uuid.UUID) -> bytes:
        """The bytes to store for this segment under its current stamp (sealed when encryption is on)."""
        assert self.seg_id is not None, "stamp the segment first"
        if self.sealed is None or self.sealed[0] != self.seg_id:  # re-stamped: the associated data changed
            self.sealed = (self.seg_id, seal_segment(codec, model_id, self.part, self.lane, self.bucket,
                                                     self.seg_id, self.payload()))
        return self.sealed[1]

    @property
    def n_events(self) -> int:
        return len(self.items) if self.version == PAYLOAD_VERSION else self.block_events

    def stamp(self, layout: FeedbackLayout) -> None:
        self.ticks = ticks_now()
        self.seg_id = uuid_at(self.ticks)
        self.bucket = layout.bucket_of(self.ticks)

    def payload(self) -> bytes:
        packer = msgpack.Packer(use_bin_type=True)
        return packer.pack_array_header(len(self.items) + 1) + packer.pack(self.version) + b"".join(self.items)


def seal_segment(codec: CodecPipeline, model_id: uuid.UUID, part: int, lane: int, bucket: int, seg_id: uuid.UUID,
                 payload: bytes) -> bytes:
    """A segment's msgpack payload as stored: sealed to its row when encryption is on, else unchanged."""
    return codec.encode_bytes(payload, context=segment_context(model_id, part, lane, bucket, seg_id))


def open_segment(codec: CodecPipeline, model_id: uuid.UUID, part: int, lane: int, bucket: int, seg_id: uuid.UUID,
                 stored: bytes) -> bytes:
    """The msgpack payload of a stored segment. ``KeyUnavailable`` when this process's keys cannot open
    it (a setup problem: stop, learn nothing), ``CorruptData`` when it is damaged or not its row's."""
    return codec.decode_bytes(stored, context=segment_context(model_id, part, lane, bucket, seg_id),
                              what="feedback segment")


def decode_payload(payload: bytes) -> list[Event]:
    """Events of one segment, in the order they were sent; raises if any of them is unusable."""
    events, bad = decode_stored(payload)
    if bad:
        raise InvalidFeedback(f"feedback segment holds {bad} unusable event(s) (see decode_stored)")
    return events


def _usable(ev: Event) -> bool:
    """Can a learner use this stored event? (It was validated when sent, unless something else wrote it.)"""
    def unit(v: Any) -> bool:
        return type(v) in (float, int) and 0.0 <= v <= 1.0
    return (type(ev.entity_id) in (str, int) and unit(ev.label) and ev.kind in KINDS
            and (ev.confidence is None or unit(ev.confidence))
            and type(ev.event_time) in (float, int) and math.isfinite(ev.event_time)
            and (ev.features is None or type(ev.features) is dict or ev.features is IN_COLUMNS))


class ColumnSpan(NamedTuple):
    """Events ``start:stop`` of a decoded segment came from one columnar block: ``columns`` are
    their features as stored (``(name, column)``, one value per event of the span)."""
    start: int
    stop: int
    columns: list[tuple[str, Any]]


def decode_stored(payload: bytes) -> tuple[list[Event], int]:
    """A stored segment's usable events, and how many poison events it had (set aside, never learned).

    Raises :class:`InvalidFeedback` when the payload is not a segment at all (damaged, or written by
    something other than cstore); the worker then sets the whole segment aside.
    """
    events, bad, _ = decode_stored_columns(payload)
    return events, bad


def decode_stored_columns(payload: bytes, *, dicts: bool = True) -> tuple[list[Event], int, list[ColumnSpan]]:
    """:func:`decode_stored`, and where the events' features are also held as columns (the spans of
    a columnar segment's blocks that have features; none for a segment of one item per event).
    ``dicts=False``: those events' features are :data:`~cstore.feedback.IN_COLUMNS`, the spans hold
    them (a learner that hashes columns never builds the dicts)."""
    try:
        items = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for damaged input
        raise InvalidFeedback(f"feedback segment is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if type(items) is not list or not items or items[0] not in (PAYLOAD_VERSION, COLUMNAR_VERSION):
        raise InvalidFeedback(f"feedback segment has unknown format {str(items)[:40]!r}")
    if items[0] == COLUMNAR_VERSION:
        return _decode_columnar(items[1:], dicts)
    good = []
    for it in items[1:]:
        if type(it) is list and len(it) == len(Event._fields):
            ev = Event(*it)
            if _usable(ev):
                good.append(ev)
    return good, len(items) - 1 - len(good), []


def _decode_columnar(blocks: list[Any], dicts: bool) -> tuple[list[Event], int, list[ColumnSpan]]:
    good: list[Event] = []
    spans: list[ColumnSpan] = []
    bad = 0
    for block in blocks:
        try:
            events, columns = decode_block_columns(block, dicts=dicts)
        except (ValueError, TypeError, KeyError):
            n = block.get("n") if type(block) is dict else None
            bad += n if type(n) is int and 0 < n <= 1_000_000 else 1
            continue
        usable = [i for i, ev in enumerate(events) if _usable(ev)]
        bad += len(events) - len(usable)
        if columns is not None and usable:
            if len(usable) < len(events):
                columns = [(name, _rows_of(col, usable)) for name, col in columns]
            spans.append(ColumnSpan(len(good), len(good) + len(usable), columns))
        good += [events[i] for i in usable] if len(usable) < len(events) else events
    return good, bad, spans


def _rows_of(col: Any, rows: list[int]) -> Any:
    return col[np.asarray(rows)] if isinstance(col, np.ndarray) else [col[i] for i in rows]
