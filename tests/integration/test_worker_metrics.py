"""A running `cstore worker --metrics-port`: counters move with the work, /readyz turns unready when
Cassandra stops, SIGTERM still exits cleanly. Uses a private node (127.0.0.51), never the shared one."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from cstore import FeedbackWriter
from cstore.backend import apply_schema, replication_map
from cstore.config import load_config
from cstore.training import create_learner
from cstore.backend import connect
from cstore.store import Store
from feedback_helpers import wait_for
from private_cluster import private_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):  # not listening yet
        return 0, ""


def _metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


@pytest.mark.slow
def test_metrics_move_with_work_and_readyz_follows_cassandra():
    proc = None
    with private_cluster("metrics1", 51) as cluster:
        try:
            cfg = load_config({"contact_points": "127.0.0.51", "keyspace": "metrics"}, env={})
            with connect(cfg) as bootstrap:  # no keyspace yet
                apply_schema(bootstrap, "metrics", replication_map(cfg), log=lambda m: None)
            store = Store.from_config(cfg)
            create_learner(store, "m", n_features=2**12, partitions=2, chunk_size=1024)
            rng = np.random.default_rng(0)
            with FeedbackWriter(store, "m") as w:
                for i in range(3000):
                    w.send(f"e{i}", int(rng.random() < 0.3), features={"a": float(rng.normal()), "c": f"v{i % 7}"})
            store.close()
            port = _free_port()
            proc = subprocess.Popen([sys.executable, "-m", "cstore", "--contact-points", "127.0.0.51", "--keyspace",
                                     "metrics", "worker", "--model", "m", "--lease-ttl", "4", "--batch-size", "500",
                                     "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: _get(base + "/healthz")[0] == 200 if proc.poll() is None else
                     pytest.fail(proc.stderr.read()), 60, "/healthz")
            text = wait_for(lambda: (lambda t: t if _metric(t, "cstore_events_learned_total") >= 3000 else None)(
                _get(base + "/metrics")[1]), 90, "all 3000 events learned in /metrics")
            assert _metric(text, "cstore_chunk_commits_total") > 0
            assert _metric(text, "cstore_commit_latency_seconds_count") > 0
            assert _metric(text, "cstore_leases_held") == 2
            # exported from the first scrape; alone on its model (it holds every partition) the worker
            # never needs the commit turn
            for series in ("cstore_commit_turns_total", "cstore_commit_turn_wait_seconds_total",
                           "cstore_commit_turns_missed_total"):
                assert re.search(rf"^{series}{{", text, re.M) and _metric(text, series) == 0, series
            assert _metric(text, "cstore_lease_changes_total") >= 2
            assert _get(base + "/readyz")[0] == 200

            cluster.stop("node1")
            status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(_get(base + "/readyz")), 60,
                                    "/readyz to turn unready")
            assert "no Cassandra node up" in body
            assert _get(base + "/healthz")[0] == 200  # alive, just not ready

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
