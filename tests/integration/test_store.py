"""Parameter store on the real node: reads, updates, replay, rollback, history, stats, profiles."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from cstore.errors import ConfigError
from cstore.core import op_time
from cstore.store import Store


@pytest.fixture
def model(store, unique_name):
    store.create_model(unique_name, {"w": (1000,), "b": (1,), "emb": (50, 4)}, chunk_size=256)
    yield unique_name
    store.drop_model(unique_name, confirm=unique_name)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def test_create_read_and_sparse_dense_direct_updates(store, model):
    st = store.read_model(model)
    assert st.params["w"].shape == (1000,) and st.params["emb"].shape == (50, 4)
    assert not st.params["w"].any() and st.version == sum(st.chunk_versions.values())
    r = store.apply_update(model, "w", [1.0, 2.0, 3.0], indices=[0, 300, 999], lr=0.5)
    assert r.chunks == [0, 1, 3] and r.coords == 3
    store.apply_update(model, "w", [1.0, 1.0], indices=[5, 5], lr=1.0)  # duplicates add up
    store.apply_update(model, "b", np.array([7.0]), update_type="direct")
    store.apply_update(model, "emb", np.ones((2, 4)), indices=[1, 49], lr=0.25)
    st = store.read_model(model)
    assert st.params["w"][[0, 300, 999, 5]].tolist() == [-0.5, -1.0, -1.5, -2.0]
    assert st.params["b"].tolist() == [7.0]
    assert st.params["emb"][1].tolist() == [-0.25] * 4 and st.params["emb"][49].tolist() == [-0.25] * 4
    assert st.params["emb"][0].tolist() == [0.0] * 4
    assert store.head_version(model) == st.version
    assert st.chunk_versions[("w", 0)] == 3  # created at 1, two commits


def test_multi_param_update_commits_chunk_atomically(store, model):
    r = store.apply_updates(model, {"w": ([1], [1.0]), "b": np.array([2.0])}, lr=1.0)
    assert r.chunks == [0]
    assert r.commits[0].new_versions == {"w": 2, "b": 2}  # one commit, both parameters
    hist = store.history(model)
    assert {h.param for h in hist} == {"w", "b"} and len({h.op_id for h in hist}) == 1


def test_replay_from_snapshot_is_bit_exact(store, model):
    rng = np.random.default_rng(3)
    store.apply_update(model, "w", rng.normal(size=1000), lr=0.1)
    snap = store.snapshot(model, reason="replay test base")
    for _ in range(10):
        idx = rng.choice(1000, 20, replace=False)
        store.apply_update(model, "w", rng.normal(size=20), indices=idx, lr=float(rng.uniform(0.01, 1)))
    store.apply_update(model, "w", rng.normal(size=1000), lr=0.3)
    store.apply_updates(model, {"b": np.array([0.123]), "emb": ([3], rng.normal(size=(1, 4)))}, lr=0.7)
    store.apply_update(model, "b", [3.3], update_type="direct")
    current = store.read_model(model)
    replayed = store.replay(model, snap)
    for p in current.params:
        np.testing.assert_array_equal(bits(replayed[p]), bits(current.params[p]))
    assert not np.array_equal(store._snapshots.load(store.model_info(model), snap)[0]["w"].data,
                              current.params["w"][:256])  # the replay really had work to do


def test_rollback_restores_snapshot_as_new_head(store, model):
    store.apply_update(model, "w", [5.0], indices=[10])
    snap = store.snapshot(model, reason="good model")
    before = store.read_model(model)
    store.apply_update(model, "w", np.full(1000, 3.0))
    store.apply_update(model, "b", [9.0], update_type="direct")
    head_before_rollback = store.head_version(model)
    new_head = store.rollback(model, snap, reason="bad deploy")
    after = store.read_model(model)
    assert new_head > head_before_rollback and after.version == new_head
    for p in before.params:
        np.testing.assert_array_equal(after.params[p], before.params[p])
    rollbacks = [h for h in store.history(model) if h.update_type == "rollback"]
    assert rollbacks and all(h.metadata["to_version"] == snap for h in rollbacks)
    assert {(h.param, h.chunk) for h in rollbacks} == set(before.chunk_versions)
    versions = store.versions(model)
    assert versions[0]["version"] == snap and versions[0]["reason"] == "good model"
    assert store.snapshot(model, reason="again") > snap


def test_history_filters_and_stats(store, model):
    store.apply_update(model, "w", [1.0], indices=[1], lr=0.1, source="batch", metadata={"batch": 1})
    store.apply_update(model, "b", [1.0], lr=0.3)
    only_b = store.history(model, param="b")
    assert [h.param for h in only_b] == ["b"] and only_b[0].learning_rate == 0.3
    w_rows = store.history(model, param="w")
    assert w_rows[0].source == "batch" and w_rows[0].metadata == {"batch": 1}
    assert w_rows[0].old_version == 1 and w_rows[0].new_version == 2
    assert store.history(model, until=w_rows[0].time.timestamp() - 60) == []
    stats = store.stats(model)
    assert sum(b["updates"] for b in stats) == 2
    total_lr = [b for b in stats if b["updates"]]
    assert pytest.approx(sum(b["lr_mean"] * b["updates"] for b in total_lr)) == 0.4
    assert sum(b["bytes_written"] for b in stats) > 0


def test_eventual_profile_blind_writes_still_update(base_config, unique_name):
    s = Store.from_config(dataclasses.replace(base_config, profile="eventual"))
    try:
        assert not s.profile.lwt
        s.create_model(unique_name, {"w": (10,)}, chunk_size=16)
        s.apply_update(unique_name, "w", [1.0], indices=[2])
        assert s.read_model(unique_name).params["w"][2] == -1.0
        s.drop_model(unique_name, confirm=unique_name)
    finally:
        s.close()


def test_custom_profile_and_invalid_profile(base_config, unique_name):
    cfg = dataclasses.replace(base_config, profile="fast_reads",
                              profiles={"fast_reads": {"base": "strong", "read_model": "ONE"}})
    with Store.from_config(cfg) as s:
        assert s.profile.levels["read_model"] == "ONE" and s.profile.lwt
    with pytest.raises(ConfigError, match="unknown consistency profile 'nope'"):
        Store.from_config(dataclasses.replace(base_config, profile="nope"))


def test_a_model_keeps_its_history_bucket_when_the_configuration_changes(base_config, session, unique_name):
    """History partitions follow the bucket size the model was created with, not today's setting;
    a model row without one (created before migration 004) uses the configuration."""
    small = Store.from_config(dataclasses.replace(base_config, history_bucket_s=60))
    large = Store.from_config(dataclasses.replace(base_config, history_bucket_s=7200))
    try:
        small.create_model(unique_name, {"w": (16,)}, chunk_size=16)
        assert small.model_info(unique_name).history_bucket_s == 60
        small.apply_update(unique_name, "w", [1.0], indices=[1], lr=0.5)
        large.apply_update(unique_name, "w", [2.0], indices=[2], lr=0.5)  # another process, other config
        info = large.model_info(unique_name)
        assert info.history_bucket_s == 60 and info.to_dict()["history_bucket_s"] == 60
        minute = int(time.time()) // 60
        stored = [(r["bucket"], r["op_id"]) for b in range(minute - 2, minute + 2) for r in session.execute(
            "SELECT bucket, op_id FROM history WHERE model_id = %s AND bucket = %s", (info.model_id, b))]
        assert len(stored) == 2 and all(b == int(op_time(op)) // 60 for b, op in stored)
        committed = large.history(unique_name, since=time.time() - 600)
        assert [h.new_version for h in committed] == [2, 3]
        v0 = large.read_model(unique_name).params["w"].copy()
        session.execute("UPDATE models SET history_bucket_s = null WHERE name = %s", (unique_name,))
        legacy = large.model_info(unique_name, refresh=True)
        assert legacy.history_bucket_s is None  # read as a pre-004 model: the configuration decides
        assert large.history(unique_name, since=time.time() - 600) == []  # 7200 s partitions: nothing there
        assert small.model_info(unique_name, refresh=True).history_bucket_s is None
        assert [h.new_version for h in small.history(unique_name, since=time.time() - 600)] == [2, 3]
        assert np.array_equal(small.read_model(unique_name).params["w"], v0)
    finally:
        try:
            small.drop_model(unique_name, confirm=unique_name)
        finally:
            small.close()
            large.close()


def test_history_buckets_are_recorded_and_listed_not_scanned(store, session, unique_name):
    """Models are created with one-minute history partitions (bounded at any commit rate); each bucket a
    writer uses is recorded first, and a history query reads the recorded ones only."""
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    info = store.model_info(unique_name)
    assert info.history_indexed and info.history_bucket_s == store.config.history_bucket_s == 60
    for i in range(3):
        store.apply_update(unique_name, "w", [1.0], indices=[i * 20], lr=1.0)
    hist = store.history(unique_name)
    assert len(hist) == 3
    used = {info.history_bucket_of(h.op_id, 60) for h in hist}
    day = next(iter(used)) * 60 // 86400
    recorded = {r["bucket"] for r in session.execute(
        "SELECT bucket FROM history_buckets WHERE model_id = %s AND day IN (%s, %s)", (info.model_id, day, day + 1))}
    assert used <= recorded and len(recorded) <= len(used) + 1  # one row per bucket written, none invented
    session.execute("DELETE FROM history_buckets WHERE model_id = %s AND day IN (%s, %s)",
                    (info.model_id, day, day + 1))
    assert store.history(unique_name) == []  # the reader lists, it does not scan a week of minutes
    store.drop_model(unique_name, confirm=unique_name)
