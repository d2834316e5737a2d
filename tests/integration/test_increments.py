"""Increments (issue 14): a critical label's change stored without a compare-and-set, folded exactly once.

Everything is read back from Cassandra: the pending entries a row holds, what a commit folds and what it
leaves, that a late copy of a folded entry stays deleted, that the history of the folding commit names
the increment, that a scorer sees an increment from the feed without reading a chunk, and that invalid
amounts write nothing.
"""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from cstore.core import Increment, uuid_now
from cstore.errors import ValidationError
from cstore.scoring import Client
from cstore.scoring._feed import FeedEntry, apply_increments
from cstore.store import Committer, Store
from cstore.store._increments import op_timestamp_us

N, CS = 64, 16  # 4 chunks of 16 weights


@pytest.fixture
def model(store: Store, unique_name: str):
    """A model of 4 chunks of 16 weights and a bias, and a maker of committers (closed with it)."""
    store.create_model(unique_name, {"weights": (N,), "bias": (1,)}, chunk_size=CS)
    made: list[Committer] = []

    def committer() -> Committer:
        made.append(Committer(store.chunks, store.backend.params, timeout_s=10))
        return made[-1]
    yield store.model_info(unique_name), committer
    for c in made:
        c.close()
    store.drop_model(unique_name, confirm=unique_name)


def _pending(session, model_id, chunk: int, param: str = "weights") -> dict:
    row = session.execute("SELECT pending FROM chunks WHERE model_id=%s AND chunk=%s AND param=%s",
                          (model_id, chunk, param)).one()
    return dict(row["pending"] or {})


def _amounts(pairs: dict[int, list[tuple[int, float]]], bias: float | None = None) -> dict:
    out: dict = {}
    for k, coords in pairs.items():
        out[k] = {"weights": (np.array([c for c, _ in coords], np.int32), np.array([v for _, v in coords], np.float32))}
    if bias is not None:
        out.setdefault(0, {})["bias"] = (np.zeros(1, np.int32), np.array([bias], np.float32))
    return out


def test_an_increment_is_read_by_everyone_and_folded_once_by_the_next_commit(session, store, unique_name, model):
    info, committer = model
    op = uuid_now()
    committer().increment(info, _amounts({0: [(3, 1.5)], 2: [(1, -2.0)]}, bias=0.25), op_id=op)
    assert list(_pending(session, info.model_id, 0)) == [op] and list(_pending(session, info.model_id, 2)) == [op]
    assert _pending(session, info.model_id, 1) == {}  # untouched chunks get nothing
    assert set(store.chunk_versions(unique_name).values()) == {1}  # no version moved: no compare-and-set was made
    with Store.from_config(store.config) as other:  # another process sees it in a plain read
        st = other.read_model(unique_name)
        w, b = st.params["weights"], st.params["bias"]
        assert (w[3], w[2 * CS + 1], b[0]) == (1.5, -2.0, 0.25)
    # A commit of chunk 0 (another process, which read the row) folds the increment into its values.
    store.apply_update(unique_name, "weights", [1.0], indices=[5], lr=1.0)
    assert _pending(session, info.model_id, 0) == {}
    assert list(_pending(session, info.model_id, 0, "bias")) == [op]  # the update wrote weights only
    w = store.read_model(unique_name).params["weights"]
    assert (w[3], w[5], w[2 * CS + 1]) == (1.5, -1.0, -2.0)
    folding = [h for h in store.history(unique_name) if h.chunk == 0 and h.param == "weights" and h.new_version == 2]
    assert len(folding) == 1 and folding[0].metadata["increments"] == [str(op)]


def test_an_increment_that_lands_after_a_commit_read_stays_pending_on_top(session, store, unique_name, model):
    info, committer = model
    a, b = committer(), committer()
    from cstore.core import CommitMeta
    a.rows(info, [0])  # A knows chunk 0 as it is now
    op = uuid_now()
    b.increment(info, _amounts({0: [(4, 3.0)]}), op_id=op)

    def step(chunk, rows):  # A's update, computed on the row it knows (without the increment)
        new = rows["weights"].data.copy()
        new[4] -= 2.0
        return {"weights": (new, np.array([4], np.int32))}
    a.submit(info, [0], step, CommitMeta("gradient", 1.0, "manual", "{}"), lr=1.0).result()
    assert list(_pending(session, info.model_id, 0)) == [op]  # not folded: A did not read it
    assert store.read_model(unique_name).params["weights"][4] == 1.0  # -2 (the update), then +3 on top
    store.apply_update(unique_name, "weights", [1.0], indices=[4], lr=1.0)  # a commit that read it folds it
    assert _pending(session, info.model_id, 0) == {}
    assert store.read_model(unique_name).params["weights"][4] == 0.0


def test_a_late_copy_of_a_folded_increment_stays_deleted(session, store, unique_name, model):
    info, committer = model
    c, op = committer(), uuid_now()
    c.increment(info, _amounts({1: [(2, 5.0)]}), op_id=op)
    blob = _pending(session, info.model_id, 1)[op]
    c.fold(info, [1]).result()
    assert _pending(session, info.model_id, 1) == {}
    # The same write again (a retried timeout, a hint delivered late): same op id, same timestamp.
    rewrite = {1: [(op, op_timestamp_us(op), "weights", blob)]}
    outcomes, _ = store.backend.params.write_increments(info.model_id, rewrite)
    assert outcomes == {1: None}
    assert _pending(session, info.model_id, 1) == {}
    assert store.read_model(unique_name).params["weights"][CS + 2] == 5.0  # counted once


def test_invalid_amounts_are_refused_and_nothing_is_written(session, store, unique_name, model):
    info, committer = model
    c = committer()
    bad = [{0: {"weights": (np.array([CS], np.int32), np.array([1.0], np.float32))}},       # outside the chunk
           {0: {"nope": (np.array([0], np.int32), np.array([1.0], np.float32))}},           # no such parameter
           {9: {"weights": (np.array([0], np.int32), np.array([1.0], np.float32))}},        # no such chunk
           {0: {"weights": (np.array([0], np.int32), np.array([np.nan], np.float32))}},     # not finite
           {0: {"weights": (np.array([0, 1], np.int32), np.array([1.0], np.float32))}},     # shapes differ
           {0: {"weights": (np.array([1], np.int32), np.array([1.0], np.float32))},         # one good chunk and
            1: {"weights": (np.array([-1], np.int32), np.array([1.0], np.float32))}}]       # one bad: neither
    for amounts in bad:
        with pytest.raises(ValidationError):
            c.increment(info, amounts)
    assert all(_pending(session, info.model_id, k) == {} for k in range(4))
    assert _pending(session, info.model_id, 0, "bias") == {}
    assert session.execute("SELECT count(*) FROM chunks WHERE model_id=%s AND chunk=9 ALLOW FILTERING",
                           (info.model_id,)).one()["count"] == 0  # no row was made for the chunk that is not
    assert not store.read_model(unique_name).params["weights"].any()


def test_a_scorer_sees_an_increment_from_the_feed_without_reading_a_chunk(store, base_config, unique_name, model):
    info, committer = model
    c = committer()
    with Client(config=base_config) as client:
        handle = client.model(unique_name)
        handle.refresh()
        before = handle.status()
        hasher = handle._cache.current.hasher  # a feature whose weight lives in chunk 1
        name = next(f"f{i}" for i in range(1000) if int(hasher.transform_one({f"f{i}": 1.0})[0][0]) // CS == 1)
        idx, val = hasher.transform_one({name: 1.0})
        c.increment(info, {**_amounts({3: [(7, 0.5)]}, bias=-0.25),
                           1: {"weights": (np.array([int(idx[0]) - CS], np.int32), np.array([2.0], np.float32))}})
        handle.refresh()
        after = handle.status()
        assert handle.contributions({name: 1.0}) == {name: 2.0 * float(val[0])}  # its term in the logit, now
        state = handle._cache.current
        assert state.weights[3 * CS + 7] == 0.5 and state.bias == -0.25
        assert after["chunks_fetched"] == before["chunks_fetched"]  # no chunk was read for it
        assert after["chunks_caught_up"] == before["chunks_caught_up"]
        # A fold moves the chunks; the scorer catches them up and counts the increment once.
        c.fold(info, [0, 1, 3]).result()
        store.chunks.announcer.flush()  # (announcements trail the commit)
        handle.refresh()
        state = handle._cache.current
        assert state.weights[3 * CS + 7] == 0.5 and state.bias == -0.25 and not state.pending


def test_a_feed_entry_older_than_the_held_version_is_settled_from_the_row(store):
    """Pure: an entry that the held version may have folded is not added; its chunk is caught up instead."""
    from cstore.core import ModelInfo
    from cstore.scoring._cache import CachedModel, SharedHasher

    info = ModelInfo("m", uuid.uuid4(), CS, "float32", {"weights": (N,), "bias": (1,)})
    old_op, held_op = uuid_now(), None
    time.sleep(0.001)
    held_op = uuid_now()
    time.sleep(0.001)
    new_op = uuid_now()
    weights = np.zeros(N, np.float32)
    weights.flags.writeable = False
    cur = CachedModel(info, SharedHasher(N, 0), weights, 0.0, {("weights", k): 2 for k in range(4)} | {("bias", 0): 1},
                      9, time.time(), ops={("weights", 1): held_op})
    inc = Increment(np.array([0], np.int32), np.array([1.0], np.float32), b"")
    new, recheck = apply_increments(cur, [FeedEntry("weights", 1, old_op, inc), FeedEntry("weights", 1, new_op, inc)])
    assert recheck == {1}
    assert new.weights[CS] == 1.0 and list(new.pending[("weights", 1)]) == [new_op]  # only the newer entry added
    assert new.bases[("weights", 1)][0] == 0.0  # the row without it is kept, to recompute it exactly
    assert cur.weights[CS] == 0.0  # the cached copy itself is never written: a new one is built


def test_a_snapshot_holds_the_versions_and_a_replay_adds_the_pending_increments_once(store, unique_name, model):
    """A snapshot taken while an increment is pending holds the chunk versions without it; a commit that did
    not read it leaves it pending on top; replaying from the snapshot gives exactly what a read gives."""
    from cstore.core import CommitMeta
    info, committer = model
    a, b = committer(), committer()
    a.rows(info, [0])  # A knows chunk 0 without the increment to come
    b.increment(info, _amounts({0: [(3, 1.5), (9, 2.0)]}))
    version = store.snapshot(unique_name, reason="while an increment is pending")
    assert store.read_snapshot(unique_name, version).params["weights"][9] == 0.0  # the versions' content

    def set_coord_3(chunk, rows):
        new = rows["weights"].data.copy()
        new[3] = 7.0
        return {"weights": (new, np.array([3], np.int32))}
    a.submit(info, [0], set_coord_3, CommitMeta("direct", None, "manual", "{}"), lr=None).result()
    now = store.read_model(unique_name).params["weights"]
    assert (now[3], now[9]) == (8.5, 2.0)  # 7 set, then the increment on top of it; 9: the increment
    np.testing.assert_array_equal(store.replay(unique_name, version)["weights"], now)


def test_adds_from_many_threads_each_count_once_and_are_folded_with_their_history(session, store, unique_name):
    """Store.submit_adds: 8 threads x 50 adds of +1 on their own coordinates and all on one shared one:
    every add is in the model exactly once, whatever was folded when; each has its history row (written
    before it), and the process folds them into versions by itself."""
    import threading
    from cstore.store import _adder
    store.create_model(unique_name, {"w": (4 * CS,)}, chunk_size=CS)
    info = store.model_info(unique_name)
    futures, lock = [], threading.Lock()

    def adds(t: int) -> None:
        for i in range(50):
            coord = (t * 50 + i) % (4 * CS - 1) + 1  # (coordinate 0 is everyone's)
            f = store.submit_adds(unique_name, {"w": ([0, coord], [-1.0, -1.0])}, lr=1.0, metadata={"t": t, "i": i})
            with lock:
                futures.append((coord, f))
    threads = [threading.Thread(target=adds, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    results = [f.result(timeout=30) for _, f in futures]
    assert all(r.chunks and not r.versions for r in results)  # stored in their chunks; no version moved by them
    expected = np.zeros(4 * CS, np.float32)
    expected[0] = 400.0
    for coord, _ in futures:
        expected[coord] += 1.0
    np.testing.assert_array_equal(store.read_model(unique_name).params["w"], expected)
    rows = session.execute("SELECT op_id, status FROM history WHERE model_id=%s AND bucket=%s ALLOW FILTERING",
                           (info.model_id, store.chunks.bucket_of(info, results[0].commits[0].op_id))).all()
    assert len({r["op_id"] for r in rows if r["status"] == "increment"}) >= 1
    ops = {c.op_id for r in results for c in r.commits}
    recorded = {r["op_id"] for r in session.execute("SELECT op_id, status FROM history WHERE model_id=%s "
                                                     "ALLOW FILTERING", (info.model_id,)) if r["status"] == "increment"}
    assert ops <= recorded  # every add has its record
    deadline = time.monotonic() + 3 * _adder.FOLD_AFTER_S + 5  # folded by the process itself, no worker
    while time.monotonic() < deadline and any(_pending(session, info.model_id, k, "w") for k in range(4)):
        time.sleep(0.2)
    left = {k: sorted(_pending(session, info.model_id, k, "w")) for k in range(4)}
    assert not any(left.values()), (left, store._adder._waiting if store._adder else None)
    np.testing.assert_array_equal(store.read_model(unique_name).params["w"], expected)
    store.drop_model(unique_name, confirm=unique_name)


def test_a_bad_add_is_refused_and_writes_nothing(session, store, unique_name, model):
    info, _ = model
    for kwargs, exc in ((dict(update_type="direct"), "direct update sets values"),
                        (dict(lr=0), "learning rate"), (dict(update_id=uuid.uuid4()), "update_id")):
        with pytest.raises(ValidationError, match=exc):
            store.submit_adds(unique_name, {"weights": ([1], [1.0])}, **kwargs)
    with pytest.raises(ValidationError, match="out of range"):
        store.add(unique_name, "weights", [1.0], indices=[N])
    with pytest.raises(ValidationError, match="NaN"):
        store.add(unique_name, "weights", [float("nan")], indices=[2])
    assert all(_pending(session, info.model_id, k) == {} for k in range(4))
    assert not store.read_model(unique_name).params["weights"].any()
    assert session.execute("SELECT count(*) FROM history WHERE model_id=%s ALLOW FILTERING",
                           (info.model_id,)).one()["count"] == 0


def test_an_add_submitted_again_with_its_update_id_counts_once(session, store, unique_name, model):
    info, _ = model
    first = store.add(unique_name, "weights", [-2.0], indices=[5])
    op = first.commits[0].op_id
    again = store.add(unique_name, "weights", [-2.0], indices=[5], update_id=op)  # e.g. after a PartialCommit
    assert again.commits[0].op_id == op
    assert store.read_model(unique_name).params["weights"][5] == 2.0


@pytest.mark.slow
def test_eight_processes_adding_over_two_shared_chunks_never_conflict_and_lose_nothing(base_config, store,
                                                                                      unique_name):
    """The issue's contended run as adds: 8 processes x 100 adds of 8 coordinates over 2 shared chunks: no
    conflict, no error, the exact sum, and every add folded by the processes as they closed."""
    import multiprocessing as mp

    from workloads import chunk_pair_updates, run_chunk_pair_updates
    store.create_model(unique_name, {"w": (256,)}, chunk_size=128)
    cfg = {"contact_points": ",".join(base_config.contact_points), "port": base_config.port,
           "keyspace": base_config.keyspace, "profile": "strong"}
    with mp.get_context("spawn").Pool(8) as pool:
        outcomes = pool.starmap(run_chunk_pair_updates, [(cfg, unique_name, w, 100, True) for w in range(8)])
    assert [o["errors"] for o in outcomes] == [[]] * 8 and sum(o["conflicts"] for o in outcomes) == 0
    expected = np.zeros(256, np.float32)
    for w in range(8):
        for idx, vals in chunk_pair_updates(w, 100):
            expected[idx] -= vals
    np.testing.assert_array_equal(store.read_model(unique_name).params["w"], expected)
    pending = [r["pending"] for r in store.backend.session.execute(
        "SELECT pending FROM chunks WHERE model_id=%s AND chunk IN (0, 1)", (store.model_info(unique_name).model_id,))]
    assert pending == [None, None]  # folded by the processes as they closed
