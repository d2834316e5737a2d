"""Erasure of one entity's data (issue 17): its events and prediction-log rows go, every other event stays
and is learned exactly once, also while a worker fleet runs; the erasure is recorded without the id."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from cstore import Client, FeedbackWriter, send_feedback
from cstore.errors import InvalidFeedback, KeyUnavailable, UnknownModel, ValidationError
from cstore.feedback import context, decode_stored, entity_hash, erase_entity, erasures, open_segment
from cstore.ops import fleet_status
from cstore.training import Worker, create_learner
from feedback_helpers import KEY1, KEY2, all_segments, keyed_store, learning_tally, run_cli, wait_for

FAST = {"lease_ttl_s": 6, "max_wait_ms": 50, "poll_ms": 20}


def stored_events(store, name: str) -> list:
    fcfg = context(store).layout(name)[1]
    out = []
    for s in all_segments(store.backend.session, fcfg):
        events, _ = decode_stored(open_segment(store.chunks.codec, fcfg.model_id, s["part"], s["lane"], s["bucket"],
                                               s["seg_id"], s["payload"]))
        out += events
    return out


def review_entities(session, model_id) -> list[str]:
    return [r["entity_id"] for r in session.execute("SELECT model_id, entity_id FROM prediction_review")
            if r["model_id"] == model_id]


@pytest.fixture
def sealed(base_config, monkeypatch):
    monkeypatch.setenv("CSTORE_ENCRYPTION_KEY", KEY1)
    s = keyed_store(base_config, KEY1)
    yield s
    s.close()


def test_erase_removes_the_entity_from_shared_segments_and_the_log_and_records_it(sealed, base_config, session,
                                                                                   unique_name):
    name = unique_name
    create_learner(sealed, name, n_features=2**10, chunk_size=256, partitions=2, drift="none")
    client = Client(config=dataclasses.replace(base_config, refresh_interval_s=0.1))
    try:
        model = client.model(name)
        for e in ["victim", "alice", "bob", "victim"]:
            model.score(e, {"amount": 3.0, "who": e})
        assert client.flush_log()
    finally:
        client.close()
    with FeedbackWriter(sealed, name) as w:  # the victim's events share segments with others'
        for i in range(3):
            for e in ["alice", "victim", "bob", f"other-{i}"]:
                w.send(e, 1, features={"amount": float(i)})
            w.flush()
        w.send_batch(["carol", "victim", "dave"], [0, 1, 0], features={"amount": [1.0, 2.0, 3.0]})  # columns
    send_feedback(sealed, name, "victim", 1, critical=True, features={"amount": 9.0})
    before = stored_events(sealed, name)
    info = sealed.model_info(name)
    assert sum(1 for ev in before if ev.entity_id == "victim") == 5 and "victim" in review_entities(session,
                                                                                                   info.model_id)
    report = erase_entity(sealed, name, "victim", reason="GDPR art. 17 request T-1", requested_by="dpo@example")
    assert (report.events, report.predictions) == (5, 2) and report.segments_rewritten >= 4
    after = stored_events(sealed, name)
    assert [ev for ev in after if ev.entity_id == "victim"] == []
    assert sorted(after) == sorted(ev for ev in before if ev.entity_id != "victim")  # the others untouched
    assert session.execute("SELECT * FROM prediction_log WHERE model_id = %s AND entity_id = 'victim'",
                           (info.model_id,)).one() is None
    assert "victim" not in review_entities(session, info.model_id) and "alice" in review_entities(session,
                                                                                                 info.model_id)
    [rec] = erasures(sealed, name)  # in the audit trail
    assert rec["details"]["entity_hash"] == entity_hash(info.model_id, "victim")
    assert (rec["details"]["events"], rec["details"]["predictions"], rec["actor"]) == (5, 2, "dpo@example")
    raw = [json.dumps(dict(r), default=str) for r in session.execute("SELECT * FROM audit_log WHERE model = %s",
                                                                    (name,))]
    assert raw and not any("victim" in r for r in raw)  # the record names the entity by hash only
    # the rest is still learned; the CLI erases the next entity and reports it
    stats = Worker(sealed, name, batch_size=100, **FAST).run(until_idle=True)
    assert (stats["learned"], stats["poisoned"]) == (len(after), 0)
    env = {"CSTORE_ENCRYPTION_KEY": KEY1}
    res = run_cli(base_config, "feedback", "erase", "--model", name, "--entity", "alice", "--reason", "T-2", "--json",
                  env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["events"], out["predictions"], out["weights_unlearned"]) == (3, 1, False)
    again = run_cli(base_config, "feedback", "erase", "--model", name, "--entity", "alice", "--reason", "T-2",
                    env=env)
    assert again.returncode == 1 and "nothing to erase" in again.stderr and "Traceback" not in again.stderr
    listed = json.loads(run_cli(base_config, "feedback", "erasures", "--model", name, "--json", env=env).stdout)
    assert [r["reason"] for r in listed] == ["T-2", "GDPR art. 17 request T-1"]


@pytest.mark.parametrize("entity, reason, error, message", [
    ("", "r", InvalidFeedback, "1-"),
    (None, "r", InvalidFeedback, "string or an integer"),
    (True, "r", InvalidFeedback, "not a bool"),
    (2**70, "r", InvalidFeedback, "64 bits"),
    ("x" * 5000, "r", InvalidFeedback, "characters"),
    (3.5, "r", InvalidFeedback, "string or an integer"),
    ("never-seen", "r", ValidationError, "nothing to erase"),
    ("alice", "", ValidationError, "reason"),
    ("alice", "   ", ValidationError, "reason"),
    ("alice", None, ValidationError, "reason"),
    ("alice", "r" * 1001, ValidationError, "reason"),
])
def test_bad_erasure_requests_are_refused_and_change_nothing(store, session, unique_name, entity, reason, error,
                                                             message):
    create_learner(store, unique_name, n_features=2**8, chunk_size=128, partitions=1, drift="none")
    send_feedback(store, unique_name, "alice", 1, features={"a": 1.0})
    before = stored_events(store, unique_name)
    with pytest.raises(error, match=message):
        erase_entity(store, unique_name, entity, reason=reason)
    assert stored_events(store, unique_name) == before
    assert erasures(store, unique_name) == []  # nothing recorded either


def test_erasing_in_an_unknown_model_is_refused(store):
    with pytest.raises(UnknownModel, match="unknown model"):
        erase_entity(store, "no_such_model_t17", "alice", reason="r")


def test_erasure_under_a_running_fleet_loses_and_doubles_nothing(store, base_config, unique_name):
    name = unique_name
    create_learner(store, name, n_features=2**10, chunk_size=256, partitions=4, drift="none")
    workers = [Worker(store, name, batch_size=200, **FAST) for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    sent = {"victim": 0, "others": 0}
    try:
        with FeedbackWriter(store, name) as w:
            for rnd in range(30):  # rounds of 20 events, the victim in the first half of them
                for i in range(20):
                    victim = rnd < 15 and i % 5 == 0
                    w.send("victim" if victim else f"e-{rnd}-{i}", i % 2, features={"amount": float(i)})
                    sent["victim" if victim else "others"] += 1
                w.flush()
                if rnd == 15:  # erase while the workers learn and the producer goes on
                    report = erase_entity(store, name, "victim", reason="under load")
                time.sleep(0.02)
        wait_for(lambda: (s := fleet_status(store, name))["lag_events"] == 0 and s, 60, "lag 0")
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
    assert [ev for ev in stored_events(store, name) if ev.entity_id == "victim"] == []
    missing, dups, learned = learning_tally(store, name)
    assert (missing, dups) == (0, 0)  # every remaining segment learned once, none twice
    # every other event learned; of the victim's, those learned before the erasure (never unlearned)
    assert sent["others"] <= learned <= sent["others"] + sent["victim"]
    assert report.events == sent["victim"]  # learned or not, every stored victim event is gone


@pytest.mark.parametrize("keys", [None, KEY2])
def test_erasure_without_the_key_refuses_before_writing_anything(sealed, base_config, unique_name, keys):
    create_learner(sealed, unique_name, n_features=2**8, chunk_size=128, partitions=1, drift="none")
    send_feedback(sealed, unique_name, "alice", 1, features={"a": 1.0})
    before = stored_events(sealed, unique_name)
    other = keyed_store(base_config, keys)
    try:
        with pytest.raises(KeyUnavailable, match="feedback segment is"):
            erase_entity(other, unique_name, "alice", reason="no key")
    finally:
        other.close()
    assert stored_events(sealed, unique_name) == before and erasures(sealed, unique_name) == []
