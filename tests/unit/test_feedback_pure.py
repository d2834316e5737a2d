"""Pure parts of feedback ingestion: event validation, checkpoint cursors, batch selection."""
from __future__ import annotations

import time
import uuid
import zlib
from datetime import datetime, UTC

import msgpack
import numpy as np
import pytest

from cstore.errors import InvalidFeedback, PayloadTooLarge
from cstore.core import TICKS_PER_S, max_uuid_at, ticks_of, uuid_at
from cstore.feedback import FeedbackLayout, Segment, decode_payload
from cstore.feedback import DEFAULT_PRIORITIES, MAX_FEATURES, encode_event, make_event
from cstore.feedback import LaneCursor, LaneListing, SegmentRef
from cstore.training import select_segments

NOW = 1_800_000_000.0


# -- validation --------------------------------------------------------------------------------------
def test_valid_event_is_normalised():
    ev = make_event(np.int64(42), True, "implicit", 0.5, datetime(2027, 1, 15, tzinfo=UTC),
                    {"amount": np.float32(2.5), "country": "FR", "new": np.bool_(True), "n": 3}, {"src": "api"},
                    now=NOW)
    assert ev.entity_id == 42 and type(ev.entity_id) is int
    assert ev.label == 1.0 and ev.kind == "implicit" and ev.confidence == 0.5
    assert ev.event_time == datetime(2027, 1, 15, tzinfo=UTC).timestamp()
    assert ev.features == {"amount": 2.5, "country": "FR", "new": True, "n": 3}
    assert ev.metadata == {"src": "api"}
    assert make_event("tx", 0, now=NOW).event_time == NOW  # default: now


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"label": float("nan")}, InvalidFeedback, "finite"),
    ({"label": 1.5}, InvalidFeedback, "[0, 1]"),
    ({"label": "1"}, InvalidFeedback, "number"),
    ({"kind": "click"}, InvalidFeedback, "explicit, implicit, reward, other"),
    ({"confidence": -0.1}, InvalidFeedback, "confidence"),
    ({"entity_id": True}, InvalidFeedback, "bool"),
    ({"entity_id": ""}, InvalidFeedback, "1-256"),
    ({"entity_id": 2**70}, InvalidFeedback, "64 bits"),
    ({"entity_id": 1.5}, InvalidFeedback, "string or an integer"),
    ({"event_time": NOW + 3600}, InvalidFeedback, "future"),
    ({"event_time": NOW * 1000}, InvalidFeedback, "milliseconds"),
    ({"event_time": "yesterday"}, InvalidFeedback, "ISO 8601"),
    ({"event_time": 12.0}, InvalidFeedback, "2000-01-01"),
    ({"features": [1, 2]}, InvalidFeedback, "mapping"),
    ({"features": {"a": float("inf")}}, InvalidFeedback, "finite"),
    ({"features": {"a": None}}, InvalidFeedback, "leave missing values out"),
    ({"features": {"": 1.0}}, InvalidFeedback, "feature names"),
    ({"features": {f"f{i}": 1.0 for i in range(MAX_FEATURES + 1)}}, PayloadTooLarge, "limit"),
    ({"features": {"a": "x" * 10_000}}, PayloadTooLarge, "512"),
    ({"metadata": {"a": float("nan")}}, InvalidFeedback, "JSON"),
    ({"metadata": "note"}, InvalidFeedback, "mapping"),
    ({"metadata": {"a": "x" * 5000}}, PayloadTooLarge, "metadata"),
])
def test_bad_events_say_what_to_fix(kwargs, exc, words):
    args = {"entity_id": "tx-1", "label": 1, "kind": "explicit", **kwargs}
    with pytest.raises(exc) as info:
        make_event(args.pop("entity_id"), args.pop("label"), args.pop("kind"), now=NOW, **args)
    assert words in str(info.value)


def test_oversized_event_rejected_at_encoding():
    ev = make_event("tx", 1, features={f"name_{i:04d}_" + "x" * 150: "v" * 500 for i in range(200)}, now=NOW)
    with pytest.raises(PayloadTooLarge, match="bytes encoded"):
        encode_event(ev)


def test_segment_payload_round_trip():
    evs = [make_event(f"tx{i}", i % 2, "reward", None, NOW, {"a": float(i)}, None, now=NOW) for i in range(3)]
    seg = Segment(0, 0, [encode_event(e) for e in evs])
    assert decode_payload(seg.payload()) == evs
    with pytest.raises(InvalidFeedback, match="unknown format"):
        decode_payload(msgpack.packb([99]))


def test_partition_and_lane_are_stable():
    cfg = FeedbackLayout(uuid.uuid4(), 16, 60, 86400, 30, DEFAULT_PRIORITIES, NOW)
    parts = {cfg.part_of(f"tx-{i}") for i in range(1000)}
    assert parts == set(range(16))  # all used
    assert cfg.part_of("tx-7") == cfg.part_of("tx-7") and cfg.part_of(7) == cfg.part_of("7")
    ids = [f"tx-{i}" for i in range(200)] + list(range(200)) + ["Zürich", "\ud800"]
    assert cfg.parts_of(ids).tolist() == [cfg.part_of(e) for e in ids]  # the batch path agrees
    assert cfg.part_of("tx-1") == zlib.crc32(b"tx-1") % 16  # the documented rule: CRC-32 of the UTF-8 id
    assert [cfg.lane_of(k) for k in ("explicit", "reward", "implicit", "other")] == [0, 0, 1, 2]
    assert cfg.lanes == (0, 1, 2)


def test_uuid_ticks_round_trip_and_bounds():
    t = time.time_ns() // 100
    u = uuid_at(t)
    assert ticks_of(u) == t and u.version == 1
    assert ticks_of(max_uuid_at(t)) == t


# -- checkpoint cursors ------------------------------------------------------------------------------
S = TICKS_PER_S


def _ref(t: int, n: int = 10, lane: int = 0) -> SegmentRef:
    return SegmentRef(0, lane, t // (60 * S), uuid_at(t), n)


def _listing(refs, scan, horizon=2**62, lane=0):
    return LaneListing(0, lane, scan, sorted(refs, key=lambda r: r.ticks), horizon)


def test_floor_stops_before_the_first_unlearned_segment():
    base = 1000 * S
    a, b, c = _ref(base + 1 * S), _ref(base + 2 * S), _ref(base + 3 * S)
    cur = LaneCursor(0, 0, floor=base)
    cur.advance([a, b], _listing([a, b, c], scan=base + 100 * S), lateness_s=30)
    assert cur.floor == c.ticks - 1  # c is visible but was not learned (batch full)
    assert cur.done == {}  # a and b are below the floor now
    assert cur.events == 20 and cur.segments == 2


def test_recent_segments_stay_in_done_and_a_late_one_is_still_new():
    base = 1000 * S
    a, b = _ref(base + 10 * S), _ref(base + 20 * S)
    cur = LaneCursor(0, 0, floor=base)
    scan = base + 30 * S
    cur.advance([a, b], _listing([a, b], scan=scan), lateness_s=30)
    assert cur.floor == base  # scan - lateness is not past the old floor
    assert set(cur.done) == {a.seg_id, b.seg_id}
    # A slow producer's segment stamped between a and b shows up now: above the floor, not done.
    late = _ref(base + 15 * S)
    assert late.ticks > cur.floor and late.seg_id not in cur.done
    cur.advance([late], _listing([late], scan=scan + 50 * S), lateness_s=30)
    assert cur.floor == scan + 50 * S - 30 * S and cur.done == {}


def test_floor_never_passes_the_listing_horizon_nor_goes_back():
    base = 1000 * S
    a = _ref(base + 5 * S)
    cur = LaneCursor(0, 0, floor=base)
    cur.advance([a], _listing([a], scan=base + 500 * S, horizon=base + 6 * S), lateness_s=30)
    assert cur.floor == base + 6 * S
    cur.advance([], _listing([], scan=base + 10 * S), lateness_s=30)  # a clock that went back
    assert cur.floor == base + 6 * S


def test_a_quick_listing_records_what_was_learned_but_leaves_the_floor():
    """A quick listing starts near the newest learned segment, so it cannot vouch for what lies below it:
    the floor waits for the next listing from the floor (a sweep)."""
    base = 1000 * S
    a, b = _ref(base + 1 * S), _ref(base + 2 * S)
    cur = LaneCursor(0, 0, floor=base)
    quick = LaneListing(0, 0, base + 100 * S, [b], 2**62, complete=False)
    cur.advance([b], quick, lateness_s=30)
    assert cur.floor == base and set(cur.done) == {b.seg_id} and cur.events == 10
    cur.advance([a], _listing([a], scan=base + 100 * S), lateness_s=30)  # the sweep finds the late one
    assert cur.floor == base + 70 * S and cur.done == {} and cur.segments == 2


def test_done_round_trips_through_its_encoding():
    cur = LaneCursor(0, 0, floor=0, done={uuid_at(5): 5, uuid_at(9): 9})
    assert LaneCursor.decode_done(cur.encode_done()) == cur.done


# -- batch selection ---------------------------------------------------------------------------------
def test_higher_priority_lane_first_and_by_age_when_asked():
    base = 1000 * S
    hi = [_ref(base + i * S, 100, lane=0) for i in range(20)]   # 2000 events, newer
    lo = [_ref(base - 500 * S + i * S, 100, lane=2) for i in range(20)]  # older, low priority
    listings = {(0, 0): _listing(hi, base + 100 * S, lane=0), (0, 2): _listing(lo, base + 100 * S, lane=2)}
    chosen = select_segments(listings, 1000)
    assert sum(r.n_events for r in chosen) == 1000
    assert [r.seg_id for r in chosen] == [r.seg_id for r in hi[:10]]  # priority, then oldest first
    aged = select_segments(listings, 1000, by_age=True)
    assert [r.seg_id for r in aged] == [r.seg_id for r in lo[:10]]  # the anti-starvation batch
    hi_small = [_ref(base + i * S, 100, lane=0) for i in range(3)]
    mixed = select_segments({(0, 0): _listing(hi_small, base, lane=0), (0, 2): _listing(lo, base, lane=2)}, 1000)
    assert [r.lane for r in mixed] == [0] * 3 + [2] * 7  # what is left of the batch goes to lower lanes


def test_a_segment_larger_than_the_batch_is_taken_alone():
    big = _ref(1000 * S, 5000)
    assert select_segments({(0, 0): _listing([big, _ref(1001 * S)], 2000 * S)}, 1000) == [big]
