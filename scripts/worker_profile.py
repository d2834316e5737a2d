"""Where one worker's bulk batch goes, in isolation: cProfile over a few 5,000-event batches.

    .venv/bin/python scripts/worker_profile.py [--batches 8] [--top 30]

Creates a throw-away learner (2^20 features, as `cstore bench latency`), writes 60,000 events of the
bench's transaction pool as 5,000-event column batches (`send_batch`), lets one `Worker` (no critical
lane) learn a first batch, then profiles the next ``--batches`` and prints ms per batch and the
functions with the most cumulative time. Connection settings come from CSTORE_* / cstore.toml.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from cstore.bench._latency import _columns
from cstore.bench._workload import temp_learner, transactions
from cstore.config import load_config
from cstore.feedback import FeedbackWriter
from cstore.store import Store
from cstore.training import Worker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    with Store.from_config(load_config()) as store, temp_learner(store, "profile") as name:
        pool = transactions(2000)
        with FeedbackWriter(store, name) as writer:
            for b in range(args.batches + 4):
                writer.send_batch([f"e{b}-{j}" for j in range(5000)], (np.arange(5000) % 20 == 0).astype(float),
                                  kind="explicit", features=_columns(pool, b * 5000, 5000))
        worker = Worker(store, name, critical=False)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 30:  # leases, cursors, the first batch
            worker.maintain()
            if worker.step():
                break
        profile = cProfile.Profile()
        t0, events = time.perf_counter(), 0
        profile.enable()
        for _ in range(args.batches):
            events += worker.step()
        profile.disable()
        elapsed = time.perf_counter() - t0
        print(f"{events} events in {args.batches} steps: {1000 * elapsed / args.batches:.0f} ms per batch")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
