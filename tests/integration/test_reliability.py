"""Reliability under node faults on a PRIVATE 3-node cluster (127.0.0.31-33, RF=3).

* Jepsen-style: several client processes update unique coordinates while nodes are killed with
  ``kill -9`` and restarted; after healing, :mod:`cstore.checker` proves that in the ``strong``
  profile every acknowledged update is present exactly once, no failed one is, unknown ones at
  most once, versions are contiguous and each chunk's order respects real time.
* Negative control: the same workload and faults on ``eventual`` must be reported as losing
  acknowledged updates (the checker can fail).
* One node down mid-load: strong keeps committing, ``all`` fails naming level and replicas,
  eventual continues; once the node is back, replicas converge and QUORUM reads what was acked.

Figures are printed (run with ``-s``) and quoted in docs/RELIABILITY.md.
"""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy

from cstore import checker, schema
from cstore.config import load_config
from cstore.local import LocalCluster
from cstore.local.node import pid_alive
from cstore.session import connect
from cstore.store import Store
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.fault]
KS = "rel"
FIGURES: dict[str, dict] = {}


def make_cluster() -> LocalCluster:
    return LocalCluster(REPO / ".local", n_nodes=3, heap="512M", name="rel3", first_octet=31, log=lambda m: None)


@pytest.fixture(scope="module")
def rel3():
    cluster = make_cluster()
    cluster.down(purge=True)
    t0 = time.monotonic()
    try:
        cluster.up()
        print(f"\nrel3: 3 nodes up in {time.monotonic() - t0:.1f}s")
        apply_schema(cluster)
        wait_schema_agreement(cluster)
        yield cluster
    finally:
        pids = list(cluster.pids().values())
        cluster.down(purge=True)
        assert not any(pid_alive(p) for p in pids)
        left = subprocess.run(["pgrep", "-f", "/rel3/node"], capture_output=True, text=True).stdout.strip()
        assert left == "", f"Cassandra processes left behind: {left}"
        if FIGURES:
            print("\nreliability figures:", json.dumps(FIGURES, indent=1))


def apply_schema(cluster: LocalCluster, attempts: int = 4) -> None:
    """Schema changes on a freshly started cluster of a busy 2-core machine can time out: retry (idempotent)."""
    for attempt in range(attempts):
        conn = connect(config(cluster, "strong", request_timeout_s=60.0))
        try:
            schema.apply(conn.session, KS, {"class": "SimpleStrategy", "replication_factor": 3}, log=lambda m: None)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(5)
        finally:
            conn.close()


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


def run_workload(cluster: LocalCluster, tmp: Path, profile: str, model: str, *, n_procs: int, n_chunks: int,
                 chunk_size: int, kill: list[str], gap_s: float = 5.0, down_s: float = 3.0):
    """Clients + nemesis; returns (ops, facts, nemesis events, seconds)."""
    with Store.from_config(config(cluster, "strong")) as store:
        store.create_model(model, {checker.PARAM: (n_chunks * chunk_size,)}, chunk_size=chunk_size)
    t_start = time.time()
    stop = tmp / f"{model}.stop"
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds driver threads
    logs = [tmp / f"{model}-p{i}.jsonl" for i in range(n_procs)]
    procs = [ctx.Process(target=checker.client_main,
                         args=(overrides(cluster, profile), model, i, n_procs, n_chunks, chunk_size, 600.0,
                               str(logs[i]), str(stop)))
             for i in range(n_procs)]
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
    with Store.from_config(config(cluster, "strong", request_timeout_s=30.0)) as store:
        facts = checker.collect(store, model, since=t_start - 120)
    return checker.read_ops(logs), facts, nemesis.events, elapsed


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
            "node_down_s": round(sum(b - a for a, b in windows)), "seconds": round(elapsed),
            "errors": checker.group_errors(ops)}


def test_strong_loses_no_acknowledged_update_under_kill9(rel3, tmp_path):
    ops, facts, events, elapsed = run_workload(rel3, tmp_path, "strong", "jepsen_strong", n_procs=3, n_chunks=4,
                                               chunk_size=1024, kill=["node1", "node3"])
    result = checker.check(ops, facts, 1024)
    summary = result.summary()
    FIGURES["strong"] = {**summary, **fault_figures(ops, events, elapsed)}
    print("\nstrong:", json.dumps(FIGURES["strong"]))
    assert result.ok > 100, "too few acknowledged operations for the check to mean anything"
    assert FIGURES["strong"]["faults"] == 2 and FIGURES["strong"]["ok_while_a_node_was_down"] > 0
    assert result.valid, summary
    assert result.lost == [] and result.duplicated == [] and result.failed_present == []


def test_eventual_negative_control_reports_lost_updates(rel3, tmp_path):
    ops, facts, events, elapsed = run_workload(rel3, tmp_path, "eventual", "jepsen_eventual", n_procs=3,
                                               n_chunks=2, chunk_size=8192, kill=["node2"])
    result = checker.check(ops, facts, 8192)
    summary = result.summary()
    FIGURES["eventual"] = {**summary, **fault_figures(ops, events, elapsed)}
    print("\neventual:", json.dumps(FIGURES["eventual"]))
    assert result.ok > 100
    assert not result.valid and len(result.lost) > 0, "the checker must catch eventual's lost updates"
    assert FIGURES["eventual"]["ok_while_a_node_was_down"] > 0


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
    after = {p: [o for o in ld.ops if o[0] > t_kill + 1] for p, ld in loaders.items()}
    assert sum(o[2] == "ok" for o in after["strong"]) >= 5, after["strong"][-3:]
    assert sum(o[2] == "ok" for o in after["eventual"]) >= 5, after["eventual"][-3:]
    all_errors = [o[3] for o in after["all"] if o[2] == "error"]
    assert all_errors and not any(o[2] == "ok" for o in after["all"][3:])
    # A request in flight to the killed coordinator may end as a driver timeout; once the coordinator
    # answers, the error names the level and the replicas.
    clear = [e for e in all_errors if "ConsistencyUnavailable" in e and "consistency ALL" in e and "replica" in e]
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
        deadline, how = time.monotonic() + 30, "hints"
        while not converged():
            if time.monotonic() > deadline:
                how = "repair"
                rel3.nodetool("node3", "repair", "-full", KS, "chunks")
                break
            time.sleep(1)
        assert converged()
        figures["converged_by"] = how
        figures["converged_after_s"] = round(time.monotonic() - t_back - restart_s, 1)
    finally:
        c3.shutdown()
        cq.shutdown()
    FIGURES["node_down"] = figures
    print("\nnode down:", json.dumps(figures))
