"""The worker's metrics and health endpoints, served for real on an ephemeral port and scraped."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cstore.ops import Readiness, WorkerMetrics, cluster_check, serve


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from Prometheus text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served():
    metrics = WorkerMetrics("fraud")
    readiness = Readiness()
    server = serve(0, "127.0.0.1", readiness, registry=metrics.registry)
    try:
        yield metrics, readiness, server
    finally:
        server.close()


def test_metrics_endpoint_counts_the_work_done(served):
    metrics, _, server = served
    status, ctype, body = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    before = samples(body)
    m = (("model", "fraud"),)
    # every series exists at 0 before any work, so alerts and rates work from the first scrape
    assert before[("cstore_events_learned_total", m)] == 0
    assert before[("cstore_commit_latency_seconds_count", m)] == 0
    assert before[("cstore_events_poisoned_total", m)] == 0

    metrics.record_learned(512)
    metrics.record_poisoned(6)
    metrics.record_commit(chunks=7, seconds=0.004, conflicts=2, retries=3)
    metrics.record_learned(100)
    metrics.record_commit(chunks=3, seconds=0.2)
    metrics.record_conflict()
    metrics.set_lag(3, 12.5, events=40)
    metrics.set_lag("7", 0.0, events=0)
    metrics.set_drift_score(0.75)
    metrics.record_drift()
    metrics.record_lease_change("acquired", 3)
    metrics.record_lease_change("acquired", 7)
    metrics.record_lease_change("lost", 7)

    after = samples(get(server.url + "/metrics")[2])
    assert after[("cstore_events_learned_total", m)] == 612
    assert after[("cstore_events_poisoned_total", m)] == 6
    assert after[("cstore_batches_committed_total", m)] == 2
    assert after[("cstore_chunk_commits_total", m)] == 10
    assert after[("cstore_commit_conflicts_total", m)] == 3
    assert after[("cstore_commit_retries_total", m)] == 3
    assert after[("cstore_commit_latency_seconds_count", m)] == 2
    assert after[("cstore_commit_latency_seconds_sum", m)] == pytest.approx(0.204)
    assert after[("cstore_commit_latency_seconds_bucket", (("le", "0.005"),) + m)] == 1
    assert after[("cstore_commit_latency_seconds_bucket", (("le", "0.25"),) + m)] == 2
    assert after[("cstore_partition_lag_seconds", m + (("partition", "3"),))] == 12.5
    assert after[("cstore_partition_lag_events", m + (("partition", "3"),))] == 40
    # partition 7's lease was lost: its lag is now someone else's to report
    assert ("cstore_partition_lag_seconds", m + (("partition", "7"),)) not in after
    assert after[("cstore_drift_score", m)] == 0.75
    assert after[("cstore_drift_detections_total", m)] == 1
    assert after[("cstore_lease_changes_total", (("change", "acquired"),) + m)] == 2
    assert after[("cstore_lease_changes_total", (("change", "lost"),) + m)] == 1
    assert after[("cstore_leases_held", m)] == 1


def test_bad_arguments_are_refused_and_count_nothing(served):
    metrics, _, _ = served
    with pytest.raises(ValueError, match="lease change"):
        metrics.record_lease_change("stolen")
    with pytest.raises(ValueError):
        metrics.record_commit(chunks=-1, seconds=0.1)
    with pytest.raises(ValueError):
        metrics.record_learned(-5)
    with pytest.raises(ValueError):
        metrics.record_poisoned(-1)
    s = samples(metrics.scrape())
    assert s[("cstore_batches_committed_total", (("model", "fraud"),))] == 0
    assert s[("cstore_events_learned_total", (("model", "fraud"),))] == 0


def test_healthz_and_readyz_follow_the_worker_state(served):
    _, readiness, server = served
    assert get(server.url + "/healthz")[0] == 200
    status, _, body = get(server.url + "/readyz")
    assert (status, body) == (503, "not ready: starting\n")

    readiness.set_ready("holding 4 leases")
    assert get(server.url + "/readyz")[:3:2] == (200, "ready: holding 4 leases\n")

    cassandra_up = [True]
    readiness.add_check(lambda: (cassandra_up[0], "cassandra up" if cassandra_up[0] else "cassandra down"))
    assert get(server.url + "/readyz")[0] == 200
    cassandra_up[0] = False
    assert get(server.url + "/readyz")[:3:2] == (503, "not ready: cassandra down\n")
    cassandra_up[0] = True
    readiness.set_unready("draining after SIGTERM")
    assert get(server.url + "/readyz")[:3:2] == (503, "not ready: draining after SIGTERM\n")
    # alive all along
    assert get(server.url + "/healthz")[0] == 200
    assert get(server.url + "/nope")[0] == 404


def test_a_failing_ready_check_means_unready_not_a_crash():
    metrics = WorkerMetrics("m")

    def broken() -> tuple[bool, str]:
        raise RuntimeError("driver exploded")

    with serve(0, "127.0.0.1", broken, registry=metrics.registry) as server:
        status, _, body = get(server.url + "/readyz")
        assert status == 503 and "RuntimeError: driver exploded" in body
        assert get(server.url + "/healthz")[0] == 200
        assert get(server.url + "/metrics")[0] == 200


class _Host:
    def __init__(self, endpoint: str, up: bool) -> None:
        self.endpoint, self.is_up = endpoint, up


class _Cluster:
    """What a connection reports of the driver's view of the nodes (``Backend.hosts()``)."""

    def __init__(self, hosts: list[_Host]) -> None:
        self._hosts = hosts

    def hosts(self) -> list[tuple[str, bool]]:
        return [(h.endpoint, h.is_up) for h in self._hosts]


def test_cluster_check_reads_the_drivers_view_of_the_nodes():
    hosts = [_Host("10.0.0.1:9042", True), _Host("10.0.0.2:9042", False)]
    check = cluster_check(_Cluster(hosts))
    assert check() == (True, "1/2 Cassandra node(s) up")
    hosts[0].is_up = False
    ok, reason = check()
    assert not ok and "10.0.0.1:9042" in reason and "10.0.0.2:9042" in reason
    assert cluster_check(_Cluster([]))() == (False, "no Cassandra node known")


def test_port_in_use_is_a_clear_error():
    metrics = WorkerMetrics("m")
    with serve(0, "127.0.0.1", registry=metrics.registry) as first:
        with pytest.raises(OSError):
            serve(first.port, "127.0.0.1", registry=metrics.registry)


def test_several_processes_are_summed_by_the_parent(tmp_path):
    # Runs in a fresh interpreter: multiprocess mode changes prometheus_client's global value class.
    script = textwrap.dedent(f"""
        import multiprocessing as mp, urllib.request
        from cstore import ops as cm

        def child(i):
            m = cm.WorkerMetrics("fraud")
            m.record_learned(100 * (i + 1))
            m.record_commit(chunks=2, seconds=0.01)
            m.set_lag(i, 5.0 * (i + 1))
            m.set_drift_score(0.1 * (i + 1))

        if __name__ == "__main__":
            cm.enable_multiprocess({str(tmp_path / "prom")!r})  # parent only, before the children start
            procs = [mp.get_context("spawn").Process(target=child, args=(i,)) for i in range(2)]
            [p.start() for p in procs]
            [p.join() for p in procs]
            with cm.serve(0, "127.0.0.1", registry=cm.multiprocess_registry()) as srv:
                print(urllib.request.urlopen(srv.url + "/metrics", timeout=5).read().decode())
    """)
    path = tmp_path / "mp_metrics.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    s = samples(out.stdout)
    m = (("model", "fraud"),)
    assert s[("cstore_events_learned_total", m)] == 300
    assert s[("cstore_batches_committed_total", m)] == 2
    assert s[("cstore_commit_latency_seconds_count", m)] == 2
    assert s[("cstore_partition_lag_seconds", m + (("partition", "0"),))] == 5.0
    assert s[("cstore_partition_lag_seconds", m + (("partition", "1"),))] == 10.0
    assert s[("cstore_drift_score", m)] == pytest.approx(0.2)


def test_healthz_fails_when_the_liveness_check_does():
    from prometheus_client import CollectorRegistry
    from cstore.ops import serve
    stuck = {"age": 1.0}
    server = serve(0, "127.0.0.1", registry=CollectorRegistry(),
                   live_check=lambda: (stuck["age"] < 300, f"learning loop last advanced {stuck['age']:.0f} s ago"))
    try:
        assert get(server.url + "/healthz")[:3:2] == (200, "ok: learning loop last advanced 1 s ago\n")
        stuck["age"] = 301.0
        assert get(server.url + "/healthz")[:3:2] == (503, "stuck: learning loop last advanced 301 s ago\n")
    finally:
        server.close()


def test_build_info_names_the_running_version():
    import cstore
    from prometheus_client import generate_latest
    from cstore.ops import WorkerMetrics
    text = generate_latest(WorkerMetrics("fraud").registry).decode()
    line = next(x for x in text.splitlines() if x.startswith("cstore_build_info{"))
    assert f'version="{cstore.__version__}"' in line and line.endswith(" 1.0")
