"""Workers in-process on the real node: learning, priority, feature lookup, exact resumption, drift, federated."""
from __future__ import annotations

import json
import threading
import time

import msgpack
import numpy as np
import pytest

from cstore import FeedbackWriter, send_feedback
from cstore.errors import InvalidFeedback
from cstore.feedback import context, decode_payload
from cstore_dev.fraudsim import FraudStream
from cstore.learn import FTRLProximal, FeatureHasher, batch_gradient, detector_from_state, log_loss, \
    predict_proba_batch
from cstore.training import commit_federated, create_learner
from cstore.ops import fleet_status
from cstore.training import Worker
from feedback_helpers import all_segments, learned_counts, new_name, run_cli, wait_for

FAST = {"lease_ttl_s": 6, "max_wait_ms": 50, "poll_ms": 20}


def _ingest(store, name, txs, kind="explicit", max_batch=500, with_features=True) -> None:
    with FeedbackWriter(store, name, max_batch=max_batch, linger_ms=5) as w:
        for tx in txs:
            w.send(tx["entity_id"], tx["label"], kind=kind, features=tx["features"] if with_features else None)


def _ingest_columns(store, name, txs, kind="explicit", max_batch=500) -> None:
    """The same transactions as column batches of 1000 (send_batch), strings as numpy text arrays."""
    with FeedbackWriter(store, name, max_batch=max_batch, linger_ms=5) as w:
        for lo in range(0, len(txs), 1000):
            part = txs[lo:lo + 1000]
            columns = {k: np.array([tx["features"][k] for tx in part]) for k in part[0]["features"]}
            w.send_batch([tx["entity_id"] for tx in part], [tx["label"] for tx in part], kind=kind,
                         features=columns)


def test_worker_learns_everything_and_checkpoints(base_config, store):
    name = new_name("wk")
    create_learner(store, name, n_features=2**14, chunk_size=4096, partitions=4)
    _ingest(store, name, FraudStream(seed=11).sample(6000))
    w = Worker(store, name, batch_size=1000, **FAST)
    stats = w.run(until_idle=True)
    assert stats["events"] == 6000 and stats["learned"] == 6000 and stats["lost_checkpoints"] == 0
    st = fleet_status(store, name)
    assert st["lag_events"] == 0 and st["learned_events"] == 6000
    assert all(p["owner"] is None for p in st["partitions"]) and st["workers"] == []  # released on exit
    counts, traces = learned_counts(store, name, w.shared)
    segs = all_segments(store.backend.session, w.fcfg)
    assert set(counts) == {s["seg_id"] for s in segs} and set(counts.values()) == {1}  # each exactly once
    assert sum(t["n_learned"] for t in traces) == 6000
    hist = store.history(name, since=time.time() - 600)
    meta = hist[-1].metadata
    assert {"batch", "samples", "offsets", "drift_score", "loss", "lr_scale", "worker"} <= set(meta)
    assert hist[-1].source == "feedback" and hist[-1].update_type == "gradient"
    res = run_cli(base_config, "status", name, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["healthy"] is True and out["problems"] == []
    assert {"head_version", "lag_events", "partitions", "workers", "last_commit", "drift"} <= set(out)
    assert out["lag_events"] == 0 and out["head_version"] == st["head_version"] > 0
    assert {"owner", "lag_events"} <= set(out["partitions"][0]) and out["last_commit"] is not None


def test_higher_priority_feedback_is_learned_first(store):
    name = new_name("prio")
    create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=2)
    gen = FraudStream(seed=12)
    _ingest(store, name, gen.sample(3000), kind="other")      # the backlog
    _ingest(store, name, gen.sample(3000), kind="explicit")   # arrives later, more important
    w = Worker(store, name, batch_size=1000, starvation_reserve=0.1, **FAST)
    w.run(max_batches=3)
    explicit, other = w.fcfg.lane_of("explicit"), w.fcfg.lane_of("other")
    assert explicit < other  # a lower lane number is learned first
    _, traces = learned_counts(store, name, w.shared)
    lanes = [lane for t in traces for _, lane, _, n in t["segments"] for _ in range(n)]
    assert len(lanes) >= 1500 and set(lanes) == {explicit}  # all explicit first, though it came later
    w = Worker(store, name, batch_size=1000, starvation_reserve=0.1, **FAST)
    assert w.run(until_idle=True)["events"] == 6000 - len(lanes)  # then the rest
    assert fleet_status(store, name)["lag_events"] == 0


def test_events_without_features_use_the_lookup_hook(store):
    name = new_name("look")
    create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=2)
    txs = FraudStream(seed=13).sample(1200)
    _ingest(store, name, txs[:600], with_features=False)
    known = {tx["entity_id"]: tx["features"] for tx in txs[:400]}
    calls = []

    def lookup(model, entity_ids):
        calls.append((model, len(entity_ids)))
        return {e: known[e] for e in entity_ids if e in known}

    stats = Worker(store, name, batch_size=5000, feature_lookup=lookup, **FAST).run(until_idle=True)
    assert calls and calls[0][0] == name
    assert stats["events"] == 600 and stats["learned"] == 400 and stats["skipped"] == 200
    assert fleet_status(store, name)["lag_events"] == 0  # skipped events are consumed, and counted


def test_poison_events_and_an_unreadable_segment_are_set_aside_and_the_partition_moves_on(store):
    """Stored feedback that cstore's writer would never produce (another producer, or damage) must not
    block a partition: the worker counts it, logs it, learns the rest and checkpoints past it."""
    name = new_name("poison")
    create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=1)
    txs = FraudStream(seed=14).sample(300)
    now = time.time()
    bad_events = [[f"bad-{i}", label, "explicit", None, now, {"amount": 1.0}, None]
                  for i, label in enumerate(["yes", float("nan"), 7.0, None])]
    bad_events += [[1.5, 1.0, "explicit", None, now, None, None], ["short", 1.0]]  # wrong entity type; 2 fields
    with FeedbackWriter(store, name, linger_ms=10_000) as w:  # the raw path: bytes the writer does not check
        for tx in txs[:100]:
            w.send(tx["entity_id"], tx["label"], features=tx["features"])
        for ev in bad_events:
            w.send_event(ev[0], "explicit", msgpack.packb(ev, use_bin_type=True))
        for tx in txs[100:200]:
            w.send(tx["entity_id"], tx["label"], features=tx["features"])
    with FeedbackWriter(store, name, linger_ms=10_000) as w:  # one segment that is not msgpack at all
        for i in range(3):
            w.send_event(f"junk-{i}", "explicit", b"\xc1\xc1")
    with FeedbackWriter(store, name) as w:
        for tx in txs[200:]:
            w.send(tx["entity_id"], tx["label"], features=tx["features"])
    version0 = store.head_version(name)
    worker = Worker(store, name, batch_size=1000, **FAST)
    stats = worker.run(until_idle=True)
    assert stats["events"] == 300 + len(bad_events) + 3
    assert stats["poisoned"] == len(bad_events) + 3 and worker.reader.poison_segments == 1
    assert stats["learned"] == 300 and stats["errors"] == 0
    assert fleet_status(store, name)["lag_events"] == 0  # checkpointed past the poison
    assert store.head_version(name) > version0


def test_a_failing_batch_is_retried_not_lost(store):
    name = new_name("retry")
    create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=2)
    txs = FraudStream(seed=16).sample(300)
    _ingest(store, name, txs, with_features=False)
    features = {tx["entity_id"]: tx["features"] for tx in txs}
    calls = []

    def flaky_lookup(model, entity_ids):  # e.g. the prediction log's table is briefly unavailable
        calls.append(len(entity_ids))
        if len(calls) == 1:
            raise TimeoutError("prediction log unavailable")
        return {e: features[e] for e in entity_ids}

    stats = Worker(store, name, batch_size=1000, feature_lookup=flaky_lookup, **FAST).run(until_idle=True)
    assert stats["errors"] == 1 and stats["learned"] == 300 and stats["events"] == 300
    assert fleet_status(store, name)["lag_events"] == 0


def _assert_equals_summed_replay(store, name, worker, n_features=2**12):
    """The stored model is bit for bit a pure-numpy replay of the traced batches (the summed step, FTRL
    alpha 0.3), each batch's events hashed row by row from their dicts; returns the replay's losses."""
    counts, traces = learned_counts(store, name, worker.shared)
    events = {s["seg_id"]: decode_payload(s["payload"]) for s in all_segments(store.backend.session, worker.fcfg)}
    opt, hasher = FTRLProximal(alpha=0.3, beta=1.0), FeatureHasher(n_features)
    z, n, w = (np.zeros(n_features, np.float32) for _ in range(3))
    bz, bn, b = np.zeros(1, np.float32), np.zeros(1, np.float32), 0.0
    losses = []
    for t in sorted(traces, key=lambda t: t["batch_id"].time):
        evs = [ev for _, _, seg_id, _ in t["segments"] for ev in events[seg_id]]
        indptr, idx, val = hasher.transform_many([ev.features for ev in evs])
        y = np.array([ev.label for ev in evs])
        losses += list(log_loss(predict_proba_batch(w, b, indptr, idx, val), y))
        g = batch_gradient(w, b, indptr, idx, val, y, np.ones(len(evs)))
        z[g.indices], n[g.indices], w[g.indices] = opt.step(z[g.indices], n[g.indices], g.values, t["lr_scale"])
        bz, bn, bw = opt.step(bz, bn, np.array([g.bias]), t["lr_scale"])
        b = float(bw[0])
    stored = store.read_model(name).params
    for param, mine in (("weights", w), ("z", z), ("n", n)):
        np.testing.assert_array_equal(stored[param], mine)
    assert stored["bias"][0] == np.float32(b) and stored["bias_z"][0] == bz[0]
    return losses


@pytest.mark.parametrize("ingest", [_ingest, _ingest_columns], ids=["send", "send_batch"])
def test_a_restarted_worker_resumes_exactly(store, ingest):
    """Two workers one after the other give bit-for-bit the model a pure-numpy replay of the batches gives,
    whether the feedback came event by event or as columns (the summed step: one per batch; the per-event
    default is pinned in test_per_event.py)."""
    name = new_name("resume")
    create_learner(store, name, n_features=2**12, chunk_size=1024, partitions=2, alpha=0.3, update="summed")
    ingest(store, name, FraudStream(seed=14).sample(5000), max_batch=250)
    first = Worker(store, name, batch_size=1000, **FAST)
    first.run(max_batches=2)
    Worker(store, name, batch_size=1000, **FAST).run(until_idle=True)
    counts, traces = learned_counts(store, name, first.shared)
    assert len(traces) >= 5 and set(counts.values()) == {1}
    losses = _assert_equals_summed_replay(store, name, first)
    state = msgpack.unpackb(first.shared.read()["state"], raw=False)
    det = detector_from_state(state["detector"])
    assert det.get_state()["detector"]["n"] + 5000 >= len(losses)  # the detector saw the stream after warm-up


def test_drift_is_detected_recorded_and_answered(store):
    name = new_name("drift")
    # alpha = 0.1, not the default 0.3: with 500-event batches the default overshoots and oscillates
    # (batch losses 0.69 -> ~1.0 -> 0.5 -> up to 0.8-1.3, depending on how the events fall into batches),
    # and those real rises made the stationary phase flag a drift in 1-3 runs of 10. At 0.1 the loss
    # falls smoothly (0.69 -> 0.47 -> 0.44): 0 false alarms in 12 runs of this first phase, 0 failures in 15.
    create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=2, alpha=0.1, drift_warmup=1000,
                   drift_params={"min_instances": 200}, drift_response="both")
    gen = FraudStream(seed=15)
    _ingest(store, name, gen.sample(4000))
    w = Worker(store, name, batch_size=500, **FAST)
    w.run(until_idle=True)
    assert fleet_status(store, name)["drift"]["detections"] == 0
    flipped = [{**tx, "label": 1 - tx["label"]} for tx in gen.sample(3000)]  # the concept turns around
    _ingest(store, name, flipped)
    w = Worker(store, name, batch_size=500, **FAST)
    w.run(until_idle=True)
    st = fleet_status(store, name)
    assert st["drift"]["detections"] >= 1 and st["drift"]["last_drift"] is not None
    assert sum(r["drift_events"] for r in store.stats(name, since=time.time() - 600)) >= 1
    assert st["drift"]["lr_scale"] > 1.0  # response "both": a higher learning rate...
    assert any("drift detected" in v["reason"] for v in store.versions(name))  # ...and a snapshot first


def test_federated_deltas_are_averaged_and_committed(store):
    name = new_name("fed")
    create_learner(store, name, n_features=2**10, chunk_size=256, partitions=2)
    result = commit_federated(store, name, [
        {"indices": [1, 300], "values": [0.4, -0.2], "count": 1, "bias": 0.1},
        {"indices": [1], "values": [1.0], "count": 3, "bias": 0.5},
    ])
    assert result.chunks == [0, 1]
    params = store.read_model(name).params
    np.testing.assert_allclose(params["weights"][[1, 300]], [(0.4 + 3.0) / 4, -0.2 / 4], rtol=1e-5)
    np.testing.assert_allclose(params["bias"][0], (0.1 + 1.5) / 4, rtol=1e-5)
    opt = FTRLProximal(alpha=0.3)
    np.testing.assert_array_equal(params["weights"], opt.weights_from(params["z"], params["n"]))
    assert {h.update_type for h in store.history(name, since=time.time() - 600)} == {"federated"}


def test_a_critical_label_is_learned_by_the_critical_lane_beside_a_bulk_backlog(store):
    name = new_name("crit")
    create_learner(store, name, n_features=2**12, chunk_size=1024, partitions=2)
    _ingest(store, name, FraudStream(seed=17).sample(4000), kind="implicit")  # the bulk backlog
    w = Worker(store, name, batch_size=500, **FAST)
    runner = threading.Thread(target=w.run)
    runner.start()
    try:
        wait_for(lambda: w.critical.holding, 10, "the worker to lease the critical partition")
        probe = {"probe_feature": 1.0}  # a feature no other event has
        idx = int(FeatureHasher(2**12).transform_one(probe)[0][0])
        send_feedback(store, name, "tx-critical", 1, kind="explicit", features=probe, critical=True)
        wait_for(lambda: store.read_model(name).params["weights"][idx] != 0.0, 30, "the critical label to be learned")
        st = fleet_status(store, name)
        crit = [p for p in st["partitions"] if p["critical"]]
        assert [p["partition"] for p in crit] == [w.fcfg.critical_part] == [2] and crit[0]["owner"] == w.worker_id
    finally:
        w.stop()
        runner.join(60)
    assert w.critical.stats["events"] == 1 and w.critical.stats["learned"] == 1
    counts, traces = learned_counts(store, name, w.shared)
    critical = [t for t in traces if any(part == w.fcfg.critical_part for part, _, _, _ in t["segments"])]
    assert len(critical) == 1 and critical[0]["n_learned"] == 1  # learned alone, not inside a bulk batch
    assert set(counts.values()) == {1}  # every segment learned exactly once
    st = fleet_status(store, name)
    assert all(p["owner"] is None for p in st["partitions"])  # the critical lease was released too


def test_the_critical_lane_keeps_every_row_of_a_model_larger_than_16_mib(store, monkeypatch):
    """A 2^21-feature learner is 24 MiB of rows (3 parameters of 8 MiB). A label that touches every chunk
    is learned once; the next one learns on the rows the lane holds and reads none whole (with a fixed
    16 MiB budget for them the second made 11 whole chunk reads at the default chunks, 22 at 65,536)."""
    name = new_name("critbig")
    info = create_learner(store, name, n_features=2**21, partitions=1)
    hasher, features = FeatureHasher(2**21), {}
    for i in range(10_000):  # features until every chunk has one
        features[f"f{i}"] = 1.0
        if len(set(hasher.transform_one(features)[0] // info.chunk_size)) == info.n_chunks("weights"):
            break
    w = Worker(store, name, batch_size=500, **FAST)
    runner = threading.Thread(target=w.run)
    runner.start()
    whole = {"chunks": 0}
    try:
        wait_for(lambda: w.critical.holding, 10, "the worker to lease the critical partition")
        send_feedback(store, name, "tx-1", 1, kind="explicit", features=features, critical=True)
        wait_for(lambda: w.critical.stats["learned"] == 1, 30, "the first critical label to be learned")
        read = store.chunks.read

        def counted(info, chunks, params=None):
            whole["chunks"] += len(list(chunks))
            return read(info, chunks, params)
        monkeypatch.setattr(store.chunks, "read", counted)
        send_feedback(store, name, "tx-2", 0, kind="explicit", features=features, critical=True)
        wait_for(lambda: w.critical.stats["learned"] == 2, 30, "the second critical label to be learned")
    finally:
        w.stop()
        runner.join(60)
    assert w.critical.stats["errors"] == 0
    assert whole["chunks"] == 0, f"{whole['chunks']} chunks were read whole for the second label"


def test_status_exits_3_when_feedback_waits_and_no_worker_is_alive(base_config, store):
    name = new_name("stuck")
    create_learner(store, name, n_features=2**10, chunk_size=1024, partitions=2)
    send_feedback(store, name, "tx-1", 1, features={"a": 1.0})
    res = run_cli(base_config, "status", name, "--json")
    assert res.returncode == 3 and "no worker is alive" in res.stderr
    out = json.loads(res.stdout)
    assert out["healthy"] is False and out["lag_events"] == 1
    Worker(store, name, batch_size=100, **FAST).run(until_idle=True)
    assert run_cli(base_config, "status", name).returncode == 0


def test_a_bad_critical_flag_is_refused_and_nothing_written(store):
    name = new_name("critbad")
    create_learner(store, name, n_features=2**10, chunk_size=1024, partitions=2)
    for bad in ("yes", 1, None):
        with pytest.raises(InvalidFeedback, match="critical must be True or False"):
            send_feedback(store, name, "tx-1", 1, features={"a": 1.0}, critical=bad)
        with FeedbackWriter(store, name) as writer, pytest.raises(InvalidFeedback, match="critical must be"):
            writer.send("tx-1", 1, features={"a": 1.0}, critical=bad)
    assert all_segments(store.backend.session, context(store).layout(name)[1]) == []


def test_columnar_batches_are_hashed_by_column_and_learn_exactly_what_rows_learn(store, monkeypatch):
    """A worker hashes columnar segments column by column (no per-event dicts), and the model it learns
    is bit for bit the replay that hashes each batch's events row by row from their dicts (batches are
    replayed as the traces recorded them: how segments fall into batches depends on timing)."""
    import cstore.training._batching as batching
    real, calls = batching.hash_columns, []

    def counted(hasher, columns, n):
        out = real(hasher, columns, n)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(batching, "hash_columns", counted)
    name = new_name("hashcols")
    create_learner(store, name, n_features=2**12, chunk_size=1024, partitions=2, alpha=0.3, update="summed")
    _ingest_columns(store, name, FraudStream(seed=21).sample(4000), max_batch=250)
    worker = Worker(store, name, batch_size=1000, critical=False, **FAST)
    assert worker.run(until_idle=True)["learned"] == 4000
    assert calls and all(calls)  # every batch took the column path
    _assert_equals_summed_replay(store, name, worker)
