"""Atomic updates (strong profile): delta entries, group commit, exactly once across chunks.

Everything here reads the rows back from Cassandra: what a small commit stores, that damaged entries
are refused, that contending writers lose nothing and give up never, and that a partial commit can be
finished with its ``update_id`` without applying anything twice.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import multiprocessing as mp
import threading
import time
import uuid

import numpy as np
import pytest

from cstore.backend import connect
from cstore.config import codec_from_env
from cstore.errors import CorruptData, MissingChunk, PartialCommit, ValidationError
from cstore.store import Store
from workloads import chunk_pair_updates, fingerprint, run_chunk_pair_updates

MAX_DELTAS = 32  # entries a chunk row carries at most before a commit folds it (cstore/store/_rows.py)


def _raw(session, model_id, chunk: int, param: str = "w"):
    return session.execute("SELECT version, base_version, deltas, data FROM chunks WHERE model_id=%s AND chunk=%s "
                           "AND param=%s", (model_id, chunk, param)).one()


def test_small_commit_stores_a_delta_entry_and_rows_fold(session, store, unique_name):
    store.create_model(unique_name, {"w": (4096,)}, chunk_size=4096)
    info = store.model_info(unique_name)
    full = bytes(_raw(session, info.model_id, 0)["data"])
    start = store.snapshot(unique_name, reason="replay base")
    store.apply_update(unique_name, "w", [1.0], indices=[7], lr=0.5)
    row = _raw(session, info.model_id, 0)
    assert (row["version"], row["base_version"], sorted(row["deltas"])) == (2, 1, [2])
    assert bytes(row["data"]) == full  # the chunk copy was not rewritten for one float
    assert len(row["deltas"][2]) < 64
    expected = np.zeros(4096, np.float32)
    expected[7] = -0.5
    for i in range(MAX_DELTAS + 8):  # past the entry limit the next commit folds the row into a full copy
        store.apply_update(unique_name, "w", [1.0], indices=[100 + i], lr=1.0)
        expected[100 + i] = -1.0
    row = _raw(session, info.model_id, 0)
    assert row["version"] == MAX_DELTAS + 10
    assert row["base_version"] > 1 and len(row["deltas"] or {}) <= MAX_DELTAS
    assert sorted(row["deltas"] or {}) == list(range(row["base_version"] + 1, row["version"] + 1))
    with Store.from_config(store.config) as fresh:  # another process: nothing known, everything decoded
        np.testing.assert_array_equal(fresh.read_model(unique_name).params["w"], expected)
        np.testing.assert_array_equal(fresh.replay(unique_name, start)["w"], expected)
    store.apply_update(unique_name, "w", np.ones(4096, np.float32), lr=1.0)  # a dense commit writes it whole
    row = _raw(session, info.model_id, 0)
    assert row["base_version"] == row["version"] and not row["deltas"]
    np.testing.assert_array_equal(store.read_model(unique_name).params["w"], expected - 1.0)
    store.drop_model(unique_name, confirm=unique_name)


def test_a_lost_delta_entry_is_refused_and_nothing_written(session, store, base_config, unique_name):
    store.create_model(unique_name, {"w": (2048,)}, chunk_size=1024)
    info = store.model_info(unique_name)
    for i in range(3):
        store.apply_update(unique_name, "w", [1.0], indices=[i], lr=1.0)
    session.execute("UPDATE chunks SET deltas = deltas - {3} WHERE model_id=%s AND chunk=0 AND param='w'",
                    (info.model_id,))
    before = fingerprint(session, store, unique_name)
    with Store.from_config(base_config) as fresh:
        with pytest.raises(CorruptData, match=r"chunk 0.*delta entries \[2, 4\] do not lead from its copy at "
                                              r"version 1 to version 4"):
            fresh.read_model(unique_name)
        with pytest.raises(CorruptData, match="chunk 0"):
            fresh.apply_update(unique_name, "w", [1.0], indices=[5])
        fresh.apply_update(unique_name, "w", [1.0], indices=[1500])  # the healthy chunk still commits
    after = fingerprint(session, store, unique_name)
    assert [c for c in after[0] if c[0] == 0] == [c for c in before[0] if c[0] == 0]
    assert after[2] == before[2] + 1
    store.drop_model(unique_name, confirm=unique_name)


def test_encrypted_delta_entries_cannot_be_moved(session, base_config, unique_name):
    key = "k1:" + base64.b64encode(b"7" * 32).decode()
    with Store(connect(base_config, keyspace=base_config.keyspace),
               codec=codec_from_env({"CSTORE_ENCRYPTION_KEY": key})) as enc:
        enc.create_model(unique_name, {"w": (1024,)}, chunk_size=1024)
        info = enc.model_info(unique_name)
        enc.apply_update(unique_name, "w", [3.0], indices=[1], lr=1.0)
        enc.apply_update(unique_name, "w", [5.0], indices=[2], lr=1.0)
        deltas = _raw(session, info.model_id, 0)["deltas"]
        assert all(bytes(b).startswith(b"CSE1") for b in deltas.values())
        assert np.float32(-3.0).tobytes() not in bytes(deltas[2])
        session.execute("UPDATE chunks SET deltas = %s WHERE model_id=%s AND chunk=0 AND param='w'",
                        ({2: deltas[3], 3: deltas[2]}, info.model_id))  # swapped: each still well-formed
    with Store(connect(base_config, keyspace=base_config.keyspace),
               codec=codec_from_env({"CSTORE_ENCRYPTION_KEY": key})) as enc:
        with pytest.raises(CorruptData, match="delta entry 2"):
            enc.read_model(unique_name)
        enc.drop_model(unique_name, confirm=unique_name)


def test_partial_commit_is_finished_once_with_its_update_id(session, store, unique_name):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    info = store.model_info(unique_name)
    store.apply_update(unique_name, "w", [1.0], indices=[40], lr=1.0)  # the store now knows chunk 1's row
    saved = session.execute("SELECT * FROM chunks WHERE model_id=%s AND chunk=1", (info.model_id,)).one()
    session.execute("DELETE FROM chunks WHERE model_id=%s AND chunk=1", (info.model_id,))
    # chunk 0 commits; chunk 1's compare-and-set is refused, and read again the row is missing
    with pytest.raises(PartialCommit) as exc:
        store.apply_update(unique_name, "w", [1.0, 2.0], indices=[3, 40], lr=1.0)
    err = exc.value
    assert err.result.chunks == [0] and err.failed == [1] and isinstance(err.cause, MissingChunk)
    update_id = err.update_id
    assert f"update_id={update_id}" in str(err)
    session.execute(f"INSERT INTO chunks ({', '.join(saved)}) VALUES ({', '.join(['%s'] * len(saved))})",
                    tuple(saved.values()))  # the operator restores the row
    again = store.apply_update(unique_name, "w", [1.0, 2.0], indices=[3, 40], lr=1.0, update_id=update_id)
    assert again.chunks == [1]  # only the missing chunk
    once_more = store.apply_update(unique_name, "w", [1.0, 2.0], indices=[3, 40], lr=1.0, update_id=update_id)
    assert once_more.chunks == []
    w = store.read_model(unique_name).params["w"]
    assert (w[3], w[40]) == (-1.0, -3.0) and np.count_nonzero(w) == 2
    committed = collections.Counter(h.chunk for h in store.history(unique_name))
    assert committed == {0: 1, 1: 2}
    with Store.from_config(store.config) as other:  # the proof is in the database, not in this process
        assert other.apply_update(unique_name, "w", [1.0, 2.0], indices=[3, 40], update_id=update_id).chunks == []
    store.drop_model(unique_name, confirm=unique_name)


def test_an_update_failing_on_one_chunk_commits_none_of_the_others(session, store, unique_name):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    info = store.model_info(unique_name)
    session.execute("DELETE FROM chunks WHERE model_id=%s AND chunk=1", (info.model_id,))
    before = fingerprint(session, store, unique_name)
    with pytest.raises(MissingChunk, match="chunk 1"):
        store.apply_update(unique_name, "w", [1.0, 2.0], indices=[3, 40], lr=1.0)
    assert fingerprint(session, store, unique_name) == before  # chunk 0 was not committed either
    store.drop_model(unique_name, confirm=unique_name)


def test_bad_update_id_is_refused_before_anything_is_written(session, store, base_config, unique_name):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    before = fingerprint(session, store, unique_name)
    for bad in ("not-a-uuid", uuid.uuid4()):
        with pytest.raises(ValidationError, match="update_id must be the time-based UUID"):
            store.apply_update(unique_name, "w", [1.0], indices=[3], update_id=bad)
    with Store.from_config(dataclasses.replace(base_config, profile="eventual")) as blind:
        with pytest.raises(ValidationError, match="update_id needs conditional writes"):
            blind.apply_update(unique_name, "w", [1.0], indices=[3], update_id=uuid.uuid1())
    assert fingerprint(session, store, unique_name) == before
    store.drop_model(unique_name, confirm=unique_name)


def test_threads_of_one_process_are_combined_and_lose_nothing(store, unique_name):
    store.create_model(unique_name, {"w": (256,)}, chunk_size=128)
    start = store.snapshot(unique_name, reason="replay base")
    threads, per = 16, 40
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(per):
                store.apply_update(unique_name, "w", [1.0, 1.0], indices=[(t * 7 + i) % 256, 255 - t], lr=1.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    expected = np.zeros(256, np.float32)
    for t in range(threads):
        for i in range(per):
            expected[(t * 7 + i) % 256] -= 1.0
            expected[255 - t] -= 1.0
    state = store.read_model(unique_name)
    np.testing.assert_array_equal(state.params["w"], expected)
    commits = store.history(unique_name)
    # commits of 16 threads were combined: fewer chunk commits than chunk changes, one history row per version
    assert len(commits) < threads * per * 2
    for k in (0, 1):
        assert sorted(h.new_version for h in commits if h.chunk == k) == \
            list(range(2, state.chunk_versions[("w", k)] + 1))
    np.testing.assert_array_equal(store.replay(unique_name, start)["w"], expected)
    store.drop_model(unique_name, confirm=unique_name)


def test_submitted_updates_are_combined_exact_and_replayable(store, unique_name):
    """One thread keeps 400 updates in flight through ``submit_updates``: each future gives its result,
    the updates share compare-and-sets (fewer chunk commits than updates), and the array, the history
    chain and a replay are exact."""
    store.create_model(unique_name, {"w": (256,)}, chunk_size=128)
    start = store.snapshot(unique_name, reason="replay base")
    futures = [store.submit_updates(unique_name, {"w": ([i % 256], [1.0])}, lr=0.5) for i in range(400)]
    results = [f.result(timeout=60) for f in futures]
    assert all(r.chunks == [(i % 256) // 128] for i, r in enumerate(results))
    expected = np.zeros(256, np.float32)
    for i in range(400):
        expected[i % 256] -= 0.5
    state = store.read_model(unique_name)
    np.testing.assert_array_equal(state.params["w"], expected)
    commits = store.history(unique_name)
    assert len(commits) < 400
    for k in (0, 1):
        assert sorted(h.new_version for h in commits if h.chunk == k) == \
            list(range(2, state.chunk_versions[("w", k)] + 1))
    np.testing.assert_array_equal(store.replay(unique_name, start)["w"], expected)
    store.drop_model(unique_name, confirm=unique_name)


def test_a_bad_submitted_update_raises_at_once_and_writes_nothing(session, store, base_config, unique_name):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    before = fingerprint(session, store, unique_name)
    bad = [({"w": ([64], [1.0])}, "out of range"), ({"w": ([3], [float("nan")])}, "NaN"),
           ({"v": ([3], [1.0])}, "'v'"), ({}, "non-empty mapping")]
    for updates, match in bad:
        with pytest.raises(ValidationError, match=match):
            store.submit_updates(unique_name, updates)
    with pytest.raises(ValidationError, match="learning rate"):
        store.submit_updates(unique_name, {"w": ([3], [1.0])}, lr=-1.0)
    with Store.from_config(dataclasses.replace(base_config, profile="eventual")) as blind:  # commits in the call
        with pytest.raises(ValidationError, match="out of range"):
            blind.submit_updates(unique_name, {"w": ([99], [1.0])})
    assert fingerprint(session, store, unique_name) == before
    store.drop_model(unique_name, confirm=unique_name)


def test_a_full_commit_queue_makes_submit_wait_then_refuse_and_write_nothing(monkeypatch, base_config, unique_name):
    """Submitting faster than the cluster commits waits for room in the queue (bounded: every round
    scans it); if none frees within commit_timeout_s the call raises and its update is not written.
    The cluster is made slow by delaying each round of the real committer by 1.5 s."""
    import cstore.store._committer as committer_module
    from cstore.errors import TransientError
    monkeypatch.setattr(committer_module, "MAX_PENDING", 2)
    with Store.from_config(dataclasses.replace(base_config, commit_timeout_s=1.0)) as slow:
        slow.create_model(unique_name, {"w": (64,)}, chunk_size=32)
        committer = slow._committer
        real = committer._commit_round
        monkeypatch.setattr(committer, "_commit_round", lambda work: (time.sleep(1.5), real(work))[1])
        # A round that outlasts commit_timeout_s still decides its updates: the idle committer thread
        # must not fail one while that round may commit it (the caller would retry a committed update).
        t0 = time.monotonic()
        assert slow.submit_updates(unique_name, {"w": ([1], [1.0])}).result(timeout=30).chunks == [0]
        assert time.monotonic() - t0 >= 1.4
        first = [slow.submit_updates(unique_name, {"w": ([i], [1.0])}) for i in (1, 40)]
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="commit queue of this process stayed full"):
            slow.submit_updates(unique_name, {"w": ([7], [1.0])})
        assert time.monotonic() - t0 >= 0.9  # it waited for room before refusing
        for f in first:
            f.result(timeout=30)
        expected = np.zeros(64, np.float32)
        expected[[1, 40]] = [-2.0, -1.0]
        np.testing.assert_array_equal(slow.read_model(unique_name).params["w"], expected)  # not index 7
        slow.drop_model(unique_name, confirm=unique_name)


@pytest.mark.slow
def test_eight_processes_over_two_shared_chunks_never_give_up(base_config, store, unique_name):
    """The issue's run: 8 processes x 100 updates of 8 coordinates over 2 shared chunks."""
    store.create_model(unique_name, {"w": (256,)}, chunk_size=128)
    cfg = {"contact_points": ",".join(base_config.contact_points), "port": base_config.port,
           "keyspace": base_config.keyspace, "profile": "strong"}
    with mp.get_context("spawn").Pool(8) as pool:
        outcomes = pool.starmap(run_chunk_pair_updates, [(cfg, unique_name, w, 100) for w in range(8)])
    assert [o["errors"] for o in outcomes] == [[]] * 8
    expected = np.zeros(256, np.float32)
    for w in range(8):
        for idx, vals in chunk_pair_updates(w, 100):
            expected[idx] -= vals
    state = store.read_model(unique_name)
    np.testing.assert_array_equal(state.params["w"], expected)
    for k in (0, 1):
        versions = sorted(h.new_version for h in store.history(unique_name) if h.chunk == k)
        assert versions == list(range(2, state.chunk_versions[("w", k)] + 1))
    print(f"\n8x100 updates over 2 chunks: {sum(o['conflicts'] for o in outcomes)} conflicts, 0 give-ups, exact")
    assert sum(o["conflicts"] for o in outcomes) > 0, "the processes must contend, or this proves nothing"
    store.drop_model(unique_name, confirm=unique_name)


def _counting_reads(monkeypatch, engine):
    """Count the whole-chunk reads ``engine`` makes (the database is real; only the calls are counted)."""
    whole = collections.Counter()
    read = engine.read

    def counted(info, chunks, params=None):
        whole["chunks"] += len(list(chunks))
        return read(info, chunks, params)
    monkeypatch.setattr(engine, "read", counted)
    return whole


@pytest.mark.parametrize("fresh", [False, True])
def test_a_learner_catches_up_another_writers_small_commits_from_their_entries(monkeypatch, base_config, store,
                                                                              unique_name, fresh):
    """A second writer (another worker of the model) moves chunks with small commits: a learner that
    knows those chunks brings them up to date from the delta entries alone, bit for bit what a whole
    read gives; a commit that rewrites a chunk whole makes it read that chunk whole again; a read of a
    few chunks (fewer than CATCH_UP_FROM) is whole, one round trip."""
    from cstore.store import CATCH_UP_FROM, Committer
    n = CATCH_UP_FROM
    store.create_model(unique_name, {"w": (1024 * n,), "g": (1024 * n,)}, chunk_size=1024)
    info = store.model_info(unique_name)
    everything = list(range(n))
    with Store.from_config(base_config) as mine:
        committer = Committer(mine.chunks, mine.backend.params, timeout_s=10.0)
        try:
            whole = _counting_reads(monkeypatch, mine.chunks)
            committer.rows(info, everything)  # first sight: read whole
            assert whole["chunks"] == n
            for i in range(5):  # the other writer: a few coordinates of every chunk, both parameters
                idx = [1024 * k + 7 * i for k in everything]
                store.apply_updates(unique_name, {"w": (idx, np.full(n, 0.25 + i, "float32")),
                                                  "g": (idx[::2], np.full(len(idx[::2]), -1.5 * i, "float32"))},
                                    lr=1.0)
            store.chunks.announcer.flush()  # without ``fresh`` the learner asks the index, which trails commits
            rows = committer.rows(info, everything, fresh=fresh)
            assert whole["chunks"] == n, "the moved chunks were read whole, not caught up"
            truth = store.chunks.read(info, everything)
            for k in everything:
                for p in ("w", "g"):
                    assert rows[k][p].version == truth[k][p].version == (6 if p == "w" or k % 2 == 0 else 1)
                    np.testing.assert_array_equal(rows[k][p].data, truth[k][p].data)
                    assert (rows[k][p].deltas, rows[k][p].delta_bytes) == (truth[k][p].deltas, truth[k][p].delta_bytes)
            store.apply_updates(unique_name, {"w": (list(range(1024)), np.ones(1024, "float32")),
                                              "g": ([1030], [1.0])}, lr=1.0)  # chunk 0's w written whole
            store.apply_updates(unique_name, {"w": ([1024 * k + 3 for k in everything], np.ones(n, "float32"))})
            store.chunks.announcer.flush()
            rows = committer.rows(info, everything, fresh=fresh)
            assert whole["chunks"] == n + 1  # chunk 0 was written whole: read whole; the others caught up
            truth = store.chunks.read(info, everything)
            for k in everything:
                for p in ("w", "g"):
                    assert rows[k][p].version == truth[k][p].version
                    np.testing.assert_array_equal(rows[k][p].data, truth[k][p].data)
            store.apply_update(unique_name, "w", [2.0], indices=[5], lr=1.0)
            store.chunks.announcer.flush()
            rows = committer.rows(info, [0], fresh=fresh)
            assert whole["chunks"] == n + 2  # one moved chunk: read whole, not caught up
            np.testing.assert_array_equal(rows[0]["w"].data, store.chunks.read(info, [0])[0]["w"].data)
        finally:
            committer.close()


def test_one_large_chunk_is_caught_up_from_its_entries_not_read_whole(monkeypatch, base_config, store, unique_name):
    """A learner's row of 1 MiB moved by another writer's small commit: even alone (fewer than
    CATCH_UP_FROM chunks) it is caught up from the entry, bit for bit what a whole read gives."""
    from cstore.store import CATCH_UP_BYTES, Committer
    size = CATCH_UP_BYTES // 4  # float32: one row of CATCH_UP_BYTES
    store.create_model(unique_name, {"w": (size,)}, chunk_size=size)
    info = store.model_info(unique_name)
    with Store.from_config(base_config) as mine:
        committer = Committer(mine.chunks, mine.backend.params, timeout_s=10.0)
        try:
            whole = _counting_reads(monkeypatch, mine.chunks)
            committer.rows(info, [0])
            assert whole["chunks"] == 1  # first sight: read whole
            store.apply_update(unique_name, "w", [0.5, 2.0], indices=[3, size - 1], lr=1.0)
            rows = committer.rows(info, [0], fresh=True)
            assert whole["chunks"] == 1, "the 1 MiB chunk was read whole again for two coordinates"
            truth = store.chunks.read(info, [0])[0]["w"]
            assert rows[0]["w"].version == truth.version == 2
            np.testing.assert_array_equal(rows[0]["w"].data, truth.data)
        finally:
            committer.close()


def test_a_lost_delta_entry_is_refused_by_a_learner_catching_up(session, base_config, store, unique_name):
    from cstore.store import CATCH_UP_FROM, Committer
    store.create_model(unique_name, {"w": (1024 * CATCH_UP_FROM,)}, chunk_size=1024)
    info = store.model_info(unique_name)
    everything = list(range(CATCH_UP_FROM))
    with Store.from_config(base_config) as mine:
        committer = Committer(mine.chunks, mine.backend.params, timeout_s=10.0)
        try:
            committer.rows(info, everything)  # known at version 1
            for i in range(3):
                store.apply_update(unique_name, "w", [1.0], indices=[i], lr=1.0)
            session.execute("UPDATE chunks SET deltas = deltas - {3} WHERE model_id=%s AND chunk=0 AND param='w'",
                            (info.model_id,))
            with pytest.raises(CorruptData,
                               match=r"chunk 0.*delta entries \[2, 4\] do not lead from version 1 to version 4"):
                committer.rows(info, everything, fresh=True)
        finally:
            committer.close()


def test_a_refused_commit_catches_its_chunks_up_instead_of_reading_them_whole(monkeypatch, base_config, store,
                                                                              unique_name):
    """Another writer's small commits land between this process's last commit and its next one: every
    compare-and-set is refused, and the retry brings the known rows up from the winner's delta entries
    (no chunk read whole), then commits on top of them: both writers' changes are in the stored array."""
    from cstore.store import CATCH_UP_FROM, Committer
    n = CATCH_UP_FROM
    store.create_model(unique_name, {"w": (1024 * n,)}, chunk_size=1024)
    every = list(range(n))
    with Store.from_config(base_config) as mine:
        mine._committer.close()  # an urgent committer retries a refused chunk at once: one retry round, not
        mine._committer = Committer(mine.chunks, mine.backend.params, timeout_s=10.0, urgent=True)  # jittered ones
        first = mine.apply_updates(unique_name, {"w": ([1024 * k for k in every], np.ones(n, "float32"))})
        assert first.versions == {("w", k): 2 for k in every}
        store.apply_updates(unique_name, {"w": ([1024 * k + 1 for k in every], np.full(n, 2.0, "float32"))})
        whole = _counting_reads(monkeypatch, mine.chunks)
        second = mine.apply_updates(unique_name, {"w": ([1024 * k + 2 for k in every], np.full(n, 3.0, "float32"))})
        assert sum(c.conflicts for c in second.commits) == n, "every chunk must have been refused once"
        assert whole["chunks"] == 0, "a refused chunk was read whole instead of caught up from its entries"
        assert second.versions == {("w", k): 4 for k in every}
    stored = store.read_model(unique_name).params["w"].reshape(n, 1024)
    sign = float(stored[0, 0])  # the update's sign convention (w += or -= lr * value), from the first write
    assert abs(sign) == 1.0
    np.testing.assert_array_equal(stored[:, :3], np.tile(np.float32([1.0, 2.0, 3.0]) * sign, (n, 1)))
    assert not stored[:, 3:].any()
