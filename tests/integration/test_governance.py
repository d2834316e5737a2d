"""Governance on the real node: aliases scorers follow, the audit trail, a guard that pins an alias when
a poisoned feedback source degrades the head, and a reviewed promotion afterwards."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import cstore
from cstore import FeedbackWriter
from cstore.errors import GuardFailing, UnknownAlias, UnknownModel, ValidationError
from cstore.learn import FeatureHasher, predict_proba_batch
from cstore.ops import Readiness, WorkerMetrics, WorkerObserver
from cstore.training import Worker, create_learner
from cstore_dev.fraudsim import FraudStream
from feedback_helpers import new_name, run_cli, wait_for

FAST = {"lease_ttl_s": 6, "max_wait_ms": 50, "poll_ms": 20}


def _client(base_config) -> cstore.Client:
    return cstore.Client(contact_points=",".join(base_config.contact_points), port=base_config.port,
                         keyspace=base_config.keyspace)


def _plain_model(store, name: str) -> int:
    """A 4-chunk model; returns snapshot A (weights +1); the head then moves to weights -1 (snapshot B)."""
    store.create_model(name, {"weights": (4096,), "bias": (1,)}, chunk_size=1024)
    store.apply_update(name, "weights", np.ones(4096, np.float32), update_type="direct")
    a = store.snapshot(name, reason="version A")
    store.apply_update(name, "weights", -np.ones(4096, np.float32), update_type="direct")
    return a


def test_alias_pins_follows_and_moves_with_audit(base_config, store):
    name = new_name("gov")
    a = _plain_model(store, name)
    b = store.snapshot(name, reason="version B")
    store.set_alias(name, "champion", a, reason="approved by risk review", actor="alice")
    with _client(base_config) as client:
        champ, head = client.model(f"{name}@champion"), client.model(name)
        assert champ.version == a and champ.status()["pinned"] == a and float(champ._cache.current.weights[5]) == 1.0
        assert head.version == b and float(head._cache.current.weights[5]) == -1.0
        store.set_alias(name, "champion", "head", reason="follow the head", actor="bob")
        assert _wait(lambda: champ.status()["pinned"] is None and champ.version == b)
        store.set_alias(name, "champion", a, reason="back to A", actor="carol")
        assert _wait(lambda: champ.version == a)
        with pytest.raises(UnknownAlias):
            client.model(f"{name}@nobody")
    trail = store.audit(name)
    assert [e["action"] for e in trail[:3]] == ["alias", "alias", "alias"]
    assert trail[0]["from"] == "@champion=head" and trail[0]["to"] == f"@champion={a}" and trail[0]["actor"] == "carol"
    assert {"create", "snapshot"} <= {e["action"] for e in trail}
    res = run_cli(base_config, "model", "audit", name, "--json")
    assert res.returncode == 0, res.stderr
    assert '"reason": "approved by risk review"' in res.stdout
    store.drop_model(name, confirm=name, reason="retired")
    after = store.audit(name)
    assert after[0]["action"] == "drop" and after[0]["reason"] == "retired" and len(after) == len(trail) + 1


BAD_ALIAS_CALLS = [
    ("malformed alias", lambda s, n: s.set_alias(n, "Champ!", "head", reason="r")),
    ("alias named head", lambda s, n: s.set_alias(n, "head", "head", reason="r")),
    ("missing version", lambda s, n: s.set_alias(n, "champion", 999_999, reason="r")),
    ("malformed version", lambda s, n: s.set_alias(n, "champion", "v1", reason="r")),
    ("negative version", lambda s, n: s.set_alias(n, "champion", -3, reason="r")),
    ("no reason", lambda s, n: s.set_alias(n, "champion", "head", reason="  ")),
    ("guard regression out of range", lambda s, n: s.set_alias(n, "champion", "head", reason="r",
                                                               guard={"max_regression": 0})),
    ("guard min_labels too small", lambda s, n: s.set_alias(n, "champion", "head", reason="r",
                                                            guard={"min_labels": 1})),
    ("guard window below min_labels", lambda s, n: s.set_alias(n, "champion", "head", reason="r",
                                                               guard={"min_labels": 500, "window": 100})),
    ("guard unknown setting", lambda s, n: s.set_alias(n, "champion", "head", reason="r", guard={"margin": 1})),
    ("guard unknown kind", lambda s, n: s.set_alias(n, "champion", "head", reason="r", guard={"kinds": ["x"]})),
    ("promote unknown alias", lambda s, n: s.promote(n, "challenger", reason="r")),
    ("unknown model", lambda s, n: s.set_alias(n + "-nope", "champion", "head", reason="r")),
]


@pytest.mark.parametrize("what,call", BAD_ALIAS_CALLS, ids=[b[0] for b in BAD_ALIAS_CALLS])
def test_bad_alias_input_is_refused_and_writes_nothing(store, what, call):
    name = new_name("govbad")
    a = _plain_model(store, name)
    store.set_alias(name, "champion", a, reason="baseline state")
    before_alias, before_audit = store.alias(name, "champion"), store.audit(name)
    before_head = store.head_version(name)
    with pytest.raises((ValidationError, UnknownModel, UnknownAlias)):
        call(store, name)
    assert store.alias(name, "champion") == before_alias  # read back: nothing moved
    assert [a.alias for a in store.aliases(name)] == ["champion"]
    assert store.audit(name) == before_audit and store.head_version(name) == before_head


def test_an_alias_move_never_mixes_two_versions(base_config, store):
    name = new_name("govmix")
    a = _plain_model(store, name)
    b = store.snapshot(name, reason="version B")
    store.set_alias(name, "champion", a, reason="start")
    rows = [{f"f{j}": 1.0 for j in range(i, i + 40)} for i in range(0, 400, 10)]  # features across all chunks
    with _client(base_config) as client:
        champ = client.model(f"{name}@champion")
        hasher = FeatureHasher(4096, 0)
        indptr, idx, val = hasher.transform_many(rows)
        expected = {v: predict_proba_batch(np.full(4096, w, np.float32), 0.0, indptr, idx, val)
                    for v, w in ((a, 1.0), (b, -1.0))}
        seen: dict[int, int] = {a: 0, b: 0}
        mixed: list[np.ndarray] = []
        stop = threading.Event()

        def score() -> None:
            while not stop.is_set():
                p = champ.predict_proba_batch(rows)
                hits = [v for v, e in expected.items() if np.allclose(p, e)]
                if hits:
                    seen[hits[0]] += 1
                else:
                    mixed.append(p)

        threads = [threading.Thread(target=score) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(12):
            store.set_alias(name, "champion", b if i % 2 == 0 else a, reason=f"flip {i}")
            _wait(lambda i=i: champ.version == (b if i % 2 == 0 else a))
        stop.set()
        for t in threads:
            t.join()
    assert not mixed and seen[a] > 0 and seen[b] > 0


def test_poisoned_source_trips_the_guard_and_a_reviewed_promotion_moves_on(base_config, store):
    """Implicit labels from a broken source arrive flipped: the head learns them and gets worse on the
    trusted (explicit) labels; the guard pins @champion to its baseline while the head keeps learning.
    After the source is fixed the head recovers and a reviewed promotion moves @champion forward."""
    name = new_name("govpoison")
    create_learner(store, name, n_features=2**12, chunk_size=4096, partitions=2)
    gen = FraudStream(seed=21)
    sent = [0]

    def send(n: int, *, poisoned: bool) -> None:
        with FeedbackWriter(store, name, max_batch=500, linger_ms=5) as w:
            for i, tx in enumerate(gen.sample(n)):
                if poisoned and i % 4:  # three in four from the broken source, labels flipped
                    w.send(tx["entity_id"], 1.0 - tx["label"], kind="implicit", features=tx["features"])
                else:
                    w.send(tx["entity_id"], tx["label"], kind="explicit", features=tx["features"])
        sent[0] += n

    def learned() -> bool:
        return sum(w.stats["learned"] for w in workers) >= sent[0]

    def metrics() -> dict:
        return store.governance.metrics(store.model_info(name))[0]

    workers = [Worker(store, name, batch_size=500, **FAST) for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    try:
        send(6000, poisoned=False)
        wait_for(learned, 60, "the clean week learned")
        store.set_alias(name, "champion", "head", reason="reviewed after the first week",
                        guard={"max_regression": 0.02, "min_labels": 200, "window": 1000})
        champion = store.alias(name, "champion")
        baseline = champion.baseline
        assert champion.pinned is None and baseline == store.versions(name)[0]["version"]
        lineage = store.versions(name)[0]["lineage"]  # what produced the baseline
        assert lineage["cstore_version"] == cstore.__version__
        assert lineage["learner"]["optimizer"]["name"] == "FTRLProximal"
        group = lineage["groups"]["default"]
        assert sum(c["events"] for c in group["checkpoints"].values()) == 6000
        assert set(group["workers"]) == {w.worker_id for w in workers} and group["events"] == 6000
        wait_for(lambda: all(w.guard.watched for w in workers) or send(500, poisoned=False), 30,
                 "the workers to watch the alias")  # they look every 2 s
        while store.alias(name, "champion").pinned is None and sent[0] < 40_000:
            send(1000, poisoned=True)
            wait_for(learned, 60, "poisoned feedback learned")
        tripped = store.alias(name, "champion")
        assert tripped.pinned == baseline and tripped.guard_state == "tripped"  # pinned to the reviewed version
        assert store.head_version(name) > baseline  # the head kept learning
        guard = next(e for e in store.audit(name) if e["action"] == "guard")
        assert "log loss" in guard["reason"] and guard["to"] == f"@champion={baseline}"
        assert guard["details"]["regression"] > 0.02 and guard["actor"].startswith("worker ")
        with _client(base_config) as client:
            assert client.model(f"{name}@champion").version == baseline
        wait_for(lambda: (m := metrics())["labels"] >= 200 and m["failing"], 30, "failing metrics")
        scrapes = []
        for w in workers:  # what Prometheus sees of each worker
            metrics_ = WorkerMetrics(name, process_metrics=False)
            WorkerObserver(w, metrics_, Readiness()).sample()
            scrapes.append(metrics_.scrape())
        assert all('cstore_guard_failing{alias="champion"' in t for t in scrapes)
        assert all('cstore_guard_log_loss{alias="champion"' in t for t in scrapes)
        assert any(f'cstore_guard_trips_total{{alias="champion",model="{name}"}} 1.0' in t for t in scrapes)
        res = run_cli(base_config, "model", "metrics", name, "--json")
        assert res.returncode == 0 and '"failing": true' in res.stdout, res.stderr
        with pytest.raises(GuardFailing) as refused:
            store.promote(name, "champion", reason="looks fine to me")
        assert refused.value.regression is not None and refused.value.regression > 0.02
        assert store.alias(name, "champion") == tripped  # refused: nothing moved
        held = store.set_alias(name, "champion", baseline, reason="hold at the reviewed version")
        assert held.pinned == baseline and held.rev == tripped.rev + 1  # moving back is never refused

        def recovered() -> bool:  # the source is fixed: clean labels until the head is no worse
            send(1000, poisoned=False)
            return not metrics()["failing"]
        wait_for(recovered, 120, "the head to recover", every=0.5)
        promoted = store.promote(name, "champion", reason="source fixed; reviewed the metrics", actor="risk-team")
        assert promoted.pinned is None and promoted.guard_state == "passing" and promoted.baseline > baseline
        assert store.audit(name)[0]["action"] == "promote" and store.audit(name)[0]["actor"] == "risk-team"
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(timeout=60)


def _wait(predicate, timeout: float = 5.0) -> bool:
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_challenger_learns_the_champions_feedback_with_its_own_settings(base_config, store):
    """Champion and challenger learn every event of the same feedback (the challenger in its own
    consumer group, with a different learning rate), and shadow scoring compares them."""
    champion, challenger = new_name("champ"), new_name("chall")
    create_learner(store, champion, n_features=2**12, chunk_size=4096, partitions=2)
    create_learner(store, challenger, n_features=2**12, chunk_size=4096, alpha=0.05)
    with FeedbackWriter(store, champion, max_batch=500, linger_ms=5) as w:
        for tx in FraudStream(seed=5).sample(4000):
            w.send(tx["entity_id"], tx["label"], kind="explicit", features=tx["features"])
    res = run_cli(base_config, "worker", "--model", champion, "--model", challenger, "--feedback-of", champion,
                  "--until-idle", "--lease-ttl", "6", "--max-wait-ms", "50", "--poll-ms", "20", timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    finals = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    learned = {f["model"]: f["learned"] for f in finals}
    assert learned == {champion: 4000, challenger: 4000}, res.stdout[-2000:]  # each learned every event once
    again = Worker(store, champion, batch_size=1000, **FAST).run(until_idle=True)
    assert again["learned"] == 0  # the challenger did not move the champion's checkpoints
    wa = store.read_model(champion).params["weights"]
    wb = store.read_model(challenger).params["weights"]
    assert np.count_nonzero(wa) > 0 and np.count_nonzero(wb) > 0 and not np.allclose(wa, wb)
    with _client(base_config) as client:
        champ = client.model(champion)
        [shadow] = champ.shadow(challenger)
        txs = FraudStream(seed=6).sample(50)
        answers = [champ.score(tx["entity_id"], tx["features"]) for tx in txs]
        assert answers == [champ.predict_proba(tx["features"]) for tx in txs]  # the shadow changes nothing
        assert any(abs(a - shadow.predict_proba(tx["features"])) > 1e-6 for a, tx in zip(answers, txs))
        st = champ.status()["shadows"][challenger]
        assert st["scored"] == 50 and st["errors"] == 0 and st["mean_abs_diff"] > 0
        assert client.flush_log()
        logged = client.feature_lookup(challenger, [tx["entity_id"] for tx in txs])
        assert len(logged) == 50  # the challenger's predictions are in its own prediction log
        with pytest.raises(ValidationError):
            champ.shadow(champion)


def test_a_guard_with_on_drift_pins_the_alias_when_the_detector_fires(store):
    name = new_name("govdrift")
    create_learner(store, name, n_features=2**10, chunk_size=1024)
    store.set_alias(name, "champion", "head", reason="live", guard={"on_drift": True, "min_labels": 10_000,
                                                                    "window": 10_000})
    store.set_alias(name, "shadowed", "head", reason="live", guard={"min_labels": 10_000, "window": 10_000})
    worker = Worker(store, name, **FAST)
    worker.guard.drift("batch-7")  # what Worker._on_drift calls when the group's detector fires
    champion, other = store.alias(name, "champion"), store.alias(name, "shadowed")
    assert champion.pinned == champion.baseline and champion.guard_state == "tripped"
    assert other.pinned is None and other.guard_state == "passing"  # its rule does not follow drift
    entry = store.audit(name)[0]
    assert entry["action"] == "guard" and "drift detected before batch batch-7" in entry["reason"]
