"""Measure the scoring client: predict latency from the cache, and freshness (commit → visible).

    .venv/bin/python scripts/client_bench.py --keyspace cstore_t5 [--features 2^20] [--calls 50000] [--commits 100]

Creates a throw-away model (weights + bias, random weights), opens it with :class:`cstore.Client`
(default refresh interval unless --refresh-s), then

* predict: ``model.predict_proba`` on transactions of 30 features (20 numeric, 8 categorical, 2 bool)
  drawn from 2000 distinct ones, timed one call at a time (``perf_counter_ns``); also ``score`` with
  logging and the batch form per row;
* freshness: ``--commits`` sparse gradient commits on the features of a probe transaction (several
  chunks), each at a random point of the polling cycle; the lag is from the commit returning to the
  handle's ``version`` reaching the head version (every chunk of the update visible); also reported
  from the start of the commit.

Prints one JSON document. Connection settings come from CSTORE_* / cstore.toml as usual.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid

import numpy as np

from cstore import Client
from cstore.learn import FeatureHasher


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def transaction(rng: random.Random) -> dict:
    f = {f"num_{j}": rng.random() * 100 for j in range(20)}
    f.update({f"cat_{j}": f"v{rng.randrange(50)}" for j in range(8)})
    f.update({"new_device": rng.random() < 0.1, "foreign": rng.random() < 0.2})
    return f


def summary_us(ns: list[int]) -> dict:
    us = [n / 1000 for n in ns]
    return {"p50_us": round(pct(us, 50), 2), "p99_us": round(pct(us, 99), 2), "mean_us": round(statistics.mean(us), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keyspace")
    ap.add_argument("--features", default="2^20")
    ap.add_argument("--chunk-size", type=int, default=16384)
    ap.add_argument("--calls", type=int, default=50_000)
    ap.add_argument("--commits", type=int, default=100)
    ap.add_argument("--refresh-s", type=float)
    args = ap.parse_args()
    n_features = 2 ** int(args.features.split("^")[1]) if "^" in args.features else int(args.features)
    settings = {k: v for k, v in {"keyspace": args.keyspace, "refresh_interval_s": args.refresh_s}.items() if v}
    client = Client(**settings)
    store = client.store
    name = f"bench_client_{uuid.uuid4().hex[:8]}"
    rng_np = np.random.default_rng(0)
    store.create_model(name, {"weights": rng_np.normal(0, 0.05, n_features).astype("float32"), "bias": (1,)},
                       chunk_size=args.chunk_size, metadata={"learner": {"n_features": n_features, "hash_seed": 0}})
    try:
        model = client.model(name)
        rng = random.Random(1)
        pool = [transaction(rng) for _ in range(2000)]
        for f in pool:  # warm the hasher's name cache, as a running service has
            model.predict_proba(f)
        lat = []
        for i in range(args.calls):
            f = pool[i % len(pool)]
            t0 = time.perf_counter_ns()
            model.predict_proba(f)
            lat.append(time.perf_counter_ns() - t0)
        score_lat = []
        for i in range(min(args.calls, 10_000)):
            f = pool[i % len(pool)]
            t0 = time.perf_counter_ns()
            model.score(f"bench-{i}", f)
            score_lat.append(time.perf_counter_ns() - t0)
        client.flush_log(30)
        batch_ns = []
        for _ in range(10):
            for i in range(0, 2000, 100):
                t0 = time.perf_counter_ns()
                model.predict_proba_batch(pool[i:i + 100])
                batch_ns.append((time.perf_counter_ns() - t0) // 100)

        probe = pool[0]
        idx, _ = FeatureHasher(n_features, 0).transform_one(probe)
        lags, from_start, commit_ms = [], [], []
        for _ in range(args.commits):
            time.sleep(rng.uniform(0, 0.3))
            t0 = time.monotonic()
            store.apply_update(name, "weights", np.full(len(idx), 0.001, "float32"), indices=idx.tolist(), lr=1.0)
            committed = time.monotonic()
            target = store.head_version(name)  # every chunk of the update, not just the first one seen
            while model.version < target:
                if time.monotonic() - committed > 5:
                    raise SystemExit("an update was not visible within 5 s")
                time.sleep(0.0005)
            done = time.monotonic()
            commit_ms.append((committed - t0) * 1000)
            lags.append((done - committed) * 1000)
            from_start.append((done - t0) * 1000)
        out = {
            "model": {"n_features": n_features, "chunk_size": args.chunk_size, "features_per_tx": len(probe)},
            "refresh_interval_s": client.config.refresh_interval_s,
            "predict_proba": {"calls": args.calls, **summary_us(lat)},
            "score_with_log": {"calls": len(score_lat), **summary_us(score_lat),
                               "log": client.log_stats(name)},
            "predict_proba_batch_100_per_row": summary_us(batch_ns),
            "freshness_ms": {"commits": len(lags), "p50": round(pct(lags, 50), 1), "p99": round(pct(lags, 99), 1),
                             "max": round(max(lags), 1), "mean": round(statistics.mean(lags), 1)},
            "freshness_from_commit_start_ms": {"p50": round(pct(from_start, 50), 1),
                                               "p99": round(pct(from_start, 99), 1)},
            "commit_ms": {"p50": round(pct(commit_ms, 50), 1), "p99": round(pct(commit_ms, 99), 1)},
            "status": model.status(),
        }
        print(json.dumps(out, indent=2, default=str))
    finally:
        store.drop_model(name, confirm=name)
        client.close()


if __name__ == "__main__":
    main()
