"""The group's shared drift detection on the real node: two workers' batches interleave on one learner_state row.

Each "worker" is a SharedLearnerState of its own (its own cached row), so their compare-and-sets conflict and
re-apply the batch to the fresher state, as in a fleet. The losses are flat: only the labels move.
"""
from __future__ import annotations

import msgpack
import numpy as np

from cstore.core import uuid_now
from cstore.learn import LabelRateCUSUM
from cstore.training import SharedLearnerState, create_learner, learner_config
from feedback_helpers import new_name

BATCH = 50


def _group(store, name: str) -> list[SharedLearnerState]:
    """Two workers' views of the model's default group (the learner's stored drift settings: the defaults)."""
    info = create_learner(store, name, n_features=2**10, chunk_size=1024, partitions=2)
    drift = learner_config(info).drift
    return [SharedLearnerState(store.backend.fleet, info.model_id, "default", drift, {}, ttl_s=3600) for _ in range(2)]


def _feed(workers: list[SharedLearnerState], labels: np.ndarray, seed: int, *, with_labels: bool = True) -> list[int]:
    """Batches of BATCH labels, handed to the two workers in a shuffled order within rounds of 4; the events
    scored by the group when a batch reported a drift."""
    rng = np.random.default_rng(seed)
    batches = [labels[lo:lo + BATCH] for lo in range(0, labels.size, BATCH)]
    n = len(batches)
    order = [int(i) for lo in range(0, n, 4) for i in rng.permutation(np.arange(lo, min(lo + 4, n)))]
    drifts = []
    for k, i in enumerate(order):
        w = workers[k % 2]
        out = w.apply_batch(np.full(BATCH, 0.5), uuid_now(), f"w{k % 2}", labels=batches[i] if with_labels else None)
        if out.drift:
            drifts.append(int(w.read()["events"]))
    return drifts


def test_two_workers_report_a_change_of_the_label_rate_once_and_stay_quiet_before_it(store):
    workers = _group(store, new_name("labdrift"))
    rng = np.random.default_rng(5)
    labels = np.concatenate([rng.random(6000) < 0.35, rng.random(3000) < 0.6]).astype(float)
    drifts = _feed(workers, labels, seed=5)
    assert len(drifts) == 1 and 6000 < drifts[0] <= 6600, drifts
    row = workers[0].read()
    assert row["drifts"] == 1 and row["events"] == labels.size
    state = msgpack.unpackb(row["state"], raw=False)
    labels_state = LabelRateCUSUM.from_state(state["labels"])
    assert labels_state.n_detections == 1 and 0 < labels_state.n < 3000  # restarted at the change, every label counted
    assert state["quiet_until"] == drifts[0] + 2000


def test_without_labels_the_shared_state_watches_the_loss_only(store):
    workers = _group(store, new_name("labdrift"))
    rng = np.random.default_rng(6)
    labels = np.concatenate([rng.random(3000) < 0.2, rng.random(3000) < 0.7]).astype(float)
    assert _feed(workers, labels, seed=6, with_labels=False) == []
    state = msgpack.unpackb(workers[1].read()["state"], raw=False)
    assert LabelRateCUSUM.from_state(state["labels"]).n == 0
