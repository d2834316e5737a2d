"""Reading feedback past a checkpoint, without missing segments that arrive late.

**Checkpoint** per (model, group, partition, lane): ``floor`` (a time, 100 ns ticks) and ``done``, the
ids of segments learned that are stamped after the floor. Every segment stamped at or before the
floor has been learned; a segment above it is learned iff its id is in ``done``.

**Why a floor plus a set, not an offset.** Segments are stamped by producers' clocks and become
visible when their write lands, so they do not appear in stamp order: a slow producer's segment
stamped at ``t`` may show up after one stamped at ``t + 1 s``. The lateness contract
(``_layout``) bounds that: a segment not yet visible when a scan starts at ``T`` is
stamped after ``T - lateness``. So each scan lists *everything* above the floor (ids only, cheap),
skips what ``done`` holds, and afterwards the floor may rise to at most ``T - lateness`` (and never
past a listed segment that was not learned, nor past the end of what the scan listed). ``done``
therefore holds about ``lateness`` seconds of segment ids, a few hundred entries at most.

The argument needs an acknowledged segment to be visible to the consumer's reads: true when the
``ingest_feedback`` and ``read_feedback`` levels overlap (QUORUM/QUORUM in the strong profile, or any
level with RF=1). With ONE/ONE on RF>1 (the eventual profile) a replica that missed a write can hide a
segment longer than the window; that profile trades this guarantee away, like the others it weakens.

Listing is bounded per poll: up to ``max_buckets`` buckets per lane (from the bucket index, which
skips empty buckets) and ``limit`` ids per bucket; ``horizon`` records how far the listing is
complete, and the floor never passes it.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack

from cstore.backend import Cas, FeedbackTables, Row
from cstore.core import TICKS_PER_S, CodecPipeline, max_uuid_at, ticks_of
from cstore.errors import CorruptData, CstoreError, InvalidFeedback, KeyUnavailable
from cstore.feedback._events import Event
from cstore.feedback._layout import FeedbackLayout
from cstore.feedback._segments import ColumnSpan, decode_stored_columns, open_segment

__all__ = ["FeedbackReader", "LaneCursor", "LaneListing", "SegmentRef"]

SWEEP_S = 1.0  # a quick listing (the workers': bulk and critical) lists from the floor this often...
QUICK_MARGIN_TICKS = TICKS_PER_S // 4  # ... and in between from this far below the newest learned segment

log = logging.getLogger("cstore.worker")
_INF = 2**62


@dataclass(frozen=True)
class SegmentRef:
    part: int
    lane: int
    bucket: int
    seg_id: uuid.UUID
    n_events: int

    @property
    def ticks(self) -> int:
        return ticks_of(self.seg_id)


@dataclass
class LaneCursor:
    """Checkpoint state of one (partition, lane)."""

    part: int
    lane: int
    floor: int
    done: dict[uuid.UUID, int] = field(default_factory=dict)  # seg_id -> ticks, all > floor
    events: int = 0
    segments: int = 0
    last_batch: uuid.UUID | None = None
    updated_at: datetime | None = None

    def encode_done(self) -> bytes:
        return msgpack.packb([u.bytes for u in self.done], use_bin_type=True)

    @staticmethod
    def decode_done(blob: bytes | None) -> dict[uuid.UUID, int]:
        if not blob:
            return {}
        ids = [uuid.UUID(bytes=b) for b in msgpack.unpackb(blob, raw=False)]
        return {u: ticks_of(u) for u in ids}

    def advance(self, learned: list[SegmentRef], listing: LaneListing, lateness_s: int) -> None:
        """Record ``learned`` (taken oldest first from ``listing``) and raise the floor as far as is safe:
        only after a listing from the floor (``complete``), as only that one shows every segment below."""
        learned_ids = {r.seg_id for r in learned}
        for r in learned:
            self.done[r.seg_id] = r.ticks
            self.events += r.n_events
            self.segments += 1
        if not listing.complete:
            return
        cap = min(listing.scan_ticks - lateness_s * TICKS_PER_S, listing.horizon)
        unlearned = [r.ticks for r in listing.refs if r.seg_id not in learned_ids]
        if unlearned:
            cap = min(cap, min(unlearned) - 1)
        if cap > self.floor:
            self.floor = cap
            self.done = {u: t for u, t in self.done.items() if t > cap}


@dataclass
class LaneListing:
    """Visible segments of one lane above the floor and not yet learned, oldest first."""

    part: int
    lane: int
    scan_ticks: int
    refs: list[SegmentRef]
    horizon: int  # the listing is complete for segments stamped at or before this
    complete: bool = True  # listed from the floor (False: a quick listing, from near the newest learned)

    @property
    def events(self) -> int:
        return sum(r.n_events for r in self.refs)


class FeedbackReader:
    """Lists, fetches and checkpoints one consumer group's view of a model's feedback."""

    def __init__(self, tables: FeedbackTables, cfg: FeedbackLayout, group: str,
                 codec: CodecPipeline | None = None) -> None:
        self._tables = tables
        self._codec = codec or CodecPipeline()  # opens segments sealed at rest (the store's key ring)
        # Set when a segment could not be opened with this process's keys: every later listing raises it
        # too, so the bulk loop stops the worker even when the critical lane's thread met it first.
        self.unopenable: KeyUnavailable | None = None
        self.cfg = cfg
        self.group = group
        # Poison: stored events a learner cannot use (written by something other than cstore's writer,
        # or damaged). They are counted, logged and passed over, so that their partition moves on.
        self.poison_events = 0
        self.poison_segments = 0
        # What prefetching listings (``list_new(prefetch=True)``) keep: payloads for the fetch that follows,
        # and per partition the (lane, bucket)s its bucket index showed last.
        self._prefetched: dict[uuid.UUID, Row] = {}
        self._seen_buckets: dict[int, list[tuple[int, int]]] = {}
        self._swept: dict[int, float] = {}  # per partition: when a prefetching listing last swept from the floor

    def initial_floor(self) -> int:
        """Where a new consumer group starts: just before the model's feedback layout existed."""
        return int((self.cfg.created_at - self.cfg.lateness_s) * TICKS_PER_S)

    # -- checkpoints -------------------------------------------------------------------------------
    def load(self, parts: Iterable[int], *, serial: bool = True) -> dict[int, tuple[str | None, dict[int, LaneCursor]]]:
        """``{part: (owner, {lane: cursor})}``; read at SERIAL so a takeover sees the last committed checkpoint."""
        parts = list(parts)
        results = self._tables.checkpoints(self.cfg.model_id, self.group, parts, serial=serial)
        out = {}
        for part, rows in zip(parts, results):
            owner = None
            cursors = {lane: LaneCursor(part, lane, self.initial_floor()) for lane in self.cfg.lanes}
            for r in rows:
                owner = r["owner"]
                if r["lane"] is None or r["floor_ticks"] is None:
                    continue
                cursors[r["lane"]] = LaneCursor(part, r["lane"], r["floor_ticks"], LaneCursor.decode_done(r["done"]),
                                                r["events"] or 0, r["segments"] or 0, r["last_batch"],
                                                r["updated_at"])
            out[part] = (owner, cursors)
        return out

    def save(self, updates: dict[int, list[LaneCursor]], owner: str,
             batch_id: uuid.UUID) -> dict[int, Cas | CstoreError]:
        """Write each partition's lane checkpoints iff ``owner`` still holds its lease (one Paxos round each).

        Partitions are written concurrently; returns per partition its :class:`~cstore.backend.Cas`
        (``applied`` None: the outcome is unknown, resolve it with :meth:`load` at SERIAL) or the error
        that refused it.
        """
        rows = {part: [(c.lane, c.floor, c.encode_done(), c.events, c.segments) for c in cursors]
                for part, cursors in updates.items()}
        return self._tables.save_checkpoints(self.cfg.model_id, self.group, owner, rows, datetime.now(UTC),
                                             batch_id)

    # -- listing and fetching ----------------------------------------------------------------------
    def list_new(self, cursors: dict[int, dict[int, LaneCursor]], scan_ticks: int, *, limit: int = 2000,
                 max_buckets: int = 4, prefetch: bool = False,
                 quick: bool = False) -> dict[tuple[int, int], LaneListing]:
        """New segments per (part, lane) of the given cursors; ``scan_ticks`` must be taken before calling.

        ``quick`` (a worker's polls): between sweeps from the floor, once every ``SWEEP_S`` per partition,
        a lane is listed from ``QUICK_MARGIN_TICKS`` below the newest segment it learned, not from its
        floor: the floor trails by the lateness window (30 s by default), and at 5,000 events/s over 16
        partitions that window holds ~24,000 learned segments, which a poll from the floor lists (ids and
        sizes) only to drop them again: ~80 ms a poll on a loaded node, and the driver's decoding of their
        ids. A segment written later than the margin is found by the next sweep; none is lost, because the
        floor only rises to ``lateness_s`` before the scan, and a sweep lists everything a segment's
        lateness contract lets arrive before that (see :meth:`LaneCursor.advance`).

        ``prefetch`` (the critical lane's polls: few, small segments; implies ``quick``): the segments come
        with their payloads, which the next :meth:`fetch` / :meth:`fetch_columns` of them takes instead of
        reading them, and the buckets the previous listing found are listed together with the bucket
        index, so a label is found and read in one round trip (a bucket the index shows for the first time
        costs a second)."""
        if self.unopenable is not None:
            raise self.unopenable
        parts = list(cursors)
        bpt = self.cfg.bucket_s * TICKS_PER_S
        parts_from = [(p, min(c.floor for c in cursors[p].values()) // bpt) for p in parts]
        early: dict[tuple[int, int, int], list[Row]] = {}
        now = time.monotonic()
        quick = quick or prefetch
        sweep = {p for p in parts if not quick or now - self._swept.get(p, -math.inf) >= SWEEP_S}
        if quick:
            self._swept.update((p, now) for p in sweep)

        def from_floor(p: int, ln: int) -> bool:
            return p in sweep or not cursors[p][ln].done

        def after(p: int, ln: int) -> uuid.UUID:
            """Where a lane's listing starts: its floor, or (a quick poll between sweeps) just below
            the newest segment it learned, so that the lateness window's learned segments are not listed
            (with their payloads) on every poll; a sweep from the floor finds late ones."""
            c = cursors[p][ln]
            if from_floor(p, ln):
                return max_uuid_at(c.floor)
            return max_uuid_at(max(c.floor, max(c.done.values()) - QUICK_MARGIN_TICKS))
        if prefetch:  # the buckets the last index read showed, listed with the index: one round trip
            guess = [(p, ln, b) for p, first in parts_from for ln, b in self._seen_buckets.get(p, ())
                     if b >= first and ln in cursors[p]]
            idx, listed = self._tables.list_with_index(
                self.cfg.model_id, parts_from, [(p, ln, b, after(p, ln)) for p, ln, b in guess], limit,
                payload=not sweep)
            early = dict(zip(guess, listed))
            for p, found in zip(parts, idx):
                self._seen_buckets[p] = [(r["lane"], r["bucket"]) for r in found]
        else:
            idx = self._tables.buckets(self.cfg.model_id, parts_from)
        plan: dict[tuple[int, int], list[int]] = {}
        more: dict[tuple[int, int], bool] = {}
        for part, rows in zip(parts, idx):
            per_lane: dict[int, list[int]] = {}
            for r in rows:
                cur = cursors[part].get(r["lane"])
                if cur is not None and r["bucket"] >= cur.floor // bpt:
                    per_lane.setdefault(r["lane"], []).append(r["bucket"])
            for lane in cursors[part]:
                buckets = sorted(per_lane.get(lane, []))
                plan[(part, lane)] = buckets[:max_buckets]
                more[(part, lane)] = len(buckets) > max_buckets
        queries = [(part, lane, b) for (part, lane), bs in plan.items() for b in bs if (part, lane, b) not in early]
        res = self._tables.list_segments(self.cfg.model_id, [(part, lane, b, after(part, lane))
                                                             for part, lane, b in queries], limit,
                                         payload=prefetch and not sweep) if queries else []
        by_bucket = {**early, **dict(zip(queries, res))}
        if prefetch:  # segments listed with their payload: the fetch that follows takes them from here
            self._prefetched = {r["seg_id"]: r for got in by_bucket.values() for r in got if "payload" in r}
        out = {}
        for (part, lane), buckets in plan.items():
            cur = cursors[part][lane]
            refs: list[SegmentRef] = []
            horizon = _INF
            for b in buckets:
                rows = by_bucket[(part, lane, b)]
                refs += [SegmentRef(part, lane, b, r["seg_id"], r["n_events"]) for r in rows
                         if r["seg_id"] not in cur.done]
                if len(rows) >= limit:  # this bucket goes on past what we listed
                    horizon = ticks_of(rows[-1]["seg_id"]) - 1
                    break
                horizon = (b + 1) * bpt - 1
            else:
                if not more[(part, lane)]:
                    horizon = _INF
            refs.sort(key=lambda r: (r.ticks, r.seg_id.bytes))
            out[(part, lane)] = LaneListing(part, lane, scan_ticks, refs, horizon, from_floor(part, lane))
        return out

    def fetch(self, refs: list[SegmentRef]) -> dict[uuid.UUID, list[Event]]:
        """Decoded events of each segment (segments that expired meanwhile are left out)."""
        return {seg_id: events for seg_id, (events, _) in self._fetch(refs, dicts=True).items()}

    def fetch_columns(self, refs: list[SegmentRef]) -> dict[uuid.UUID, tuple[list[Event], list[ColumnSpan]]]:
        """:meth:`fetch` for a learner: the spans of each segment's events whose features are held as
        columns, and those events' features :data:`~cstore.feedback.IN_COLUMNS` (the spans hold them;
        :func:`~cstore.feedback.feature_rows` builds the dicts)."""
        return self._fetch(refs, dicts=False)

    def _fetch(self, refs: list[SegmentRef], *, dicts: bool) -> dict[uuid.UUID, tuple[list[Event], list[ColumnSpan]]]:
        listed = [row for r in refs if (row := self._prefetched.pop(r.seg_id, None)) is not None]
        rest = [r for r in refs if r.seg_id not in {row["seg_id"] for row in listed}]
        stored = listed + (self._tables.fetch_segments(self.cfg.model_id, [(r.part, r.lane, r.bucket, r.seg_id)
                                                                           for r in rest]) if rest else [])
        by_id = {r.seg_id: r for r in refs}
        out: dict[uuid.UUID, tuple[list[Event], list[ColumnSpan]]] = {}
        for r in stored:
            ref = by_id[r["seg_id"]]
            try:
                # KeyUnavailable (this process cannot open it) propagates: the worker stops and nothing
                # is checkpointed past the segment, rather than setting aside events it could learn.
                payload = open_segment(self._codec, self.cfg.model_id, ref.part, ref.lane, ref.bucket, ref.seg_id,
                                       r["payload"])
                events, bad, spans = decode_stored_columns(payload, dicts=dicts)
                out[r["seg_id"]] = (events, spans)
            except KeyUnavailable as exc:
                self.unopenable = exc
                raise
            except (InvalidFeedback, CorruptData) as exc:
                self.poison_segments += 1
                out[r["seg_id"]], bad = ([], []), ref.n_events
                log.error("feedback segment %s of model %s is unreadable (%s); its %d event(s) are set aside "
                          "(the row stays in feedback_segments until its TTL)", r["seg_id"], self.cfg.model_id,
                          exc, bad)
            if bad:
                self.poison_events += bad
        return out

    def lag(self, parts: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Events visible but not yet learned, per partition (and per lane), from the stored checkpoints."""
        loaded = self.load(parts, serial=False)
        cursors = {p: c for p, (_, c) in loaded.items()}
        listings = self.list_new(cursors, _INF // 2, limit=1_000_000, max_buckets=1_000_000)
        out = {}
        for p, (owner, lanes) in loaded.items():
            per_lane = {lane: listings[(p, lane)].events for lane in lanes}
            stamps = [c.updated_at for c in lanes.values() if c.updated_at is not None]
            out[p] = {"owner": owner, "lag_events": sum(per_lane.values()), "lanes": per_lane,
                      "learned_events": sum(c.events for c in lanes.values()),
                      "checkpoint_at": max(stamps).replace(tzinfo=UTC).isoformat() if stamps else None}
        return out
