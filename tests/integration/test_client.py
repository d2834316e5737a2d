"""The scoring client on the real node: predictions from the cache, freshness, rollback, index healing,
8 threads on one handle, the prediction log and review candidates, fork(), and delayed labels learned
through the prediction log (with the worker)."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import threading
import time
import uuid

import numpy as np
import pytest

from cstore import Client
from cstore.core import chunk_context
from cstore.errors import UnknownModel, ValidationError
from cstore.learn import FeatureHasher, predict_proba
from cstore.training import create_learner
from cstore.ops import fleet_status
from cstore.training import Worker

N_FEATURES = 1024
SEED = 3


@pytest.fixture(scope="module")
def client(base_config):
    c = Client(config=dataclasses.replace(base_config, refresh_interval_s=0.1))
    yield c
    c.close()


def make_model(store, name, *, n_features=N_FEATURES, chunk_size=256):
    store.create_model(name, {"weights": (n_features,), "bias": (1,)}, chunk_size=chunk_size,
                       metadata={"learner": {"n_features": n_features, "hash_seed": SEED}})
    return name


def transaction(i: int = 0) -> dict:
    """About 30 features, as a fraud scorer sends them."""
    f = {f"num_{j}": ((i * 31 + j * 7) % 97) / 97.0 for j in range(20)}
    f.update({f"cat_{j}": f"v{(i + j) % 5}" for j in range(8)})
    f.update({"new_device": i % 2 == 0, "amount": 10.0 + i})
    return f


def expected(store, name, features) -> float:
    state = store.read_model(name)
    idx, val = FeatureHasher(N_FEATURES, SEED).transform_one(features)
    return predict_proba(state.params["weights"], float(state.params["bias"][0]), idx, val)


def test_predictions_match_the_stored_parameters_single_and_batch(store, client, unique_name):
    name = make_model(store, unique_name)
    rng = np.random.default_rng(1)
    store.apply_updates(name, {"weights": rng.normal(0, 0.1, N_FEATURES).astype("float32"),
                               "bias": np.array([-0.3], "float32")}, update_type="direct")
    model = client.model(name)
    assert model is client.model(name)  # one handle per model and client
    # the version index is announced just after the commit is acknowledged: the handle catches up in ms
    assert model.wait_for_version(store.head_version(name)) and model.version == store.head_version(name)
    rows = [transaction(i) for i in range(25)]
    single = [model.predict_proba(r) for r in rows]
    assert single == [expected(store, name, r) for r in rows]
    assert np.allclose(model.predict_proba_batch(rows), single, rtol=0, atol=1e-6)
    assert len(set(single)) > 20  # the features matter


def test_a_committed_update_is_visible_within_one_second(store, client, unique_name):
    name = make_model(store, unique_name)
    model = client.model(name)
    f = transaction(7)
    idx, _ = FeatureHasher(N_FEATURES, SEED).transform_one(f)
    lags = []
    rng = np.random.default_rng(2)
    for _ in range(15):
        time.sleep(rng.uniform(0, 0.15))  # land anywhere in the polling cycle
        store.apply_update(name, "weights", np.full(len(idx), -0.01, "float32"), indices=idx.tolist(), lr=1.0)
        committed = time.monotonic()
        target = store.head_version(name)  # the update spans several chunks: wait for all of them
        while model.version < target:
            assert time.monotonic() - committed < 1.0, "a committed update was not visible within 1 s"
            time.sleep(0.001)
        lags.append(time.monotonic() - committed)
        assert model.predict_proba(f) == expected(store, name, f)
    assert model.staleness < 1.0
    print(f"\nfreshness over {len(lags)} commits: p50 {statistics.median(lags) * 1000:.0f} ms, "
          f"max {max(lags) * 1000:.0f} ms")


def test_a_quiet_model_costs_one_head_read_per_poll(store, client, unique_name):
    name = make_model(store, unique_name)
    model = client.model(name)
    store.apply_update(name, "weights", [0.5], indices=[3], lr=1.0)
    assert model.wait_for_version(store.head_version(name), 2.0)
    before = model.status()
    time.sleep(1.0)  # nothing commits: the head counter does not move
    quiet = model.status()
    assert quiet["polls"] - before["polls"] >= 5  # the client polls every 0.1 s
    assert quiet["index_reads"] == before["index_reads"] and quiet["chunks_fetched"] == before["chunks_fetched"]
    store.apply_update(name, "weights", [0.5], indices=[3], lr=1.0)  # one commit: one index read, one chunk
    assert model.wait_for_version(store.head_version(name), 2.0)
    moved = model.status()
    assert moved["index_reads"] > quiet["index_reads"] and moved["chunks_fetched"] == quiet["chunks_fetched"] + 1
    assert store.read_model(name).params["weights"][3] == -1.0 and model.version == store.head_version(name)


def test_a_large_chunk_moved_by_a_few_coordinates_is_caught_up_not_read_whole(store, client, unique_name):
    """One moved chunk of 1 MiB (a learner's default row): the scorer applies the commit's entry instead
    of reading the megabyte again, however few chunks moved."""
    from cstore.store import CATCH_UP_BYTES
    name = make_model(store, unique_name, n_features=CATCH_UP_BYTES // 4, chunk_size=CATCH_UP_BYTES // 4)
    model = client.model(name)
    assert model.wait_for_version(store.head_version(name), 2.0)
    before = model.status()
    for step in range(3):
        store.apply_update(name, "weights", [0.5, -0.25], indices=[step, 100_000 + step], lr=1.0)
        assert model.wait_for_version(store.head_version(name), 2.0)
    after = model.status()
    assert after["chunks_fetched"] == before["chunks_fetched"], "the moved 1 MiB chunk was read whole"
    assert after["chunks_caught_up"] - before["chunks_caught_up"] >= 1
    np.testing.assert_array_equal(model._cache.current.weights, store.read_model(name).params["weights"])


def test_a_commit_that_moves_many_chunks_reaches_the_scorer_as_delta_entries(store, client, unique_name):
    """A micro-batch moves every chunk a little: the scorer catches them up from their entries (no chunk
    data read) and holds exactly what the store holds; after a chunk is written whole it reads that one."""
    name = make_model(store, unique_name, n_features=16384, chunk_size=1024)  # 16 chunks of 4 KiB
    model = client.model(name)
    assert model.wait_for_version(store.head_version(name), 2.0)
    before = model.status()
    for step in range(3):
        idx = list(range(step, 16384, 512))  # two coordinates in each chunk
        store.apply_update(name, "weights", [0.25 * (step + 1)] * len(idx), indices=idx, lr=1.0)
        assert model.wait_for_version(store.head_version(name), 2.0)
    after = model.status()
    assert after["chunks_caught_up"] - before["chunks_caught_up"] >= 16
    assert after["chunks_fetched"] == before["chunks_fetched"]
    np.testing.assert_array_equal(model._cache.current.weights, store.read_model(name).params["weights"])
    store.apply_update(name, "weights", np.ones(1024, "float32"), indices=list(range(1024)), lr=1.0)  # chunk 0 whole
    store.apply_update(name, "weights", [0.5] * 32, indices=list(range(7, 16384, 512)), lr=1.0)
    assert model.wait_for_version(store.head_version(name), 2.0)
    assert model.status()["chunks_fetched"] - after["chunks_fetched"] >= 1
    np.testing.assert_array_equal(model._cache.current.weights, store.read_model(name).params["weights"])


def test_a_rollback_is_picked_up_like_any_update(store, client, unique_name):
    name = make_model(store, unique_name)
    model = client.model(name)
    f = transaction(3)
    idx, _ = FeatureHasher(N_FEATURES, SEED).transform_one(f)
    store.apply_update(name, "weights", np.full(len(idx), -0.2, "float32"), indices=idx.tolist(), lr=1.0)
    good = store.snapshot(name, reason="known good")
    assert model.wait_for_version(good, 2.0)
    p_good = model.predict_proba(f)
    store.apply_update(name, "weights", np.full(len(idx), 0.5, "float32"), indices=idx.tolist(), lr=1.0)
    assert model.wait_for_version(store.head_version(name), 2.0)
    assert model.predict_proba(f) < p_good
    head = store.rollback(name, good, reason="bad deploy")
    assert model.wait_for_version(head, 2.0)
    assert model.predict_proba(f) == p_good == expected(store, name, f)


def test_the_full_check_heals_a_commit_whose_index_row_is_missing(store, client, session, unique_name):
    name = make_model(store, unique_name)
    model = client.model(name)
    info = store.model_info(name)
    f = transaction(5)
    before = model.predict_proba(f)
    # A writer that died between its compare-and-set and the index write: the chunk moved, the index did not.
    idx, _ = FeatureHasher(N_FEATURES, SEED).transform_one(f)
    k = int(idx[0]) // 256
    row = session.execute("SELECT data, version FROM chunks WHERE model_id = %s AND chunk = %s AND param = 'weights'",
                          (info.model_id, k)).one()
    ctx = chunk_context(info.model_id, k, "weights")
    data = store._codec.decode(row["data"], context=ctx).copy()
    data[int(idx[0]) - k * 256] += 3.0
    session.execute("UPDATE chunks SET data = %s, version = %s "
                    "WHERE model_id = %s AND chunk = %s AND param = 'weights'",
                    (store._codec.encode(data, context=ctx), row["version"] + 1, info.model_id, k))
    model.refresh()
    assert model.predict_proba(f) == before  # the poll reads the index only
    model.refresh(full=True)
    assert model.predict_proba(f) > before
    # Reported once the row has trailed its chunk for longer than a commit in flight would.
    deadline = time.monotonic() + 15
    while model.status()["stale_index_rows"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert model.status()["stale_index_rows"] == 1
    time.sleep(0.5)
    assert model.status()["stale_index_rows"] == 1  # once, not at every poll


def test_unknown_models_bad_models_and_bad_features_are_clear_errors(store, client, unique_name):
    with pytest.raises(UnknownModel, match="unknown model"):
        client.model(unique_name + "_missing")
    store.create_model(unique_name, {"w": (64,)}, chunk_size=16)
    with pytest.raises(ValidationError, match="no parameter 'weights'"):
        client.model(unique_name)
    name = make_model(store, unique_name + "_ok")
    with pytest.raises(ValidationError, match="non-finite"):
        client.model(name).predict_proba({"amount": float("nan")})


def test_one_handle_shared_by_8_threads_sees_whole_states_only(store, client, unique_name):
    # weights and bias in one chunk partition: each direct write replaces the whole state atomically,
    # so every prediction must be exactly one of the states written, never a mix.
    name = make_model(store, unique_name, n_features=64, chunk_size=64)
    model = client.model(name)
    f = {f"x{j}": 0.01 * (j + 1) for j in range(30)}
    idx, val = FeatureHasher(64, SEED).transform_one(f)
    allowed = {predict_proba(np.full(64, k, "float32"), float(np.float32(k / 10)), idx, val): k for k in range(41)}
    errors, seen = [], [[] for _ in range(8)]
    stop = threading.Event()

    def scorer(t: int) -> None:
        last = -1
        while not stop.is_set():
            batch = model.predict_proba_batch([f, f, f])
            p = model.predict_proba(f)
            if p not in allowed or len(set(batch.round(12))) != 1:
                errors.append((t, p, batch))
            elif allowed[p] < last:
                errors.append((t, "went back", last, allowed[p]))
            else:
                last = allowed[p]
                seen[t].append(last)

    threads = [threading.Thread(target=scorer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for k in range(1, 41):
        store.apply_updates(name, {"weights": np.full(64, k, "float32"), "bias": np.array([k / 10], "float32")},
                            update_type="direct")
        time.sleep(0.02)
    assert model.wait_for_version(store.head_version(name), 2.0)
    time.sleep(0.05)
    stop.set()
    for th in threads:
        th.join()
    assert not errors, errors[:5]
    assert all(s and s[-1] == 40 for s in seen)          # every thread ends on the final state
    assert all(len(set(s)) > 3 for s in seen)            # ...having seen it move while scoring


def test_score_logs_features_for_the_join_and_review_candidates(store, client, unique_name):
    name = make_model(store, unique_name)
    store.apply_updates(name, {"weights": np.random.default_rng(4).normal(0, 0.3, N_FEATURES).astype("float32")},
                        update_type="direct")
    model = client.model(name)
    assert model.wait_for_version(store.head_version(name), 2.0)
    t0 = time.time()
    scores = {f"tx-{i}": model.score(f"tx-{i}", transaction(i)) for i in range(60)}
    model.score(12345, transaction(99))                    # int ids are logged as their str
    model.score(None, transaction(98))                     # a bad id: scored, not logged, counted
    assert client.flush_log()
    found = client.feature_lookup(name, ["tx-3", 12345, "tx-never"])
    assert found["tx-3"] == transaction(3) and found[12345] == transaction(99) and "tx-never" not in found
    best = sorted(scores.items(), key=lambda kv: abs(kv[1] - 0.5))[:5]
    cands = model.review_candidates(5, since=t0 - 1)
    assert [(c.entity_id, c.score) for c in cands] == best
    assert all(c.version == model.version for c in cands)
    assert model.review_candidates(5, since=time.time() + 1) == []
    stats = client.log_stats(name)
    assert stats["logged"] == 61 and stats["write_errors"] == 1
    assert stats["lookups"] == 3 and stats["lookup_hits"] == 2 and stats["lookup_misses"] == 1


def test_a_full_log_buffer_drops_and_counts_without_blocking(base_config, store, unique_name):
    name = make_model(store, unique_name)
    with Client(config=dataclasses.replace(base_config, prediction_log_queue=5)) as c:
        model = c.model(name)
        c._writer.close()  # no writer thread any more: the buffer can only fill up
        t0 = time.monotonic()
        scores = [model.score(f"tx-{i}", transaction(i)) for i in range(20)]
        assert time.monotonic() - t0 < 0.5 and scores == [0.5] * 20  # every prediction answered
        assert model.status()["log"]["dropped"] == 15 and model.status()["log_queue"] == 5


def test_a_handle_created_before_fork_reconnects_in_the_child(store, client, unique_name):
    name = make_model(store, unique_name)
    model = client.model(name)
    f = transaction(11)
    p0 = model.predict_proba(f)
    parent_backend = client.backend()
    idx, _ = FeatureHasher(N_FEATURES, SEED).transform_one(f)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            out = {"inherited": model.predict_proba(f)}  # from the inherited copy, before any reconnect
            deadline = time.monotonic() + 10
            while model.predict_proba(f) == p0 and time.monotonic() < deadline:
                time.sleep(0.01)
            b = client.backend()
            out.update(p=model.predict_proba(f), version=model.version, own_connection=b is not parent_backend
                       and b.pid == os.getpid() and b.store.backend is not parent_backend.store.backend)
            model.score("forked-tx", f)
            out["logged"] = client.flush_log(5)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": repr(exc)}
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(code)
    os.close(w)
    store.apply_update(name, "weights", np.full(len(idx), -1.0, "float32"), indices=idx.tolist(), lr=1.0)
    head = store.head_version(name)
    _, status = os.waitpid(pid, 0)
    out = json.loads(os.read(r, 65536).decode())
    os.close(r)
    assert status == 0, out
    assert out["inherited"] == p0 and out["own_connection"] and out["logged"]
    assert out["version"] == head and out["p"] > p0
    # The parent's connection was not disturbed by the child.
    assert model.wait_for_version(head, 2.0) and model.predict_proba(f) == out["p"]
    assert client.feature_lookup(name, ["forked-tx"])["forked-tx"] == f


def _learn(store, name: str, events: int, timeout: float = 60.0) -> dict:
    """Run one worker (joining the prediction log by default) until it consumed ``events``; return its stats."""
    worker = Worker(store, name, batch_size=events, max_wait_ms=300, lease_ttl_s=6)
    runner = threading.Thread(target=worker.run)
    runner.start()
    deadline = time.monotonic() + timeout
    while worker.stats["events"] < events and time.monotonic() < deadline and runner.is_alive():
        time.sleep(0.05)
    worker.stop()
    runner.join(30)
    return dict(worker.stats)


def test_a_label_sent_without_features_is_learned_through_the_prediction_log(store, client):
    name = f"delayed_{uuid.uuid4().hex[:10]}"
    create_learner(store, name, n_features=2**12, chunk_size=1024, partitions=2, alpha=0.5, drift="none")
    model = client.model(name)
    fraud = {"amount": 0.93, "country": "NG", "new_device": True, "hour": 0.1}
    p_before = model.score("tx-fraud", fraud)                  # the features are logged here...
    assert client.flush_log()
    model.feedback("tx-fraud", 1)                               # ...and the chargeback carries none
    client.feedback("tx-never-scored", 1, model=name)           # nothing logged for this one

    stats = _learn(store, name, events=2)
    assert stats["events"] == 2 and stats["learned"] == 1 and stats["skipped"] == 1

    assert model.wait_for_version(store.head_version(name), 2.0)
    p_after = model.predict_proba(fraud)
    assert p_after > p_before + 0.05, (p_before, p_after)
    untouched = {"amount": 0.5, "country": "SE"}
    assert abs(model.predict_proba(untouched) - p_before) < abs(p_after - p_before)

    counts = client.log_stats(name)
    assert counts["lookups"] == 2 and counts["lookup_hits"] == 1 and counts["lookup_misses"] == 1
    assert fleet_status(store, name)["prediction_log"] == counts  # what `cstore status` reports
