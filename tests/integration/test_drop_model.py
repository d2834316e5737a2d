"""drop_model leaves nothing of the model behind, in any table of the keyspace (issue 17).

The tables are enumerated from ``system_schema``, so a table added later is counted too: one keyed by
``model_id`` is searched for the model's rows, and one without that column must be declared here as
not owned by any model, or the test fails and says which table to look at.
"""
from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from cstore import Client, FeedbackWriter, send_feedback
from cstore.backend import DropPlan
from cstore.errors import UnknownModel, ValidationError
from cstore.training import Worker, create_learner

FAST = {"lease_ttl_s": 6, "max_wait_ms": 50, "poll_ms": 20}
# Tables with no model_id column: what they hold, and why no model owns rows there.
NOT_MODEL_OWNED = {"schema_migrations": "the applied migration files",
                   "audit_log": "the audit trail, by model name: it outlives the model by design and records the drop"}
# Tables whose rows survive a drop by design: none.
KEPT_BY_DESIGN: dict[str, str] = {}


def model_rows(session, keyspace: str, model_id: uuid.UUID, name: str) -> dict[str, int]:
    """Rows of the model in every table of the keyspace (a full scan each: the test keyspace is small)."""
    columns: dict[str, set[str]] = {}
    for r in session.execute("SELECT table_name, column_name FROM system_schema.columns WHERE keyspace_name = %s",
                             (keyspace,)):
        columns.setdefault(r["table_name"], set()).add(r["column_name"])
    unowned = {t for t, cols in columns.items() if "model_id" not in cols}
    assert unowned == set(NOT_MODEL_OWNED), (
        f"table(s) {sorted(unowned - set(NOT_MODEL_OWNED))} have no model_id: teach drop_model about them "
        f"and declare here how a model's rows are found in them")
    counts = {}
    for table, cols in sorted(columns.items()):
        if table in unowned:
            continue
        key = "name, model_id" if "name" in cols and table == "models" else "model_id"
        rows = session.execute(f"SELECT {key} FROM {keyspace}.{table}")
        counts[table] = sum(1 for r in rows if r["model_id"] == model_id or r.get("name") == name)
    return counts


def test_drop_removes_every_row_the_model_owns_in_every_table(store, base_config, session, unique_name):
    name = unique_name
    create_learner(store, name, n_features=2**10, chunk_size=256, partitions=2, drift="none")
    info = store.model_info(name)
    client = Client(config=dataclasses.replace(base_config, refresh_interval_s=0.1))
    try:
        model = client.model(name)
        for i in range(30):  # scored with logging: prediction_log, prediction_review, prediction_log_stats
            model.score(f"tx-{i}", {"amount": float(i), "country": "FR" if i % 2 else "DE"})
        assert client.flush_log()
        with FeedbackWriter(store, name) as w:  # bulk feedback, some with features, some joined by the log
            for i in range(30):
                w.send(f"tx-{i}", i % 3 == 0, features={"amount": float(i)} if i % 2 else None)
        send_feedback(store, name, "tx-critical", 1, features={"amount": 9.0}, critical=True)
        store.snapshot(name, reason="before the drop test")
        store.governance.set_alias(store.model_info(name), "champion", "head", reason="drop test")
        store.apply_update(name, "bias", np.array([0.25]), lr=0.1)
        stats = Worker(store, name, batch_size=100, **FAST).run(until_idle=True)
        assert stats["events"] >= 30  # the critical event is its lane's (a thread of a running worker)
    finally:
        client.close()  # writes its counters
    store.stats(name)  # flushes this process's stats rows

    before = model_rows(session, store.config.keyspace, info.model_id, name)
    must_have = {"models", "chunks", "chunk_versions", "model_heads", "history", "history_buckets", "snapshots",
                 "snapshot_chunks", "stats", "feedback_config", "feedback_buckets", "feedback_segments",
                 "feedback_consumers", "learner_state", "feedback_batches", "prediction_log", "prediction_review",
                 "prediction_log_stats", "model_aliases", "increment_feed"}
    empty = sorted(t for t in must_have if before.get(t, 0) == 0)
    assert not empty, f"the set-up wrote nothing to {empty}: the test would prove nothing there ({before})"

    with pytest.raises(ValidationError, match="confirm"):
        store.drop_model(name, confirm=name + "x")
    assert model_rows(session, store.config.keyspace, info.model_id, name) == before  # refused: nothing gone

    report = store.drop_model(name, confirm=name)
    after = model_rows(session, store.config.keyspace, info.model_id, name)
    left = {t: n for t, n in after.items() if n and t not in KEPT_BY_DESIGN}
    assert not left, f"rows of the dropped model are left in {left}"
    assert report["dropped"] == [str(info.model_id)] and report["partitions"] >= len(must_have)
    assert all(report["tables"][t] > 0 for t in must_have - {"models"}), report["tables"]
    with pytest.raises(UnknownModel):
        store.model_info(name, refresh=True)


def test_a_drop_cut_short_after_the_models_row_is_finished_by_dropping_again(store, session, unique_name):
    name = unique_name
    create_learner(store, name, n_features=2**8, chunk_size=128, partitions=2, drift="none")
    send_feedback(store, name, "tx-1", 1, features={"amount": 1.0})
    store.snapshot(name, reason="cut short")
    info = store.model_info(name)
    # What a drop has done when its process dies right after the models row went: recorded, row deleted.
    plan = DropPlan(name, info.model_id, info.created_at, info.max_chunks, info.history_bucket_s or 60,
                    info.history_indexed)
    store.backend.purge.begin(plan, datetime.now(UTC), "test")
    assert store.backend.params.drop_model(name, info.model_id).applied
    half = model_rows(session, store.config.keyspace, info.model_id, name)
    assert half["models"] == 0 and half["chunks"] > 0 and half["feedback_segments"] > 0

    report = store.drop_model(name, confirm=name)  # the name is free, the recorded drop is finished
    assert report["dropped"] == [str(info.model_id)]
    assert not any(model_rows(session, store.config.keyspace, info.model_id, name).values())
    assert session.execute("SELECT * FROM model_drops WHERE name = %s", (name,)).one() is None
    with pytest.raises(UnknownModel, match="unknown model"):  # nothing left to finish: the usual error
        store.drop_model(name, confirm=name)
