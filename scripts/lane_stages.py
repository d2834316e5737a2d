"""Where a critical label's time goes: the critical lane's stages, with or without bulk load.

    .venv/bin/python scripts/lane_stages.py [--bulk-rate 5000] [--labels 50] [--bulk-elsewhere]

Creates a throw-away learner (2^20 features), runs one ``Worker`` in this process (bulk loop and
critical lane), a bulk producer process at ``--bulk-rate`` events/s (0: none) and a process sending
``--labels`` critical labels 250 ms apart; prints, per stage of the critical lane's batches (listing,
fetch, rows, trace, commit, checkpoint, the whole batch), p50 / p90 / max in ms, as JSON.
``--bulk-elsewhere``: this process learns only the critical lane and a second worker process (no
critical lane) learns the bulk, which separates the GIL's share from Cassandra's.
Connection settings come from CSTORE_* / cstore.toml as usual.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from collections import defaultdict
from typing import Any

import numpy as np

from cstore.bench._latency import PROBE_HELP, PROBE_KINDS, probe_features, producer_main
from cstore.bench._workload import run_worker_until, transactions
from cstore.config import Config, load_config
from cstore.feedback import send_feedback
from cstore.store import Store
from cstore.training import Worker, create_learner


def sender(cfg: Config, name: str, n: int, probes: str = "full") -> None:
    pool = transactions(2000)
    with Store.from_config(cfg) as store:
        for i in range(n):
            send_feedback(store, name, f"c{i}", 1, features=probe_features(pool, i, f"lane_probe_{i}", probes),
                          critical=True)
            time.sleep(0.25)


def bulk_only(cfg: Config, name: str, stop: Any) -> None:
    with Store.from_config(cfg) as store:
        run_worker_until(Worker(store, name, critical=False), stop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bulk-rate", type=int, default=5000)
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--bulk-elsewhere", action="store_true")
    ap.add_argument("--probes", default=PROBE_KINDS[0], choices=PROBE_KINDS, help=PROBE_HELP)
    args = ap.parse_args()
    cfg = load_config()
    spawn = mp.get_context("spawn")
    with Store.from_config(cfg) as store:
        name = f"lanes_{int(time.time())}"
        create_learner(store, name)
        worker = Worker(store, name)
        assert worker.critical is not None
        times: dict[str, list[float]] = defaultdict(list)

        def timed(label: str, obj: Any, attr: str) -> None:
            fn = getattr(obj, attr)

            def wrapper(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    if threading.current_thread().name == "cstore-critical":
                        times[label].append((time.perf_counter() - t) * 1e3)
            setattr(obj, attr, wrapper)
        for label, obj, attr in (("list", worker.reader, "list_new"), ("fetch", worker.reader, "fetch_columns"),
                                 ("rows", worker.critical.committer, "rows"), ("trace", worker, "_trace"),
                                 ("increment", worker.critical, "increment"), ("checkpoint", worker, "_checkpoint"),
                                 ("batch", worker, "_learn")):
            timed(label, obj, attr)
        stop, out = spawn.Event(), spawn.Queue()
        procs = [spawn.Process(target=sender, args=(cfg, name, args.labels, args.probes))]
        if args.bulk_rate:
            procs.append(spawn.Process(target=producer_main, args=(cfg, name, args.bulk_rate, [], out, stop)))
        if args.bulk_elsewhere:
            setattr(worker, "step", lambda: (time.sleep(0.05), 0)[1])  # noqa: B010 - this process: the lane only
            procs.append(spawn.Process(target=bulk_only, args=(cfg, name, stop)))
        runner = threading.Thread(target=worker.run)
        runner.start()
        time.sleep(3)
        for p in procs:
            p.start()
        procs[0].join()
        time.sleep(2)
        worker.stop()
        runner.join()
        stop.set()
        for p in procs[1:]:
            p.join(60)
        print(json.dumps({label: {"n": len(v), "p50_ms": round(float(np.percentile(v, 50)), 1),
                                  "p90_ms": round(float(np.percentile(v, 90)), 1), "max_ms": round(max(v), 1)}
                          for label, v in times.items() if v}, indent=1))
        store.drop_model(name, confirm=name)


if __name__ == "__main__":
    main()
