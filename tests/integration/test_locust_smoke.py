"""A 10-second headless Locust run of the mixed workload (scorers, labels, feedback, a worker process)
against the real node: it must finish with zero failures and a non-zero request count."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path


# Never import locust here: importing it monkey-patches this process for gevent, and the driver's
# libev reactor used by the fixtures would then block. Locust runs in its own process; `make`
# installs it (the `load` extra), so its absence is a failure, never a skip.

REPO = Path(__file__).resolve().parents[2]


def test_mixed_locust_smoke_has_requests_and_no_failures(base_config, unique_name):
    assert importlib.util.find_spec("locust") is not None, "locust is not installed (pip install -e '.[load]')"
    from cstore.training import create_learner
    from cstore.store import Store
    store = Store.from_config(base_config)
    try:
        create_learner(store, unique_name, n_features=1 << 18)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CSTORE_", "LOCUST_"))},
               "CSTORE_CONTACT_POINTS": ",".join(base_config.contact_points), "CSTORE_PORT": str(base_config.port),
               "CSTORE_KEYSPACE": base_config.keyspace, "LOCUST_CSTORE_MODEL": unique_name}
        proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "mixed.py"),
                               "--headless", "-u", "4", "-r", "2", "-t", "10s", "--only-summary", "--json"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = json.loads(proc.stdout[proc.stdout.index("["):])
        by_name = {s["name"]: s for s in stats}
        total = sum(s["num_requests"] for s in stats)
        failures = sum(s["num_failures"] for s in stats)
        assert failures == 0, {n: s["num_failures"] for n, s in by_name.items()}
        assert total > 0 and by_name["score"]["num_requests"] > 0
        assert {"label", "feedback_batch"} & set(by_name), sorted(by_name)
        # (Whether the worker learned within the run is not asserted: on a loaded 2-core machine its
        # start-up alone can take most of the 10 s. Its liveness is: `model_version` fails if it died.)
    finally:
        store.drop_model(unique_name, confirm=unique_name)
        store.close()
