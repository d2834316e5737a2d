"""Feedback ingestion on the real node: validation writes nothing, durability, back-pressure, lateness, CLI."""
from __future__ import annotations

import json
import threading
import time

import msgpack
import numpy as np
import pytest

from cstore import FeedbackWriter, send_feedback
from cstore.errors import FeedbackBackPressure, InvalidFeedback, PayloadTooLarge, UnknownModel, ValidationError
from cstore.core import TICKS_PER_S, ticks_now, uuid_at
from cstore.feedback import Segment, context, decode_payload, encode_event, make_event, write_segments
from cstore.feedback import FeedbackReader
from cstore.training import create_learner
from feedback_helpers import all_events, all_segments, new_name, run_cli


@pytest.fixture
def learner(store):
    name = new_name()
    create_learner(store, name, n_features=2**10, chunk_size=256, partitions=4)
    return name


def test_single_event_round_trip(store, session, learner):
    send_feedback(store, learner, "tx-1", 1, kind="implicit", confidence=0.8, event_time=time.time() - 10,
                   features={"amount": 12.5, "country": "FR"}, metadata={"source": "chargeback"})
    _, fcfg = context(store).layout(learner)
    segs = all_segments(session, fcfg)
    assert len(segs) == 1 and segs[0]["lane"] == fcfg.lane_of("implicit") and segs[0]["part"] == fcfg.part_of("tx-1")
    (ev,) = all_events(session, fcfg)
    assert ev.entity_id == "tx-1" and ev.label == 1.0 and ev.kind == "implicit" and ev.confidence == 0.8
    assert ev.features == {"amount": 12.5, "country": "FR"} and ev.metadata == {"source": "chargeback"}
    ttl = session.execute("SELECT TTL(payload) AS t FROM feedback_segments WHERE model_id = %s AND part = %s "
                          "AND lane = %s AND bucket = %s", (fcfg.model_id, segs[0]["part"], segs[0]["lane"],
                                                            segs[0]["bucket"])).one()["t"]
    assert 0 < ttl <= fcfg.ttl_s  # always written with a TTL


@pytest.mark.parametrize("kwargs, exc", [
    ({"label": float("nan")}, InvalidFeedback),
    ({"label": 3}, InvalidFeedback),
    ({"kind": "purchase"}, InvalidFeedback),
    ({"features": {"amount": "x" * 5000}}, PayloadTooLarge),
    ({"features": {"amount": [1, 2]}}, InvalidFeedback),
    ({"event_time": time.time() + 86400}, InvalidFeedback),
    ({"confidence": 2.0}, InvalidFeedback),
])
def test_bad_feedback_writes_nothing(store, session, learner, kwargs, exc):
    args = {"entity_id": "tx-bad", "label": 1, **kwargs}
    with pytest.raises(exc):
        send_feedback(store, learner, args.pop("entity_id"), args.pop("label"), **args)
    with FeedbackWriter(store, learner) as w:
        with pytest.raises(exc):
            w.send("tx-bad-2", kwargs.get("label", 0), **{k: v for k, v in kwargs.items() if k != "label"})
        w.send("tx-good", 1, features={"a": 1.0})  # the writer stays usable after a rejected event
    _, fcfg = context(store).layout(learner)
    assert [e.entity_id for e in all_events(session, fcfg)] == ["tx-good"]


def test_column_batches_are_stored_as_the_events_send_would_store(store, session, learner):
    n = 3000
    rng = np.random.default_rng(5)
    amount = rng.normal(size=n)
    amount[::7] = np.nan  # missing for every 7th event
    country = rng.choice(["FR", "DE", "US"], size=n)
    device = [None if i % 5 == 0 else f"d{i % 11}" for i in range(n)]
    ids, labels = [f"tx-{i}" for i in range(n)], (np.arange(n) % 9 == 0).astype(float)
    with FeedbackWriter(store, learner, max_batch=400) as w:
        for lo in range(0, n, 1000):
            sl = slice(lo, lo + 1000)
            assert w.send_batch(ids[sl], labels[sl], kind="implicit", confidence=0.7,
                                features={"amount": amount[sl], "country": country[sl], "device": device[sl]}) == 1000
        assert w.stats()["events_sent"] == n
    _, fcfg = context(store).layout(learner)
    segs = all_segments(session, fcfg)
    assert {msgpack.unpackb(s["payload"])[0] for s in segs} == {2}  # format 2: columns
    assert sum(s["n_events"] for s in segs) == n and max(s["n_events"] for s in segs) <= 400
    assert {s["part"] for s in segs} == set(range(fcfg.partitions))
    got = {ev.entity_id: ev for ev in all_events(session, fcfg)}
    assert len(got) == n
    for i in range(n):
        feats = {"amount": float(amount[i]), "country": str(country[i]), "device": device[i]}
        feats = {k: v for k, v in feats.items() if v is not None and v == v}
        want = make_event(ids[i], labels[i], "implicit", 0.7, got[ids[i]].event_time, feats)
        assert got[ids[i]] == want
    for s in segs:  # each event in the partition of its entity id, as with send()
        assert {fcfg.part_of(e.entity_id) for e in decode_payload(s["payload"])} == {s["part"]}


@pytest.mark.parametrize("features, exc", [
    ({"amount": [1.0, 2.0, float("inf")]}, InvalidFeedback),
    ({"amount": [1.0, 2.0]}, InvalidFeedback),
    ({"country": ["FR", "DE", "x" * 600]}, PayloadTooLarge),
    ({"country": ["FR", "DE", 3]}, InvalidFeedback),
])
def test_a_bad_column_batch_writes_nothing(store, session, learner, features, exc):
    with FeedbackWriter(store, learner) as w:
        w.send_batch(["tx-0"], [1], features={"amount": [0.5]})  # buffered first: must survive the refusal
        with pytest.raises(exc):
            w.send_batch(["tx-1", "tx-2", "tx-3"], [0, 1, 0], features=features)
        with pytest.raises(InvalidFeedback, match="event 2 has 7.0"):
            w.send_batch(["tx-1", "tx-2", "tx-3"], [0, 1, 7], features={"amount": [1.0, 2.0, 3.0]})
    _, fcfg = context(store).layout(learner)
    assert [(e.entity_id, e.features) for e in all_events(session, fcfg)] == [("tx-0", {"amount": 0.5})]


def test_unknown_model_writes_nothing(store, session):
    before = session.execute("SELECT count(*) AS n FROM feedback_config").one()["n"]
    with pytest.raises(UnknownModel, match="unknown model"):
        send_feedback(store, "no_such_model_x", "tx", 1)
    with pytest.raises(UnknownModel):
        FeedbackWriter(store, "no_such_model_x")
    assert session.execute("SELECT count(*) AS n FROM feedback_config").one()["n"] == before


def test_status_of_a_model_without_feedback_writes_nothing(store, session):
    from cstore.ops import fleet_status
    name = new_name("plain")
    info = store.create_model(name, {"weights": (16,)})
    with pytest.raises(ValidationError, match="no feedback yet"):
        fleet_status(store, name)
    assert session.execute("SELECT * FROM feedback_config WHERE model_id = %s", (info.model_id,)).one() is None


def test_flush_returns_when_everything_is_durable(store, session, learner):
    n = 2500
    w = FeedbackWriter(store, learner, linger_ms=60_000, max_batch=1000)  # nothing leaves by linger
    for i in range(n):
        w.send(f"tx-{i}", i % 2, kind=("explicit", "implicit", "other")[i % 3], features={"i": i})
    w.flush()
    _, fcfg = context(store).layout(learner)
    events = all_events(session, fcfg)
    assert sorted(e.entity_id for e in events) == sorted(f"tx-{i}" for i in range(n))
    assert w.stats()["events_written"] == n and w.stats()["buffered_bytes"] == 0
    w.send("tx-after", 1)
    w.close()  # close flushes too
    assert len(all_events(session, fcfg)) == n + 1


def test_buffer_is_bounded_and_send_blocks(store, session, learner):
    bound = 16 * 1024
    w = FeedbackWriter(store, learner, linger_ms=1000, max_batch=50, max_segment_bytes=4096, max_buffer_bytes=bound)
    peak, n = 0, 3000
    for i in range(n):
        w.send(f"tx-{i}", 1, features={"pad": "x" * 100, "i": i})
        peak = max(peak, w.buffered_bytes)
    w.close()
    assert peak <= bound
    assert w.blocked_s > 0  # the producer was held back rather than buffering without bound
    _, fcfg = context(store).layout(learner)
    assert len(all_events(session, fcfg)) == n


def test_back_pressure_times_out_with_a_clear_error(store, learner):
    w = FeedbackWriter(store, learner, linger_ms=60_000, max_segment_bytes=2048, max_buffer_bytes=4096,
                              send_timeout_s=0)
    with pytest.raises(FeedbackBackPressure, match="not keeping up"):
        for i in range(1000):
            w.send(f"tx-{i}", 1, features={"pad": "y" * 200})
    w.close()


def test_a_late_acknowledgement_is_restamped(store, session, learner):
    ctx = context(store)
    _, fcfg = ctx.layout(learner)
    data = encode_event(make_event("tx-slow", 1, features={"a": 1.0}))
    seg = Segment(fcfg.part_of("tx-slow"), 0, [data], len(data))
    # Stamped a lateness window ago: as if this write had taken that long to be acknowledged.
    seg.ticks = ticks_now() - fcfg.lateness_s * TICKS_PER_S
    seg.seg_id, seg.bucket = uuid_at(seg.ticks), fcfg.bucket_of(seg.ticks)
    report = write_segments(ctx, fcfg, [seg])
    assert report.restamped == 1 and report.written == 1
    # Two copies: the late one (a consumer may already have moved past its stamp) and a freshly
    # stamped one that no consumer can miss. At least once: a duplicate, never a loss.
    stamps = sorted((s["seg_id"].time - 0x01B21DD213814000) / TICKS_PER_S for s in all_segments(session, fcfg))
    assert len(stamps) == 2
    assert abs(stamps[1] - time.time()) < 5 and stamps[1] - stamps[0] >= fcfg.lateness_s


def test_a_segment_arriving_late_is_still_read_once(store, learner):
    """A slow producer's segment stamped *before* one already learned is picked up, and nothing twice."""
    ctx = context(store)
    _, fcfg = ctx.layout(learner)
    reader = FeedbackReader(store.backend.feedback, fcfg, "late-test")
    cursors = {p: lanes for p, (_, lanes) in reader.load(range(fcfg.partitions)).items()}

    def segment(entity: str, age_s: float) -> Segment:
        data = encode_event(make_event(entity, 1, features={"a": 1.0}))
        seg = Segment(fcfg.part_of(entity), 0, [data], len(data))
        seg.stamp(fcfg)
        return seg

    slow = segment("tx-slow-producer", 0)  # stamped now, written later
    time.sleep(0.05)
    write_segments(ctx, fcfg, [segment("tx-fast-producer", 0)])
    seen = []
    for rnd in range(2):
        if rnd == 1:
            write_segments(ctx, fcfg, [slow])  # lands after the consumer moved on
        listings = reader.list_new(cursors, ticks_now())
        for (part, lane), lst in listings.items():
            payloads = reader.fetch(lst.refs)
            seen += [ev.entity_id for r in lst.refs for ev in payloads[r.seg_id]]
            cursors[part][lane].advance(lst.refs, lst, fcfg.lateness_s)
    assert seen == ["tx-fast-producer", "tx-slow-producer"]
    assert min(s["seg_id"].time for s in all_segments(store.backend.session, fcfg)) == slow.seg_id.time  # stamped first


def test_writer_is_thread_safe(store, session, learner):
    with FeedbackWriter(store, learner, linger_ms=5) as w:
        def produce(k: int) -> None:
            for i in range(500):
                w.send(f"t{k}-{i}", i % 2, features={"k": k})
        threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    _, fcfg = context(store).layout(learner)
    assert len({e.entity_id for e in all_events(session, fcfg)}) == 2000


# -- the CLI -----------------------------------------------------------------------------------------
def _jsonl(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def test_cli_ingest_fail_mode_writes_nothing(base_config, store, session, learner, tmp_path):
    f = tmp_path / "fb.jsonl"
    good = [{"entity_id": f"tx-{i}", "label": i % 2, "features": {"amount": i}} for i in range(50)]
    _jsonl(f, good[:10] + ["{not json"] + good[10:30] + [{"entity_id": "x", "label": float("nan")}]
           + [{"entity_id": "y", "label": 1, "colour": "red"}] + good[30:])
    res = run_cli(base_config, "feedback", "ingest", str(f), "--model", learner)
    assert res.returncode == 1
    assert "line 11: not valid JSON" in res.stderr and "line 32:" in res.stderr and "line 33: unknown field" \
        in res.stderr and "nothing was written" in res.stderr
    _, fcfg = context(store).layout(learner)
    assert all_events(session, fcfg) == []


def test_cli_ingest_skip_mode_writes_the_good_lines(base_config, store, session, learner, tmp_path):
    f = tmp_path / "fb.jsonl"
    _jsonl(f, [{"entity_id": f"tx-{i}", "label": 1, "kind": "implicit"} for i in range(20)]
           + [{"entity_id": "bad", "label": 1, "kind": "purchase"}]
           + [{"model": learner, "entity_id": "tx-last", "label": 0, "event_time": "2026-01-01T00:00:00Z"}])
    res = run_cli(base_config, "feedback", "ingest", str(f), "--model", learner, "--on-error", "skip", "--json")
    assert res.returncode == 2, res.stderr  # written, but not clean: scripts must be able to tell
    summary = json.loads(res.stdout)
    assert summary["written"] == 21 and summary["skipped"] == 1 and summary["errors"][0]["line"] == 21
    _, fcfg = context(store).layout(learner)
    assert len(all_events(session, fcfg)) == 21


def test_cli_ingest_msgpack(base_config, store, session, learner, tmp_path):
    f = tmp_path / "fb.msgpack"
    f.write_bytes(b"".join(msgpack.packb({"model": learner, "entity_id": i, "label": 1.0, "confidence": 0.5})
                           for i in range(100)))
    res = run_cli(base_config, "feedback", "ingest", str(f))
    assert res.returncode == 0, res.stderr
    _, fcfg = context(store).layout(learner)
    events = all_events(session, fcfg)
    assert sorted(e.entity_id for e in events) == list(range(100)) and {e.confidence for e in events} == {0.5}


def _lane_poller(store, learner, part_of, name, **mode):
    """A reader of one partition polling ``list_new(**mode)``: (reader, its cursors, make a segment of
    one event in that partition stamped now, poll: the entity ids learned by one listing)."""
    ctx = context(store)
    _, fcfg = ctx.layout(learner)
    reader = FeedbackReader(store.backend.feedback, fcfg, name)
    part = part_of(fcfg)
    cursors = {part: reader.load([part])[part][1]}

    def segment(entity: str) -> Segment:
        data = encode_event(make_event(entity, 1, features={"a": 1.0}))
        seg = Segment(part, 0, [data], len(data))
        seg.stamp(fcfg)
        return seg

    def write(seg: Segment) -> None:
        write_segments(ctx, fcfg, [seg])

    def poll() -> list[str]:
        out = []
        for (p, lane), lst in reader.list_new(cursors, ticks_now(), **mode).items():
            payloads = reader.fetch(lst.refs)
            out += [ev.entity_id for r in lst.refs for ev in payloads[r.seg_id]]
            cursors[p][lane].advance(lst.refs, lst, fcfg.lateness_s)
        return out

    return reader, cursors[part][0], segment, write, poll


def test_a_prefetching_listing_reads_new_labels_with_it_and_sweeps_for_late_ones(store, learner, monkeypatch):
    """The critical lane's polls (``prefetch=True``): a segment listed between sweeps comes with its payload
    (no second read), older learned ones are not listed again, and one a slow producer wrote late, stamped
    below them, is found by the next sweep from the floor: every event read once."""
    from cstore.feedback import _reader

    reader, _, segment, write, poll = _lane_poller(store, learner, lambda f: f.critical_part, "prefetch-test",
                                                   prefetch=True)
    reads = []
    fetch_segments = reader._tables.fetch_segments
    monkeypatch.setattr(reader._tables, "fetch_segments", lambda *a: reads.append(a[1]) or fetch_segments(*a))

    write(segment("tx-a"))
    assert poll() == ["tx-a"] and len(reads) == 1  # the first poll sweeps from the floor: read after listing
    slow = segment("tx-slow")  # stamped now, written later
    time.sleep(0.3)  # (further below the next one than the quick listing looks)
    write(segment("tx-b"))
    assert poll() == ["tx-b"] and len(reads) == 1  # between sweeps: listed with its payload, not read again
    write(slow)
    assert poll() == [] and len(reader._prefetched) == 1  # below the quick listing, as is tx-a (only tx-b is:
    #                                                       within QUICK_MARGIN_TICKS of the newest learned)
    monkeypatch.setattr(_reader, "SWEEP_S", 0.0)
    assert poll() == ["tx-slow"]  # the sweep finds it
    assert poll() == []  # and nothing twice


def test_a_quick_listing_skips_learned_segments_and_the_sweep_finds_late_ones(store, learner, monkeypatch):
    """The workers' polls (``quick=True``) between sweeps list a lane from just below its newest learned
    segment, not from its floor; they leave the floor where it is, and a segment a slow producer wrote
    late, stamped below that start, is found by the next sweep: every event read once."""
    from cstore.feedback import _reader

    _, lane, segment, write, poll = _lane_poller(store, learner, lambda f: f.part_of("tx-a"), "quick-test",
                                                 quick=True)
    write(segment("tx-a"))
    assert poll() == ["tx-a"]  # the first poll sweeps from the floor
    floor = lane.floor
    slow = segment("tx-slow")  # stamped now, written later
    time.sleep(0.3)  # (further below the next one than the quick listing looks)
    write(segment("tx-b"))
    assert poll() == ["tx-b"] and lane.floor == floor  # between sweeps: the floor stays
    write(slow)
    assert poll() == []  # below the quick listing's start
    monkeypatch.setattr(_reader, "SWEEP_S", 0.0)
    assert poll() == ["tx-slow"]  # the sweep finds it
    assert poll() == [] and len(lane.done) == 3  # nothing twice; all three within the lateness window
