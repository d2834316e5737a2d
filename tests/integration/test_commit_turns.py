"""Commit turns (cstore.training._turn): workers of one model take turns to commit their bulk batches,
against the real node; the turn is an optimisation that never blocks anyone for long."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np

from cstore.training import Worker, create_learner
from cstore.training._turn import CommitTurn
from cstore_dev.fraudsim import FraudStream
from feedback_helpers import new_name
from test_worker_learning import FAST, _ingest_columns


def _turn(store, model_id, holder, *, shared=True, wait_s=5.0, ttl_s=10, stop=None):
    return CommitTurn(store.backend.fleet, model_id, holder, shared=lambda: shared,
                      stop=stop or threading.Event(), stats={}, ttl_s=ttl_s, wait_s=wait_s)


def test_one_holder_at_a_time_and_the_next_one_gets_it_once_it_is_given_up(store):
    model_id = uuid.uuid4()
    a, b = _turn(store, model_id, "a"), _turn(store, model_id, "b")
    got_b: list[float] = []
    with a.taken() as got_a:
        assert got_a and store.backend.fleet.turn_holder(model_id) == "a"

        def take_b():
            with b.taken() as got:
                got_b.append(time.monotonic() if got else -1.0)
        t = threading.Thread(target=take_b)
        t.start()
        time.sleep(0.3)
        assert not got_b  # b waits while a holds the turn
        released = time.monotonic()
    t.join(timeout=10)
    assert got_b and got_b[0] >= released
    assert store.backend.fleet.turn_holder(model_id) is None
    assert a.stats["turns"] == b.stats["turns"] == 1 and b.stats["turn_wait_s"] >= 0.25


def test_a_model_not_shared_skips_the_turn_and_a_wait_runs_out(store):
    model_id = uuid.uuid4()
    alone = _turn(store, model_id, "alone", shared=False)
    with alone.taken() as got:
        assert not got and store.backend.fleet.turn_holder(model_id) is None  # nothing written
    holder, late = _turn(store, model_id, "holder"), _turn(store, model_id, "late", wait_s=0.3)
    with holder.taken(), late.taken() as got_late:
        assert not got_late and late.stats["turns_missed"] == 1  # commits without it
    stop = threading.Event()
    stuck, stopping = _turn(store, model_id, "stuck"), _turn(store, model_id, "stopping", stop=stop)
    with stuck.taken():
        stop.set()
        t0 = time.monotonic()
        with stopping.taken() as got:
            assert not got and time.monotonic() - t0 < 1.0  # a stopping worker does not wait
        assert stopping.stats["turns_missed"] == 0  # nor does it count as a missed turn


def test_a_dead_holders_turn_lapses(store):
    model_id = uuid.uuid4()
    assert store.backend.fleet.take_turn(model_id, "dead", 1).applied  # taken and never given up
    with _turn(store, model_id, "next", wait_s=5.0).taken() as got:
        assert got and store.backend.fleet.turn_holder(model_id) == "next"


def test_two_workers_of_one_model_take_turns_and_learn_every_event(store):
    name = new_name("turns")
    create_learner(store, name, n_features=2**12, chunk_size=1024, partitions=4)
    _ingest_columns(store, name, FraudStream(seed=5).sample(8000), max_batch=250)
    workers = [Worker(store, name, batch_size=500, critical=False, **FAST) for _ in range(2)]
    for w, parts in zip(workers, ([0, 1], [2, 3])):  # split the partitions, as a fleet of two does
        for p in parts:
            assert w.leases.acquire(p)
        w.leases.rebalance = lambda: ([], [])  # keep that split
    out: list[dict] = []
    threads = [threading.Thread(target=lambda w=w: out.append(w.run(until_idle=True))) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sum(o["learned"] for o in out) == 8000
    assert all(o["turns"] > 0 for o in out)  # each shared the model and committed in its turn
    assert np.isfinite(store.read_model(name).params["weights"]).all()
