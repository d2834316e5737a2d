"""Per-event semantics through the system: feedback, workers, chunk commits. The stored model after
learning equals an in-memory learner that took one optimizer step per event, in the order learned."""
from __future__ import annotations

import numpy as np

from cstore import FeedbackWriter
from cstore.feedback import decode_payload
from cstore.learn import AdaGrad, FeatureHasher, FTRLProximal, batch_gradient
from cstore.training import Worker, create_learner
from cstore_dev.fraudsim import FraudStream
from feedback_helpers import all_segments, learned_counts, new_name

FAST = {"lease_ttl_s": 6, "max_wait_ms": 50, "poll_ms": 20}


def _per_event_reference(opt, events, traces, n_features):
    """One step per event with the optimizer's own float32 step, batches in commit order, events in
    the order each batch learned them, at the batch's learning-rate scale."""
    hasher = FeatureHasher(n_features)
    state, bias = opt.init_state(n_features), opt.init_state(1)
    for t in sorted(traces, key=lambda t: t["batch_id"].time):
        for ev in (ev for _, _, seg_id, _ in t["segments"] for ev in events[seg_id]):
            indptr, idx, val = hasher.transform_many([ev.features])
            g = batch_gradient(state["w"], float(bias["w"][0]), indptr, idx, val, np.array([ev.label]), np.ones(1))
            for k, a in opt.apply({k: state[k][g.indices] for k in state}, g.values, t["lr_scale"]).items():
                state[k][g.indices] = a
            bias = opt.apply(bias, np.array([g.bias]), t["lr_scale"])
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
