"""``make demo``: set everything up and run the main job end to end with readable output.

Starts a local node when none answers (and leaves it running for you to explore with the CLI),
applies the schema, walks through the parameter store (create, compare-and-set updates, snapshot,
a refused bad update, rollback, replay, history, stats), then runs the main job: a fraud-like
stream of transactions is scored, labels come back as feedback, two worker processes learn, and
events/s, lag, model version and accuracy are printed as they improve.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from cstore.backend import apply_schema, connect, replication_map
from cstore.config import load_config
from cstore.errors import CstoreError, ValidationError
from cstore.store import Store
from cstore_dev.local.cluster import LocalCluster, cql_port_open


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _median_ms(figures: dict) -> str:
    fresh = figures.get("critical_fresh_ms") or []
    return f"{np.median(fresh):.0f} ms at the median" if fresh else "(none measured)"


def ensure_cluster(cfg) -> None:
    if cfg.uses_local_cluster and not cql_port_open(cfg.contact_points[0], cfg.port):
        step("starting a local Cassandra 5.0 node (first run downloads the jars from Maven Central)")
        LocalCluster(cfg.local_dir).up()


def run() -> None:
    cfg = load_config()
    ensure_cluster(cfg)
    step(f"applying the schema to keyspace {cfg.keyspace!r}")
    with connect(cfg) as backend:
        apply_schema(backend, cfg.keyspace, replication_map(cfg), log=lambda m: print("  " + m))
    store = Store.from_config(cfg)
    try:
        parameter_store_tour(store)
        step("the main job: score a fraud-like stream, send labels as feedback, two workers learn")
        from cstore_dev.fleet_demo import run as fleet_run
        figures = fleet_run(store, seconds=float(os.environ.get("DEMO_SECONDS", "45")), echo=lambda m: print("  " + m))
        step("governance: a guarded @champion alias, a feedback source that breaks, a reviewed promotion")
        from cstore_dev.governance_demo import run as governance_run
        gov = governance_run(store, echo=lambda m: print("  " + m))
    finally:
        store.close()
    step("what you saw")
    print("  1. the parameter store: chunked numpy arrays, compare-and-set updates, a bad update refused with\n"
          "     nothing written, snapshot, rollback and a bit-exact replay from the history;\n"
          "  2. the main job: a fraud-like stream scored from the cached model, its labels sent back as\n"
          f"     feedback and learned by two worker processes (accuracy {figures.get('accuracy', float('nan')):.3f}, "
          f"log loss {figures.get('log_loss', float('nan')):.3f} at the end);\n"
          "  3. critical labels (confirmed chargebacks) learned at once by the critical lane, beside the bulk\n"
          f"     micro-batches: visible to the scorer {_median_ms(figures)} after they were sent;\n"
          "  4. governance: scorers of model@champion followed a reviewed alias; when a feedback source broke,\n"
          f"     the workers' guard pinned it back to the reviewed snapshot ({gov.get('tripped_after_s')} s after),\n"
          "     a promotion was refused until the head recovered, and the audit trail says who did what, and why.")
    print("\ndemo finished: explore with `.venv/bin/cstore model list`, `cstore status <model>`, "
          "`cstore model audit <model>`; stop the node with `make down`.")


def parameter_store_tour(store: Store) -> None:
    name = "demo_fraud"
    if name in {m.name for m in store.list_models()}:
        store.drop_model(name, confirm=name)
    n = 1 << 18
    step(f"creating model {name}: weights[{n}] + bias[1] in chunks of 4096 floats")
    info = store.create_model(name, {"weights": (n,), "bias": (1,)}, chunk_size=4096,
                              metadata={"purpose": "make demo"})
    print(f"  {info.max_chunks} chunk partitions, head version {store.head_version(name)}")

    step("applying 50 sparse gradient updates (compare-and-set per touched chunk)")
    rng = np.random.default_rng(0)
    t0, lat = time.perf_counter(), []
    for _ in range(50):
        idx = rng.choice(n, 30, replace=False)
        t = time.perf_counter()
        store.apply_updates(name, {"weights": (idx, rng.normal(size=30)), "bias": rng.normal(size=1)}, lr=0.05)
        lat.append(time.perf_counter() - t)
    took = time.perf_counter() - t0
    print(f"  50 updates in {took:.2f}s; latency p50 {np.percentile(lat, 50) * 1e3:.1f} ms, "
          f"p99 {np.percentile(lat, 99) * 1e3:.1f} ms; head version {store.head_version(name)}")

    snap = store.snapshot(name, reason="demo: known-good model")
    good = store.read_model(name)
    print(f"  snapshot {snap} taken (bias = {good.params['bias'][0]:+.4f})")

    step("a bad update is refused and writes nothing")
    try:
        store.apply_update(name, "weights", [float("nan")], indices=[7])
    except ValidationError as exc:
        print(f"  refused: {exc}")
    print(f"  head version still {store.head_version(name)}")

    step("a harmful dense update, then rollback to the snapshot")
    store.apply_update(name, "weights", np.full(n, 10.0), lr=1.0, metadata={"why": "simulated bad deploy"})
    print(f"  after bad update: weights mean {store.read_model(name).params['weights'].mean():+.3f}")
    head = store.rollback(name, snap, reason="demo: undo bad deploy")
    restored = store.read_model(name)
    same = all(np.array_equal(restored.params[p], good.params[p]) for p in good.params)
    print(f"  rolled back: new head version {head}; parameters equal the snapshot: {same}")

    step("replaying history onto the snapshot reproduces the model bit for bit")
    replayed = store.replay(name, snap)
    print(f"  bit-exact: {all(np.array_equal(replayed[p], restored.params[p]) for p in replayed)}")

    step("history and stats")
    hist = store.history(name)
    kinds = {}
    for h in hist:
        kinds[h.update_type] = kinds.get(h.update_type, 0) + 1
    print(f"  {len(hist)} committed chunk updates: {kinds}")
    for row in store.stats(name):
        print(f"  bucket {time.strftime('%H:%M', time.gmtime(row['bucket_start']))}: {row['updates']} updates, "
              f"{row['chunk_commits']} chunk commits, lr mean {row['lr_mean']}, conflicts {row['conflicts']}, "
              f"{row['bytes_written']} bytes")


def main() -> None:
    try:
        run()
    except CstoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
