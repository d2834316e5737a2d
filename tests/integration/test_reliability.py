"""Reliability under node faults on a PRIVATE 3-node cluster (127.0.0.31-33, RF=3).

The module's fixture also proves the local cluster itself: three nodes up, the keyspace at RF=3, and
``down(purge=True)`` leaving no Cassandra process behind.

* Jepsen-style: several client processes update unique coordinates while nodes are killed with
  ``kill -9`` and restarted; after healing, :mod:`cstore_dev.checker` proves that in the ``strong``
  profile every acknowledged update is present exactly once, no failed one is, unknown ones at
  most once, versions are contiguous and each chunk's order respects real time.
* Negative control: the same workload and faults on ``eventual`` must be reported as losing
  acknowledged updates (the checker can fail).
* One node down mid-load: strong keeps committing, ``all`` fails naming level and replicas,
  eventual continues; once the node is back, replicas converge and QUORUM reads what was acked.
* The worker fleet with a node killed under it, critical labels among the bulk: every feedback event
  is learned, and duplicates stay within the documented bound (one batch per lost checkpoint; see
  :mod:`cstore.training`).
* The Jepsen clients' updates are ``Store.apply_update`` calls: atomic updates through the group
  committer (delta entries, known rows), checked exactly as before.

Figures are printed (run with ``-s``) and quoted in docs/RELIABILITY.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy

from cstore import FeedbackWriter
from cstore_dev import checker
from cstore.config import load_config
from cstore_dev.fraudsim import FraudStream
from cstore.training import create_learner
from cstore_dev.local import LocalCluster
from cstore.backend import apply_schema, connect
from cstore.ops import fleet_status
from cstore.store import Store
from feedback_helpers import learning_tally, new_name, start_worker, stop_workers, wait_for
from private_cluster import private_cluster, retrying

pytestmark = [pytest.mark.slow, pytest.mark.fault]
KS = "rel"
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def rel3():
    t0 = time.monotonic()
    with private_cluster("rel3", 31, n_nodes=3) as cluster:
        print(f"\nrel3: 3 nodes up in {time.monotonic() - t0:.1f}s")
        retrying(lambda: apply_test_schema(cluster))
        wait_schema_agreement(cluster)
        with Store.from_config(config(cluster, "strong")) as store:
            rf = store.backend.session.execute("SELECT replication FROM system_schema.keyspaces "
                                               "WHERE keyspace_name = %s", (KS,)).one()["replication"]
        assert rf["replication_factor"] == "3", rf
        yield cluster
    if FIGURES:
        print("\nreliability figures:", json.dumps(FIGURES, indent=1))


def apply_test_schema(cluster: LocalCluster) -> None:
    with connect(config(cluster, "strong", request_timeout_s=60.0)) as conn:
        apply_schema(conn, KS, {"class": "SimpleStrategy", "replication_factor": 3}, log=lambda m: None)


def wait_schema_agreement(cluster: LocalCluster, timeout_s: float = 180.0) -> None:
    """Every node must know every table before clients prepare statements on it (a lagging node says
    'table … does not exist'); the driver waits only 10 s per DDL statement."""
    deadline = time.monotonic() + timeout_s
    while True:
        versions = {}
        for n in cluster.nodes():
            only = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([n.address]))
            c = Cluster([n.address], execution_profiles={EXEC_PROFILE_DEFAULT: only}, protocol_version=5)
            try:
                versions[n.name] = c.connect().execute("SELECT schema_version FROM system.local").one().schema_version
            except Exception as exc:
                versions[n.name] = repr(exc)
            finally:
                c.shutdown()
        if len(set(versions.values())) == 1:
            return
        assert time.monotonic() < deadline, f"schema versions never agreed: {versions}"
        time.sleep(3)


def config(cluster: LocalCluster, profile: str, **extra):
    return load_config(overrides(cluster, profile, **extra), env={})


def overrides(cluster: LocalCluster, profile: str, **extra) -> dict:
    # A short request timeout keeps clients moving while a coordinator is dead (its requests time out).
    return {"contact_points": ",".join(cluster.contact_points), "keyspace": KS, "profile": profile,
            "replication_factor": 3, "request_timeout_s": 6.0, "connect_timeout_s": 5.0, **extra}


class Nemesis(threading.Thread):
    """Kill -9 each listed node in turn, keep it down a little, restart it and wait until it serves."""

    def __init__(self, cluster: LocalCluster, nodes: list[str], *, gap_s: float, down_s: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.nodes, self.gap_s, self.down_s = cluster, nodes, gap_s, down_s
        self.events: list[tuple[float, str, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for node in self.nodes:
                time.sleep(self.gap_s)
                self.cluster.kill(node)
                self.events.append((time.monotonic(), "kill", node))
                time.sleep(self.down_s)
                self.cluster.up()
                self.events.append((time.monotonic(), "up", node))
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@dataclasses.dataclass(frozen=True)
class Workload:
    """Client processes of one profile, each updating coordinates of its own in one model."""
    profile: str
    model: str
    n_procs: int
    n_chunks: int
    chunk_size: int
    max_rate: float | None = None  # operations per second per process


def run_workloads(cluster: LocalCluster, tmp: Path, workloads: list[Workload], *, kill: list[str],
                  gap_s: float = 5.0, down_s: float = 3.0):
    """All workloads' clients at once under one nemesis; returns ({model: (ops, facts)}, nemesis events, seconds).

    Sharing the nemesis gives every profile exactly the same faults, and the module one run of restarts.
    """
    with Store.from_config(config(cluster, "strong")) as store:
        for w in workloads:
            store.create_model(w.model, {checker.PARAM: (w.n_chunks * w.chunk_size,)}, chunk_size=w.chunk_size)
    t_start = time.time()
    stop = tmp / "clients.stop"
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds driver threads
    logs = {w.model: [tmp / f"{w.model}-p{i}.jsonl" for i in range(w.n_procs)] for w in workloads}
    procs = [ctx.Process(target=checker.client_main,
                         args=(overrides(cluster, w.profile), w.model, i, w.n_procs, w.n_chunks, w.chunk_size,
                               600.0, str(logs[w.model][i]), str(stop), w.max_rate))
             for w in workloads for i in range(w.n_procs)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    nemesis = Nemesis(cluster, kill, gap_s=gap_s, down_s=down_s)
    nemesis.start()
    nemesis.join(timeout=600)
    time.sleep(gap_s)  # some load on the healed cluster too
    stop.touch()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    elapsed = time.monotonic() - t0
    assert nemesis.error is None, f"nemesis failed: {nemesis.error}"
    cluster.up()
    results = {}
    with Store.from_config(config(cluster, "strong", request_timeout_s=30.0)) as store:
        for w in workloads:
            results[w.model] = (checker.read_ops(logs[w.model]), checker.collect(store, w.model, since=t_start - 120))
    return results, nemesis.events, elapsed


def fault_figures(ops, events, elapsed) -> dict:
    """Faults injected, and how much load ran while a node was down (proof the faults hit the workload)."""
    windows, down = [], {}
    for t, kind, node in events:
        if kind == "kill":
            down[node] = t
        else:
            windows.append((down.pop(node), t))
    during = sum(1 for o in ops if o.outcome == "ok" and any(a <= o.complete <= b for a, b in windows))
    return {"faults": len(windows), "ok_while_a_node_was_down": during,
            "down_then_restart_s": [round(b - a, 1) for a, b in windows],
            "node_down_s": round(sum(b - a for a, b in windows)), "seconds": round(elapsed),
            "errors": checker.group_errors(ops)}


STRONG = Workload("strong", "jepsen_strong", n_procs=3, n_chunks=4, chunk_size=1024)
# Blind writes at ONE cost the client almost nothing: capped, so that they leave CPU to the restarting node.
EVENTUAL = Workload("eventual", "jepsen_eventual", n_procs=2, n_chunks=2, chunk_size=8192, max_rate=60)


@pytest.fixture(scope="module")
def jepsen(rel3, tmp_path_factory):
    """Strong and eventual clients side by side while node1, then node3, are killed with -9 and restarted."""
    results, events, elapsed = run_workloads(rel3, tmp_path_factory.mktemp("jepsen"), [STRONG, EVENTUAL],
                                             kill=["node1", "node3"])
    return {model: (ops, facts, fault_figures(ops, events, elapsed)) for model, (ops, facts) in results.items()}


def checked(jepsen, workload: Workload, label: str):
    """The checker's verdict on one workload of the shared run, recorded for RELIABILITY.md."""
    ops, facts, faults = jepsen[workload.model]
    result = checker.check(ops, facts, workload.chunk_size)
    FIGURES[label] = {**result.summary(), **faults}
    print(f"\n{label}:", json.dumps(FIGURES[label]))
    return result, faults


def test_strong_loses_no_acknowledged_update_under_kill9(jepsen):
    result, faults = checked(jepsen, STRONG, "strong")
    assert result.ok > 100, "too few acknowledged operations for the check to mean anything"
    assert faults["faults"] == 2 and faults["ok_while_a_node_was_down"] > 0
    assert result.valid, result.summary()
    assert result.lost == [] and result.duplicated == [] and result.failed_present == []


def test_eventual_negative_control_reports_lost_updates(jepsen):
    result, faults = checked(jepsen, EVENTUAL, "eventual")
    assert result.ok > 100
    assert not result.valid and len(result.lost) > 0, "the checker must catch eventual's lost updates"
    assert faults["ok_while_a_node_was_down"] > 0


# -- one node down mid-load ------------------------------------------------------------------------
class Loader(threading.Thread):
    """One profile's single writer: unique coordinates, outcomes with times (no write-write races)."""

    def __init__(self, cluster: LocalCluster, profile: str, model: str) -> None:
        super().__init__(daemon=True)
        self.store = Store.from_config(config(cluster, profile))
        self.model, self.stop = model, threading.Event()
        self.ops: list[tuple[float, int, str, str]] = []  # (completed at, coordinate, outcome, error)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 1024:
            try:
                self.store.apply_update(self.model, "w", [-1.0], indices=[i], lr=1.0, source="manual")
                self.ops.append((time.monotonic(), i, "ok", ""))
            except Exception as exc:
                self.ops.append((time.monotonic(), i, "error", f"{type(exc).__name__}: {exc}"))
                time.sleep(0.2)
            i += 1
        self.store.close()


def chunk_blobs(session, model_id, level) -> list:
    from cassandra.query import SimpleStatement
    q = SimpleStatement("SELECT data, version FROM chunks WHERE model_id = %s AND chunk = 0",
                        consistency_level=level)
    return [(bytes(r.data), r.version) for r in session.execute(q, (model_id,))]


def versions(session, model_id, level) -> list:
    """What a failed convergence check prints: each row's version and a digest of its data."""
    return [(v, hashlib.sha1(d).hexdigest()[:12]) for d, v in chunk_blobs(session, model_id, level)]


def test_one_node_down_strong_commits_all_fails_eventual_continues_then_converges(rel3):
    with Store.from_config(config(rel3, "strong")) as store:
        for p in ("strong", "all", "eventual"):
            store.create_model(f"down_{p}", {"w": (1024,)}, chunk_size=1024)
        ids = {p: store.model_info(f"down_{p}").model_id for p in ("strong", "eventual")}
    loaders = {p: Loader(rel3, p, f"down_{p}") for p in ("strong", "all", "eventual")}
    for ld in loaders.values():
        ld.start()
    time.sleep(4)
    rel3.kill("node3")
    t_kill = time.monotonic()
    time.sleep(14)
    for ld in loaders.values():
        ld.stop.set()
    for ld in loaders.values():
        ld.join(timeout=60)
    assert not any(ld.is_alive() for ld in loaders.values())  # nothing writes while convergence is judged
    after = {p: [o for o in ld.ops if o[0] > t_kill + 1] for p, ld in loaders.items()}
    assert sum(o[2] == "ok" for o in after["strong"]) >= 5, after["strong"][-3:]
    assert sum(o[2] == "ok" for o in after["eventual"]) >= 5, after["eventual"][-3:]
    all_errors = [o[3] for o in after["all"] if o[2] == "error"]
    assert all_errors and not any(o[2] == "ok" for o in after["all"][3:])
    # A request in flight to the killed coordinator may end as a driver timeout; once the coordinator
    # answers, the error names the level and the replicas: replicas that did not answer in time
    # (ReplicaTimeout, until the failure detector convicts the node) or that are known dead
    # (ConsistencyUnavailable) -- two conditions, two types.
    clear = [e for e in all_errors if e.startswith(("ConsistencyUnavailable", "ReplicaTimeout"))
             and "consistency ALL" in e and "replica" in e]
    assert clear and clear[-1] == all_errors[-1], all_errors[-3:]

    t_back = time.monotonic()
    rel3.up()
    restart_s = time.monotonic() - t_back
    figures = {"restart_s": round(restart_s, 1), "all_error_example": all_errors[-1][:160]}
    with Store.from_config(config(rel3, "strong")) as store:
        for p in ("strong", "eventual"):
            w = store.read_model(f"down_{p}").params["w"]
            ok = {c for _, c, out, _ in loaders[p].ops if out == "ok"}
            maybe = {c for _, c, out, _ in loaders[p].ops if out != "ok"}
            present = set(np.flatnonzero(w).tolist())
            assert present <= ok | maybe and set(w[list(present)]) <= {1.0}, p  # nothing invented or doubled
            last_ok = max(c for _, c, out, _ in loaders[p].ops if out == "ok")
            assert last_ok in present, p  # the last acknowledged write is what the cluster holds
            if p == "strong":
                assert ok <= present  # QUORUM holds exactly what was acknowledged
            # eventual: even one writer loses acknowledged updates when its read at ONE hits a replica
            # that has not applied its previous write yet (R + W <= RF): counted, not asserted away.
            figures[f"{p}_acked"] = len(ok)
            figures[f"{p}_acked_after_kill"] = sum(o[2] == "ok" for o in after[p])
            figures[f"{p}_acked_but_lost"] = len(ok - present)
        store.apply_update("down_strong", "w", [-1.0], indices=[1023])  # the healed cluster commits
    # Convergence: node3 alone (read at ONE from it only) must hold what the quorum holds.
    only3 = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([rel3.node("node3").address]))
    c3 = Cluster([rel3.node("node3").address], execution_profiles={EXEC_PROFILE_DEFAULT: only3}, protocol_version=5)
    cq = Cluster(rel3.contact_points, protocol_version=5)
    s3, sq = c3.connect(KS), cq.connect(KS)
    try:
        def converged() -> bool:
            return all(chunk_blobs(s3, mid, ConsistencyLevel.ONE) == chunk_blobs(sq, mid, ConsistencyLevel.QUORUM)
                       for mid in ids.values())
        # Hints first; then a full repair, and a second one if mutations still arriving (hints to the
        # other replicas, replayed late under the suite's load) left a difference the first could not see.
        # Patient waits: under the whole suite's load on 2 cores, CI once saw node 3 agree a moment
        # after 30 s following the second repair.
        how = "hints"
        for attempt, wait_s in (("hints", 30), ("repair", 60), ("second repair", 90)):
            if attempt != "hints":
                how = attempt
                rel3.nodetool("node3", "repair", "-full", KS, "chunks")
            deadline = time.monotonic() + wait_s
            while not converged() and time.monotonic() < deadline:
                time.sleep(1)
            if converged():
                break
        assert converged(), {name: (versions(s3, mid, ConsistencyLevel.ONE), versions(sq, mid, ConsistencyLevel.QUORUM))
                             for name, mid in ids.items()}
        figures["converged_by"] = how
        figures["converged_after_s"] = round(time.monotonic() - t_back - restart_s, 1)
    finally:
        c3.shutdown()
        cq.shutdown()
    FIGURES["node_down"] = figures
    print("\nnode down:", json.dumps(figures))


# -- the worker fleet with a node down -------------------------------------------------------------
CRITICAL_EVERY = 100


def test_fleet_learns_every_event_while_a_node_is_killed(rel3):
    """Two ``cstore worker`` processes learn a steady stream, one label in a hundred critical; node2 is
    killed under them and restarted later. Every event, critical or bulk, is learned."""
    batch, n_events, rate = 1000, 24_000, 2000
    cfg = config(rel3, "strong")
    name = new_name("fleetdown")
    stream = FraudStream(seed=23).sample(n_events)
    with Store.from_config(cfg) as store:
        create_learner(store, name, n_features=2**14, chunk_size=16384, partitions=4)
        procs = [start_worker(cfg, name, "--lease-ttl", "6", "--batch-size", str(batch), "--max-wait-ms", "100",
                              env={"CSTORE_REQUEST_TIMEOUT_S": "6"}) for _ in range(2)]
        sent = threading.Event()

        def produce() -> None:  # a steady rate, so that the fleet is busy when the node dies
            with FeedbackWriter(store, name, linger_ms=20) as w:
                start = time.monotonic()
                for i, tx in enumerate(stream):  # one in CRITICAL_EVERY through the critical lane
                    w.send(tx["entity_id"], tx["label"], features=tx["features"], critical=i % CRITICAL_EVERY == 0)
                    if i % 200 == 0:
                        time.sleep(max(0.0, start + i / rate - time.monotonic()))
            sent.set()

        producer = threading.Thread(target=produce)
        status = lambda: fleet_status(store, name)  # noqa: E731
        try:
            wait_for(lambda: len((s := status())["workers"]) == 2 and all(p["owner"] for p in s["partitions"]),
                     90, "2 workers owning all partitions", every=0.5, tolerate=(Exception,))
            producer.start()
            time.sleep(4)
            learned_before = status()["learned_events"]
            rel3.kill("node2")
            t_kill = time.monotonic()
            producer.join(timeout=120)
            assert sent.is_set(), "the producer could not deliver its feedback with one node down"
            final = wait_for(lambda: (s := status())["lag_events"] == 0 and s["learned_events"] >= n_events and s,
                             180, "lag 0 with node2 down", every=1.0, tolerate=(Exception,))
            caught_up_s = time.monotonic() - t_kill
            assert final["workers"] and len(final["workers"]) == 2, final["workers"]
        finally:
            if producer.is_alive():
                producer.join(timeout=120)
            stats = stop_workers([p for p in procs if p.poll() is None])
        assert [p.returncode for p in procs] == [0, 0]
        rel3.up()  # node2 back before the next test
        missing, dups, learned = learning_tally(store, name)
    lost_checkpoints = sum(s["lost_checkpoints"] for s in stats)
    critical = sum(s["critical"]["events"] for s in stats)
    figures = {"events": n_events, "learned_before_kill": learned_before, "lag_0_after_kill_s": round(caught_up_s, 1),
               "duplicates": dups, "lost_checkpoints": lost_checkpoints, "missing_segments": missing,
               "batches": sum(s["batches"] for s in stats), "critical_events_learned": critical}
    FIGURES["fleet_node_down"] = figures
    print("\nfleet, node2 killed:", json.dumps(figures))
    assert 0 < learned_before < n_events  # the node died while the fleet was learning
    assert missing == 0  # every event learned
    assert dups <= batch * lost_checkpoints and learned == n_events + dups  # the documented bound
    assert critical >= n_events // CRITICAL_EVERY  # the critical labels went through the critical lane
