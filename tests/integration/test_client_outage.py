"""The scoring client survives Cassandra going away: predictions continue from the cache, staleness grows
visibly (also in the process's /metrics), logging never fails a prediction, a never-loaded model says so,
and everything recovers.

Runs on a private single-node cluster (127.0.0.21): the shared test node is never stopped.
"""
from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest

from cstore import Client
from cstore.backend import apply_schema, replication_map
from cstore.config import load_config
from cstore.errors import ConnectionFailed, NotLoaded
from cstore.backend import connect
from cstore.ops import serve_scorer_metrics
from cstore.store import Store
from feedback_helpers import wait_for
from private_cluster import private_cluster, retrying


def scraped(server, name: str, model: str = "fraud") -> float:
    """One series of the scorer's /metrics, as Prometheus would read it."""
    body = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(f'{name}{{model="{model}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"{name} for {model} not in /metrics:\n{body}")


def _connecting(fn):
    """A node that has just started on a busy machine may refuse the first connections."""
    return retrying(fn, attempts=45, pause_s=2.0, retry_on=(ConnectionFailed,))


@pytest.mark.slow
@pytest.mark.fault
def test_predictions_continue_while_the_node_is_down_and_staleness_grows():
    client = None
    with private_cluster("client_outage", 21) as cluster:
        try:
            cfg = load_config({"contact_points": ",".join(cluster.contact_points), "keyspace": "outage",
                               "refresh_interval_s": 0.1}, env={})
            with _connecting(lambda: connect(cfg)) as conn:
                apply_schema(conn, "outage", replication_map(cfg), log=lambda m: None)
            meta = {"learner": {"n_features": 256, "hash_seed": 0}}
            with _connecting(lambda: Store.from_config(cfg)) as store:
                for name in ("fraud", "opened_later"):
                    store.create_model(name, {"weights": (256,), "bias": (1,)}, chunk_size=64, metadata=meta)
                store.apply_updates("fraud", {"weights": np.linspace(-1, 1, 256, dtype="float32")},
                                    update_type="direct")

            client = _connecting(lambda: Client(config=cfg))
            model = client.model("fraud")
            f = {"amount": 0.7, "country": "FR", "hour": 3.0}
            p0 = model.predict_proba(f)
            assert p0 != 0.5 and model.staleness < 1.0
            server = serve_scorer_metrics(client, port=0, host="127.0.0.1")  # what the service would expose
            assert scraped(server, "cstore_scorer_staleness_seconds") < 1.0
            assert scraped(server, "cstore_scorer_predictions_total") == 1
            assert scraped(server, "cstore_scorer_model_loaded") == 1

            cluster.stop("node1")
            wait_for(lambda: model.status()["refresh_errors"] > 0, 10, "a failed refresh", every=0.1)
            samples = []
            for _ in range(40):  # 4 s without Cassandra
                assert model.predict_proba(f) == p0
                assert model.score("tx-during-outage", f) == p0  # logging never fails the prediction
                samples.append(model.staleness)
                time.sleep(0.1)
            assert samples == sorted(samples) and samples[-1] > samples[0] + 3.5
            assert scraped(server, "cstore_scorer_staleness_seconds") > 3.5  # the SLO is visible from outside
            assert scraped(server, "cstore_scorer_refresh_errors_total") > 0
            status = model.status()
            assert status["loaded"] and status["failing_streak"] > 0 and status["last_error"]
            print(f"\nwhile down: staleness {samples[0]:.1f} → {samples[-1]:.1f} s, {status['refresh_errors']} "
                  f"refresh errors, last: {status['last_error'][:100]}")

            later = client.model("opened_later")  # Cassandra is down: returned unloaded, loads in background
            with pytest.raises(NotLoaded, match="never been loaded.*127.0.0.21"):
                later.predict_proba(f)
            assert later.version is None and later.staleness == float("inf")
            client.flush_log(3.0)
            assert model.status()["log"]["write_errors"] >= 1  # counted, not lost silently

            cluster.up()
            t_up = time.monotonic()
            wait_for(lambda: model.staleness < 1.0 and later.loaded, 60, "both models fresh again", every=0.1)
            assert scraped(server, "cstore_scorer_staleness_seconds") < 1.0  # and its recovery
            server.close()
            print(f"fresh again {time.monotonic() - t_up:.1f} s after the node accepted CQL again")
            assert later.predict_proba(f) == 0.5  # all-zero model
            store = client.store  # the client's own, reconnected session
            store.apply_update("fraud", "bias", [-2.0], lr=1.0)
            assert model.wait_for_version(store.head_version("fraud"), 2.0)
            assert model.predict_proba(f) > p0
        finally:
            if client is not None:
                client.close()
