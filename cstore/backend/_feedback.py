"""The feedback tables (``cql/002_feedback.cql``): layouts, segments, the bucket index, and consumer checkpoints."""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cstore.backend._statements import Cas, Row, Runner
from cstore.core import max_uuid_at, min_uuid_at, ticks_of
from cstore.errors import CstoreError

_CONFIG = "SELECT * FROM feedback_config WHERE model_id = ?"
_CONFIG_CREATE = ("INSERT INTO feedback_config (model_id, partitions, bucket_s, ttl_s, lateness_s, priorities, "
                  "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
_SEGMENT = ("INSERT INTO feedback_segments (model_id, part, lane, bucket, seg_id, n_events, writer, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")
_ANNOUNCE = "INSERT INTO feedback_buckets (model_id, part, bucket, lane) VALUES (?, ?, ?, ?) USING TTL ?"
_BUCKETS = "SELECT bucket, lane FROM feedback_buckets WHERE model_id = ? AND part = ? AND bucket >= ?"
_LIST = ("SELECT seg_id, n_events FROM feedback_segments WHERE model_id = ? AND part = ? AND lane = ? "
         "AND bucket = ? AND seg_id > ? LIMIT ?")
_LIST_PAYLOAD = ("SELECT seg_id, n_events, payload FROM feedback_segments WHERE model_id = ? AND part = ? AND lane = ? "
                 "AND bucket = ? AND seg_id > ? LIMIT ?")
_FETCH = ("SELECT seg_id, payload FROM feedback_segments WHERE model_id = ? AND part = ? AND lane = ? "
          "AND bucket = ? AND seg_id = ?")
_FETCH_RANGE = ("SELECT seg_id, payload FROM feedback_segments WHERE model_id = ? AND part = ? AND lane = ? "
                "AND bucket = ? AND seg_id >= ? AND seg_id <= ? LIMIT ?")
_RANGE_SLACK = 64  # rows a range may hold beyond the wanted ones (late or learned segments between them)
_CURSOR = ("SELECT owner, lease_since, lane, floor_ticks, done, events, segments, last_batch, updated_at "
           "FROM feedback_consumers WHERE model_id = ? AND grp = ? AND part = ?")
_SAVE = ("UPDATE feedback_consumers SET floor_ticks = ?, done = ?, events = ?, segments = ?, last_batch = ?, "
         "updated_at = ?, updated_by = ? WHERE model_id = ? AND grp = ? AND part = ? AND lane = ? IF owner = ?")

# -- erasure (issue 17): a segment is rewritten (or deleted) only if it still holds the
#    bytes the eraser read, so two erasures of one segment never undo each other ------------------------
_SEG_ROWS = ("SELECT seg_id, n_events, payload, TTL(payload) AS ttl FROM feedback_segments WHERE model_id = ? "
             "AND part = ? AND lane = ? AND bucket = ?")
_SEG_ROW = _SEG_ROWS + " AND seg_id = ?"
_SEG_REWRITE = ("UPDATE feedback_segments USING TTL ? SET payload = ?, n_events = ? WHERE model_id = ? AND part = ? "
                "AND lane = ? AND bucket = ? AND seg_id = ? IF payload = ?")
_SEG_DELETE = ("DELETE FROM feedback_segments WHERE model_id = ? AND part = ? AND lane = ? AND bucket = ? "
               "AND seg_id = ? IF payload = ?")


class FeedbackTables:
    """Every statement of feedback producers and consumers."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    # -- layouts ------------------------------------------------------------------------------------------
    def layout(self, model_id: uuid.UUID) -> Row | None:
        return self._r.one(_CONFIG, (model_id,), op="coordination")

    def create_layout(self, model_id: uuid.UUID, partitions: int, bucket_s: int, ttl_s: int, lateness_s: int,
                      priorities: Mapping[str, int], created_at: datetime) -> Cas:
        """Fix a model's layout unless one exists (first writer wins; ``row`` then holds theirs)."""
        return self._r.lwt_cql(_CONFIG_CREATE, (model_id, partitions, bucket_s, ttl_s, lateness_s, dict(priorities),
                                                created_at), op="coordination")

    # -- producing ----------------------------------------------------------------------------------------
    def announce(self, rows: Sequence[tuple[uuid.UUID, int, int, int, int]]) -> list[BaseException | None]:
        """Bucket-index rows ``(model_id, part, bucket, lane, ttl)``, all attempted; per row None or its error."""
        return self._r.many_outcomes(_ANNOUNCE, rows, op="ingest_feedback")

    def write_segments(self, rows: Sequence[tuple[Any, ...]], *, concurrency: int) -> list[BaseException | None]:
        """Segments ``(model_id, part, lane, bucket, seg_id, n_events, writer, payload, ttl)``, all attempted.

        Idempotent (same key, same bytes): a failed or timed-out one may simply be sent again."""
        return self._r.many_outcomes(_SEGMENT, rows, op="ingest_feedback", concurrency=concurrency)

    # -- consuming ----------------------------------------------------------------------------------------
    def buckets(self, model_id: uuid.UUID, parts_from: Sequence[tuple[int, int]]) -> list[list[Row]]:
        """``bucket, lane`` rows of each ``(part, first bucket)``, in order."""
        return self._r.many(_BUCKETS, [(model_id, p, b) for p, b in parts_from], op="read_feedback")

    def list_segments(self, model_id: uuid.UUID, queries: Sequence[tuple[int, int, int, uuid.UUID]],
                      limit: int, *, payload: bool = False) -> list[list[Row]]:
        """``seg_id, n_events`` (and ``payload`` when asked) per ``(part, lane, bucket, after seg_id)``, at most
        ``limit`` each, in order."""
        return self._r.many(_LIST_PAYLOAD if payload else _LIST,
                            [(model_id, p, ln, b, after, limit) for p, ln, b, after in queries], op="read_feedback")

    def list_with_index(self, model_id: uuid.UUID, parts_from: Sequence[tuple[int, int]],
                        queries: Sequence[tuple[int, int, int, uuid.UUID]], limit: int, *,
                        payload: bool = False) -> tuple[list[list[Row]], list[list[Row]]]:
        """:meth:`buckets` and :meth:`list_segments` (with each segment's ``payload`` when asked) sent at
        once: one round trip where a listing that knows its buckets would wait for the index first."""
        cql = _LIST_PAYLOAD if payload else _LIST
        got = self._r.read_together([(_BUCKETS, (model_id, p, b)) for p, b in parts_from]
                                    + [(cql, (model_id, p, ln, b, after, limit)) for p, ln, b, after in queries],
                                    op="read_feedback")
        return got[:len(parts_from)], got[len(parts_from):]

    def fetch_segments(self, model_id: uuid.UUID, keys: Sequence[tuple[int, int, int, uuid.UUID]]) -> list[Row]:
        """``seg_id, payload`` of each ``(part, lane, bucket, seg_id)`` that still exists.

        One range read per storage partition, from the first wanted segment to the last (a batch takes
        the oldest segments of a lane, so they are mostly adjacent): a producer at 5,000 events/s over 16
        partitions seals segments of a few events each, and one read per segment was most of a batch's
        time. Wanted segments a range did not reach (more than ``_RANGE_SLACK`` others between them) are
        read one by one.
        """
        groups: dict[tuple[int, int, int], set[uuid.UUID]] = {}
        for p, ln, b, seg in keys:
            groups.setdefault((p, ln, b), set()).add(seg)
        order = list(groups)
        ranges = [(model_id, p, ln, b, min_uuid_at(min(map(ticks_of, groups[(p, ln, b)]))),
                   max_uuid_at(max(map(ticks_of, groups[(p, ln, b)]))), len(groups[(p, ln, b)]) + _RANGE_SLACK)
                  for p, ln, b in order]
        out: list[Row] = []
        missed: list[tuple[uuid.UUID, int, int, int, uuid.UUID]] = []
        for key, rows in zip(order, self._r.many(_FETCH_RANGE, ranges, op="read_feedback")):
            wanted = groups[key]
            found = [r for r in rows if r["seg_id"] in wanted]
            out += found
            missed += [(model_id, *key, seg) for seg in wanted - {r["seg_id"] for r in found}]
        if missed:  # beyond a range's limit, or expired meanwhile (then the point read finds nothing too)
            out += [r for rows in self._r.many(_FETCH, missed, op="read_feedback") for r in rows]
        return out

    def checkpoints(self, model_id: uuid.UUID, group: str, parts: Sequence[int], *,
                    serial: bool = True) -> list[list[Row]]:
        """The consumer rows (lease owner + one row per lane) of each partition; at SERIAL by default, so a
        takeover sees the last committed checkpoint."""
        return self._r.many(_CURSOR, [(model_id, group, p) for p in parts], op="coordination", serial=serial)

    def save_checkpoints(self, model_id: uuid.UUID, group: str, owner: str,
                         per_part: Mapping[int, Sequence[tuple[Any, ...]]],
                         now: datetime, batch_id: uuid.UUID) -> dict[int, Cas | CstoreError]:
        """Each partition's lane rows ``(lane, floor, done, events, segments)`` iff ``owner`` still holds
        its lease: one conditional batch (one Paxos round) per partition, all in flight at once."""
        parts = list(per_part)
        stmts = [self._r.batch((self._r.bind(_SAVE, (floor, done, events, segs, batch_id, now, owner, model_id,
                                                     group, part, lane, owner))
                                for lane, floor, done, events, segs in per_part[part]), logged=True)
                 for part in parts]
        return dict(zip(parts, self._r.lwt_many(stmts, op="coordination")))

    # -- erasure ------------------------------------------------------------------------------------------
    def segment_rows(self, model_id: uuid.UUID, part: int, lane: int, bucket: int) -> list[Row]:
        """``seg_id, n_events, payload, ttl`` (seconds left) of every segment of one storage partition."""
        return self._r.rows(_SEG_ROWS, (model_id, part, lane, bucket), op="read_feedback", fetch_size=200)

    def segment_row(self, model_id: uuid.UUID, part: int, lane: int, bucket: int, seg_id: uuid.UUID) -> Row | None:
        """One segment at SERIAL: what a rewrite's compare-and-set compares against."""
        return self._r.one(_SEG_ROW, (model_id, part, lane, bucket, seg_id), op="coordination", serial=True)

    def rewrite_segment(self, model_id: uuid.UUID, part: int, lane: int, bucket: int, seg_id: uuid.UUID,
                        expected: bytes, payload: bytes | None, n_events: int, ttl_s: int) -> Cas:
        """Replace a segment's payload (``None``: delete the row) iff it still holds ``expected``."""
        if payload is None:
            return self._r.lwt_cql(_SEG_DELETE, (model_id, part, lane, bucket, seg_id, expected), op="coordination")
        return self._r.lwt_cql(_SEG_REWRITE, (ttl_s, payload, n_events, model_id, part, lane, bucket, seg_id,
                                              expected), op="coordination")
