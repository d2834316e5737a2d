"""Per-event semantics through the system: feedback, workers, chunk commits. The stored model after
learning equals an in-memory learner that took one optimizer step per event, in the order learned; a
conflicting commit replays its steps on the other writer's rows; age weighting (half_life_s) end to end."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from cstore import FeedbackWriter
from cstore.feedback import decode_payload
from cstore.learn import MAX_STEPS, AdaGrad, FeatureHasher, FTRLProximal, batch_gradient
from cstore.training import Worker, create_learner
from cstore_dev.fraudsim import FraudStream
from feedback_helpers import all_segments, learned_counts, new_name

FAST = {"lease_ttl_s": 6, "max_wait_ms": 50, "poll_ms": 20}


def _per_event_reference(opt, events, traces, n_features):
    """One step per event with the optimizer's own float32 step, batches in commit order, events in
    the order each batch learned them (by event time), at the batch's learning-rate scale."""
    state, bias = opt.init_state(n_features), opt.init_state(1)
    for t in sorted(traces, key=lambda t: t["batch_id"].time):
        batch = [ev for _, _, seg_id, _ in t["segments"] for ev in events[seg_id]]
        state, bias = _steps(opt, sorted(batch, key=lambda ev: ev.event_time), t["lr_scale"], state, bias)
    return state, bias


def _steps(opt, events, lr_scale, state, bias):
    hasher = FeatureHasher(state["w"].size)
    for ev in events:
        indptr, idx, val = hasher.transform_many([ev.features])
        g = batch_gradient(state["w"], float(bias["w"][0]), indptr, idx, val, np.array([ev.label]), np.ones(1))
        for k, a in opt.apply({k: state[k][g.indices] for k in state}, g.values, lr_scale).items():
            state[k][g.indices] = a
        bias = opt.apply(bias, np.array([g.bias]), lr_scale)
    return state, bias


def _run(store, optimizer, opt, params):
    name = new_name("perevent")
    # No drift response and a flat schedule would make lr_scale 1; the reference reads it from the traces anyway.
    create_learner(store, name, n_features=2**10, chunk_size=256, partitions=2, optimizer=optimizer,
                   drift="none", drift_response="none", **params)
    with FeedbackWriter(store, name, max_batch=40, linger_ms=5) as w:
        for tx in FraudStream(seed=21).sample(600):
            w.send(tx["entity_id"], tx["label"], features=tx["features"])
    first = Worker(store, name, batch_size=100, **FAST)  # several batches, and a second worker resuming
    first.run(max_batches=2)
    Worker(store, name, batch_size=100, **FAST).run(until_idle=True)
    counts, traces = learned_counts(store, name, first.shared)
    assert set(counts.values()) == {1} and sum(t["n_learned"] for t in traces) == 600
    events = {s["seg_id"]: decode_payload(s["payload"]) for s in all_segments(store.backend.session, first.fcfg)}
    return store.read_model(name).params, _per_event_reference(opt, events, traces, 2**10), traces


def test_the_stored_ftrl_model_equals_a_per_event_learner(store):
    stored, (state, bias), traces = _run(store, "ftrl", FTRLProximal(alpha=0.3, beta=1.0), {"alpha": 0.3})
    assert len(traces) >= 4  # really several micro-batches, not one
    for param, key in (("weights", "w"), ("z", "z"), ("n", "n")):
        np.testing.assert_allclose(stored[param], state[key], rtol=1e-4, atol=1e-5)
    for param, key in (("bias", "w"), ("bias_z", "z"), ("bias_n", "n")):
        np.testing.assert_allclose(stored[param], bias[key], rtol=1e-4, atol=1e-5)
    assert np.count_nonzero(stored["weights"]) > 20


def test_the_stored_adagrad_model_equals_a_per_event_learner(store):
    stored, (state, bias), _ = _run(store, "adagrad", AdaGrad(lr=0.1), {"lr": 0.1})
    np.testing.assert_allclose(stored["weights"], state["w"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored["g2"], state["g2"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored["bias"], bias["w"], rtol=1e-4, atol=1e-5)


def test_a_batch_is_learned_in_the_order_its_events_happened_whatever_partition_they_came_through(store):
    """A batch is gathered partition by partition; the pass learns it by event time, so one worker that
    takes the whole stream in one batch (of at most MAX_STEPS events: the pass is exactly per event)
    ends where a per-event learner over the stream does."""
    name = new_name("order")
    create_learner(store, name, n_features=2**10, chunk_size=256, partitions=4, drift="none", drift_response="none")
    txs = FraudStream(seed=24).sample(MAX_STEPS - 8)
    t0 = time.time() - 60
    with FeedbackWriter(store, name, max_batch=1000, linger_ms=5) as w:
        for i, tx in enumerate(txs):  # explicit, distinct times: the stream's order is the times' order
            w.send(tx["entity_id"], tx["label"], event_time=t0 + i * 0.01, features=tx["features"])
    worker = Worker(store, name, batch_size=1000, **FAST)
    assert worker.run(until_idle=True)["learned"] == len(txs)
    _, traces = learned_counts(store, name, worker.shared)
    assert len(traces) == 1 and len({p for p, _, _, _ in traces[0]["segments"]}) == 4  # one batch, 4 partitions
    opt = FTRLProximal(alpha=0.3, beta=1.0)
    stream = [SimpleNamespace(features=tx["features"], label=float(tx["label"])) for tx in txs]
    state, bias = _steps(opt, stream, traces[0]["lr_scale"], opt.init_state(2**10), opt.init_state(1))
    stored = store.read_model(name).params
    for param, key in (("weights", "w"), ("z", "z"), ("n", "n")):
        np.testing.assert_allclose(stored[param], state[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored["bias"], bias["w"], rtol=1e-4, atol=1e-5)
    assert np.count_nonzero(stored["weights"]) > 20


def test_a_conflicting_commit_replays_its_steps_on_the_other_writers_rows(store):
    """Two batches learned from the same read: the first commits the pass's result; the second finds its
    chunks moved (a refused compare-and-set, re-applied to the rows read again) and replays its recorded
    per-coordinate steps on top. The stored model is exactly that, and its state stays consistent."""
    from cstore.core import CommitMeta
    from cstore.learn import positions, replay, sequential_pass
    from cstore.training import Learner, learner_config

    name = new_name("conflict")
    info = create_learner(store, name, n_features=2**10, chunk_size=256, drift="none")
    learner, hasher, opt = Learner(info, learner_config(info)), FeatureHasher(2**10), FTRLProximal(0.3, 1.0)
    txs = FraudStream(seed=22).sample(160)
    batches = []
    for part in (txs[:80], txs[80:]):
        indptr, idx, val = hasher.transform_many([tx["features"] for tx in part])
        batches.append((indptr, idx, val, np.array([tx["label"] for tx in part], float), np.ones(len(part))))
    chunks = sorted(set(learner.chunks_of(batches[0][1])) | set(learner.chunks_of(batches[1][1])))
    current = store.chunks.read(info, chunks)  # both batches start from this read
    meta = CommitMeta("gradient", 1.0, "feedback", "{}")
    results = [store.chunks.commit(info, chunks, learner.sequential_transform(current, *b, 1.0), meta,
                                   current=current) for b in batches]
    assert sum(c.conflicts for c in results[0].commits) == 0 and sum(c.conflicts for c in results[1].commits) > 0
    # The same in memory: pass A from zero; pass B's steps (computed from zero too) replayed on A's result.
    zero = opt.init_state(2**10)
    expected, bias = {k: v.copy() for k, v in zero.items()}, opt.init_state(1)
    passes = []
    for indptr, idx, val, y, s in batches:
        coords, pos = positions(idx, 2**10)
        passes.append((coords, sequential_pass(opt, opt, {k: v[coords] for k, v in zero.items()},
                                                 opt.init_state(1), indptr, pos, val, y, s)))
    (ca, a), (cb, b) = passes
    for k, v in a.state.items():
        expected[k][ca] = v
    again = replay(opt, {k: v[cb] for k, v in expected.items()}, b.entry_pos, b.entry_step, b.entry_grad)
    for k, v in again.items():
        expected[k][cb] = v
    bias = replay(opt, a.bias_state, np.zeros(b.steps, np.int64), np.arange(b.steps), b.bias_grad)
    stored = store.read_model(name).params
    for param, key in (("weights", "w"), ("z", "z"), ("n", "n")):
        np.testing.assert_array_equal(stored[param], expected[key])
    np.testing.assert_array_equal(stored["bias"], bias["w"])
    np.testing.assert_array_equal(stored["weights"], opt.weights_from(stored["z"], stored["n"]))
    shared = np.intersect1d(ca, cb)
    assert shared.size and np.all(stored["n"][shared] > a.state["n"][np.searchsorted(ca, shared)])  # A's stays in n


def test_age_weighting_forgets_old_labels_that_mislead(store):
    """half_life_s end to end: 1,500 labels of a reversed concept stamped six hours ago, then 500 of the
    true one stamped now. With a ten-minute half-life the old ones weigh ~2^-36 and the model learns the
    true concept; without it the old labels win. Scored on 1,000 fresh events of the true concept."""
    from cstore.learn import predict_proba_batch
    from cstore_dev.evaluation.metrics import roc_auc

    gen = FraudStream(seed=23)
    old = [{**tx, "label": 1 - tx["label"]} for tx in gen.sample(1500)]
    new, test = gen.sample(500), gen.sample(1000)
    indptr, idx, val = FeatureHasher(2**12).transform_many([tx["features"] for tx in test])
    y = np.array([tx["label"] for tx in test], float)
    now, auc = time.time(), {}
    for half_life in (None, 600.0):
        name = new_name("age")
        create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=2, drift="none",
                       half_life_s=half_life)
        with FeedbackWriter(store, name, max_batch=250, linger_ms=5) as w:
            for tx, t in [*((tx, now - 6 * 3600) for tx in old), *((tx, now) for tx in new)]:
                w.send(tx["entity_id"], tx["label"], event_time=t, features=tx["features"])
        stats = Worker(store, name, batch_size=500, **FAST).run(until_idle=True)
        assert stats["learned"] == 2000
        params = store.read_model(name).params
        auc[half_life] = roc_auc(y, predict_proba_batch(params["weights"], float(params["bias"][0]), indptr, idx, val))
    assert auc[600.0] > 0.75 and auc[600.0] > auc[None] + 0.1, auc


def test_a_window_forgets_labels_older_than_it_at_once(store):
    """window_s end to end: the same misleading six-hour-old labels and fresh true ones; with a one-hour
    window the old labels weigh exactly 0 (learned as seen, teaching nothing), so the model equals one
    that was sent only the fresh labels (batches of 100: each is learned exactly event by event)."""
    gen = FraudStream(seed=29)
    old = [{**tx, "label": 1 - tx["label"]} for tx in gen.sample(1000)]
    new = gen.sample(500)
    now, weights = time.time(), {}
    for case, sent in (("windowed", [*((tx, now - 6 * 3600) for tx in old), *((tx, now) for tx in new)]),
                       ("fresh only", [(tx, now) for tx in new])):
        name = new_name("win")
        create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=1, drift="none", window_s=3600)
        with FeedbackWriter(store, name, max_batch=100, linger_ms=5) as w:
            for tx, t in sent:
                w.send(tx["entity_id"], tx["label"], event_time=t, features=tx["features"])
        stats = Worker(store, name, batch_size=100, **FAST).run(until_idle=True)
        assert stats["learned"] == len(sent)
        weights[case] = store.read_model(name).params["weights"]
    assert np.count_nonzero(weights["fresh only"]) > 0
    np.testing.assert_allclose(weights["windowed"], weights["fresh only"], rtol=1e-5, atol=1e-7)
