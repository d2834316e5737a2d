"""Encryption at rest of feedback, the prediction log and history metadata (issue 17), on the shared node.

The raw bytes are read back with the test's own CQL and searched for every feature name and value
the test sent: none may be there in clear. Without the key, consumers stop with ``KeyUnavailable``
and checkpoint nothing; damaged ciphertext is refused with ``CorruptData``, never decoded to garbage.
"""
from __future__ import annotations

import base64
import dataclasses
import struct
import threading

import msgpack
import pytest

from cstore import Client, FeedbackWriter, KeyUnavailable, send_feedback
from cstore.errors import CorruptData
from cstore.feedback import PredictionLog, context, decode_stored, open_segment
from cstore.training import Worker, create_learner
from feedback_helpers import KEY1, KEY2, all_segments, keyed_store

FAST = {"lease_ttl_s": 6, "max_wait_ms": 50, "poll_ms": 20}
SECRETS = [b"merchant_zq", b"ACME-SECRET-STORE", b"amount_zq", b"card_zq", b"4111-SECRET-PAN", b"analyst_zq",
           b"jane.secret@example.com", struct.pack(">d", 1234.5678)]  # msgpack stores floats big-endian


@pytest.fixture
def sealed(base_config, monkeypatch):
    monkeypatch.setenv("CSTORE_ENCRYPTION_KEY", KEY1)  # the Client reads its keys from the environment
    s = keyed_store(base_config, KEY1)
    yield s
    s.close()


def fill(store, base_config, name: str, n: int = 20) -> None:
    """Scores logged with features, labels without features (joined by the log) and with, history metadata."""
    create_learner(store, name, n_features=2**10, chunk_size=256, partitions=2, drift="none")
    client = Client(config=dataclasses.replace(base_config, refresh_interval_s=0.1))
    try:
        model = client.model(name)
        for i in range(n):
            model.score(f"tx-{i}", {"merchant_zq": "ACME-SECRET-STORE", "amount_zq": 1234.5678})
        assert client.flush_log()
    finally:
        client.close()
    with FeedbackWriter(store, name) as w:
        for i in range(n):
            w.send(f"tx-{i}", i % 2)                                                  # joined through the log
            w.send(f"card-{i}", i % 3 == 0, features={"card_zq": "4111-SECRET-PAN", "amount_zq": 1234.5678})
    store.apply_update(name, "bias", [0.01], lr=0.1, metadata={"analyst_zq": "jane.secret@example.com"})


def raw_rows(store, session, name: str) -> dict[str, list[bytes]]:
    info = store.model_info(name)
    segs = [bytes(s["payload"]) for s in all_segments(session, context(store).layout(name)[1])]
    log = [bytes(r["features"]) for i in range(20) for r in session.execute(
        "SELECT features FROM prediction_log WHERE model_id = %s AND entity_id = %s", (info.model_id, f"tx-{i}"))]
    hist = [(r["metadata"] or "").encode() + bytes(r["delta"] or b"") for h in store.history(name)
            for r in session.execute("SELECT metadata, delta FROM history WHERE model_id = %s AND bucket = %s "
                                     "AND op_id = %s", (info.model_id, info.history_bucket_of(h.op_id, 60), h.op_id))]
    return {"feedback_segments": segs, "prediction_log": log, "history": hist}


def test_feedback_log_and_history_hold_no_feature_in_clear_and_are_learned_through(sealed, base_config, session,
                                                                                   unique_name):
    fill(sealed, base_config, unique_name)
    raw = raw_rows(sealed, session, unique_name)
    assert len(raw["feedback_segments"]) >= 2 and len(raw["prediction_log"]) == 20 and raw["history"]
    for table, blobs in raw.items():
        for blob in blobs:
            leaked = [s for s in SECRETS if s in blob]
            assert not leaked, f"{table} holds {leaked} in clear"
    assert all(b.startswith(b"CSE1\x02k1") for b in raw["feedback_segments"] + raw["prediction_log"])
    assert any(b.startswith(b"cse1:") for b in raw["history"])  # the sealed metadata column
    # Transparent for whoever holds the key: every event learned, every delayed label joined.
    stats = Worker(sealed, unique_name, batch_size=100, **FAST).run(until_idle=True)
    assert (stats["events"], stats["learned"], stats["skipped"], stats["poisoned"]) == (40, 40, 0, 0)
    assert any(h.metadata.get("analyst_zq") == "jane.secret@example.com" for h in sealed.history(unique_name))


def test_without_the_key_consumers_stop_clearly_and_checkpoint_nothing(sealed, base_config, session, unique_name):
    fill(sealed, base_config, unique_name, n=5)
    info = sealed.model_info(unique_name)
    for keys, message in ((None, "encrypted but no encryption key is configured"),
                          (KEY2, "key id 'k1', which is not loaded")):
        other = keyed_store(base_config, keys)
        try:
            with pytest.raises(KeyUnavailable, match=message):
                Worker(other, unique_name, batch_size=100, **FAST).run(until_idle=True)
            with pytest.raises(KeyUnavailable, match="prediction-log row is encrypted"):
                PredictionLog(other).lookup(unique_name, ["tx-1"])
            if keys is None:
                with pytest.raises(KeyUnavailable, match="history (delta|metadata) is encrypted"):
                    other.history(unique_name)
        finally:
            other.close()
        learned = [r for r in session.execute("SELECT events FROM feedback_consumers WHERE model_id = %s "
                                              "ALLOW FILTERING", (info.model_id,)) if r["events"]]
        assert learned == [], "a worker without the key checkpointed past events it could not read"
    stats = Worker(sealed, unique_name, batch_size=100, **FAST).run(until_idle=True)  # with it: all learned
    assert (stats["events"], stats["learned"], stats["poisoned"]) == (10, 10, 0)


def _flip(blob: bytes, at: int = -1) -> bytes:
    b = bytearray(blob)
    b[at] ^= 0x01
    return bytes(b)


SEGMENT_DAMAGE = {
    "bit flipped in the tag": (lambda blob, other: _flip(blob), CorruptData, "failed authentication"),
    "bit flipped in the nonce": (lambda blob, other: _flip(blob, 9), CorruptData, "failed authentication"),
    "truncated": (lambda blob, other: blob[:20], CorruptData, "truncated"),
    "header only": (lambda blob, other: blob[:5], CorruptData, "truncated"),
    "copied from another row": (lambda blob, other: other, CorruptData, "failed authentication"),
    "plain msgpack substituted": (lambda blob, other: msgpack.packb([1]), KeyUnavailable, "not encrypted"),
    "unknown key id": (lambda blob, other: blob[:6] + b"9" + blob[7:], KeyUnavailable, "'k9', which is not loaded"),
    "empty": (lambda blob, other: b"", KeyUnavailable, "not encrypted"),
}


@pytest.mark.parametrize("case", list(SEGMENT_DAMAGE))
def test_a_damaged_segment_is_refused_clearly(sealed, session, unique_name, case):
    create_learner(sealed, unique_name, n_features=2**8, chunk_size=128, partitions=1, drift="none")
    send_feedback(sealed, unique_name, "a", 1, features={"card_zq": "4111-SECRET-PAN"})
    send_feedback(sealed, unique_name, "b", 0, features={"card_zq": "other"})
    fcfg = context(sealed).layout(unique_name)[1]
    first, second = all_segments(session, fcfg)[:2]
    damage, error, message = SEGMENT_DAMAGE[case]
    bad = damage(bytes(first["payload"]), bytes(second["payload"]))
    session.execute("UPDATE feedback_segments SET payload = %s WHERE model_id = %s AND part = %s AND lane = %s AND "
                    "bucket = %s AND seg_id = %s", (bad, fcfg.model_id, first["part"], first["lane"],
                                                    first["bucket"], first["seg_id"]))
    with pytest.raises(error, match=message):
        decode_stored(open_segment(sealed.chunks.codec, fcfg.model_id, first["part"], first["lane"], first["bucket"],
                                   first["seg_id"], bad))
    head = sealed.head_version(unique_name)
    if error is KeyUnavailable:  # a setup problem: the worker stops, nothing learned or checkpointed
        with pytest.raises(KeyUnavailable):
            Worker(sealed, unique_name, batch_size=100, **FAST).run(until_idle=True)
        assert sealed.head_version(unique_name) == head
    else:  # damaged data: set aside as poison, the intact segment learned, the bad row left as it is
        stats = Worker(sealed, unique_name, batch_size=100, **FAST).run(until_idle=True)
        assert (stats["learned"], stats["poisoned"]) == (1, 1)
    assert bytes(session.execute("SELECT payload FROM feedback_segments WHERE model_id = %s AND part = %s AND "
                                 "lane = %s AND bucket = %s AND seg_id = %s",
                                 (fcfg.model_id, first["part"], first["lane"], first["bucket"],
                                  first["seg_id"])).one()["payload"]) == bad


LOG_DAMAGE = {k: SEGMENT_DAMAGE[k] for k in ("bit flipped in the tag", "bit flipped in the nonce", "truncated",
                                            "copied from another row", "plain msgpack substituted", "unknown key id")}


@pytest.mark.parametrize("case", list(LOG_DAMAGE))
def test_damaged_prediction_log_features_are_refused_and_never_learned(sealed, base_config, session, unique_name,
                                                                        case):
    fill(sealed, base_config, unique_name, n=2)
    info = sealed.model_info(unique_name)
    q = "SELECT scored_at, features FROM prediction_log WHERE model_id = %s AND entity_id = %s"
    mine, other = (session.execute(q, (info.model_id, e)).one() for e in ("tx-0", "tx-1"))
    damage, error, message = LOG_DAMAGE[case]
    bad = damage(bytes(mine["features"]), bytes(other["features"]))
    session.execute("UPDATE prediction_log SET features = %s WHERE model_id = %s AND entity_id = 'tx-0' AND "
                    "scored_at = %s", (bad, info.model_id, mine["scored_at"]))
    plog = PredictionLog(sealed)
    with pytest.raises(error, match=message):
        plog.open(info.model_id, "tx-0", mine["scored_at"], bad)
    if error is KeyUnavailable:
        with pytest.raises(KeyUnavailable):
            plog.lookup(unique_name, ["tx-0", "tx-1"])
    else:  # one damaged row is a miss, the others still join
        assert list(plog.lookup(unique_name, ["tx-0", "tx-1"])) == ["tx-1"]
    assert bytes(session.execute(q, (info.model_id, "tx-0")).one()["features"]) == bad  # read, never rewritten


HISTORY_DAMAGE = {
    "bit flipped": (lambda text, other: text[:-6] + ("A" if text[-6] != "A" else "B") + text[-5:], "authentication"),
    "not base64": (lambda text, other: "cse1:!!not*base64!!", "not base64"),
    "no envelope": (lambda text, other: "cse1:" + base64.b64encode(b'{"a": 1}').decode(), "no encryption envelope"),
    "copied from another row": (lambda text, other: other, "authentication"),
    "truncated": (lambda text, other: text[:24], "truncated|not base64"),
}


@pytest.mark.parametrize("case", list(HISTORY_DAMAGE))
def test_damaged_history_metadata_is_refused_and_nothing_written(sealed, session, unique_name, case):
    sealed.create_model(unique_name, {"w": (16,)}, chunk_size=16)
    for lr in (0.1, 0.2):
        sealed.apply_update(unique_name, "w", [1.0], indices=[int(lr * 10)], lr=lr, metadata={"analyst_zq": str(lr)})
    info = sealed.model_info(unique_name)
    rows = [r for h in sealed.history(unique_name) for r in session.execute(
        "SELECT bucket, op_id, param, metadata FROM history WHERE model_id = %s AND bucket = %s AND op_id = %s",
        (info.model_id, info.history_bucket_of(h.op_id, 60), h.op_id))]
    mine, other = rows[-1], rows[-2]
    damage, message = HISTORY_DAMAGE[case]
    bad = damage(mine["metadata"], other["metadata"])
    session.execute("UPDATE history SET metadata = %s WHERE model_id = %s AND bucket = %s AND op_id = %s AND "
                    "param = %s", (bad, info.model_id, mine["bucket"], mine["op_id"], mine["param"]))
    head = sealed.head_version(unique_name)
    with pytest.raises(CorruptData, match=message):
        sealed.history(unique_name)
    assert sealed.head_version(unique_name) == head
    assert session.execute("SELECT metadata FROM history WHERE model_id = %s AND bucket = %s AND op_id = %s AND "
                           "param = %s", (info.model_id, mine["bucket"], mine["op_id"],
                                          mine["param"])).one()["metadata"] == bad


def test_a_sealed_critical_segment_stops_a_worker_without_the_key(sealed, base_config, unique_name):
    create_learner(sealed, unique_name, n_features=2**8, chunk_size=128, partitions=1, drift="none")
    send_feedback(sealed, unique_name, "cb-1", 1, features={"card_zq": "4111-SECRET-PAN"}, critical=True)
    plain = keyed_store(base_config, None)
    worker = Worker(plain, unique_name, batch_size=100, **FAST)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - what ended it is the assertion below
            outcome.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)  # the critical lane's thread meets it; the bulk loop then ends the worker with it
    if thread.is_alive():
        worker.stop()
        thread.join(30)
    plain.close()
    assert len(outcome) == 1 and isinstance(outcome[0], KeyUnavailable), outcome
    assert "feedback segment is encrypted" in str(outcome[0])
    stats = Worker(sealed, unique_name, batch_size=100, **FAST).run(until_idle=True)
    assert stats["poisoned"] == 0
