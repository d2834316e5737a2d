"""What a learner pays to read the chunks another worker moved: two workers of one model, alternating.

    .venv/bin/python scripts/two_writers.py [--events 2500] [--batches 16]

Creates a throw-away learner (2^20 features, as `cstore bench latency`), writes 24 column batches of the
bench's transaction pool, and lets two `Worker`s in two consumer groups (so each learns every event and
every batch follows a commit of the other) take 16 batches in turn; prints the events/s and the p50 and
mean of `Committer.rows` (the read of the batch's current rows) and of a whole batch. Compare code trees
with `PYTHONPATH=<a git worktree of the old commit>`.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import numpy as np

from cstore.bench._latency import _columns
from cstore.bench._workload import temp_learner, transactions
from cstore.config import load_config
from cstore.feedback import FeedbackWriter
from cstore.store import Store
from cstore.training import Worker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=2500, help="events per written batch")
    ap.add_argument("--batches", type=int, default=16)
    args = ap.parse_args()
    cfg, per = load_config(), args.events
    with Store.from_config(cfg) as sa, Store.from_config(cfg) as sb, temp_learner(sa, "two") as name:
        pool = transactions(2000)
        with FeedbackWriter(sa, name) as writer:
            for b in range(24):
                writer.send_batch([f"e{b}-{j}" for j in range(per)], (np.arange(per) % 20 == 0).astype(float),
                                  kind="explicit", features=_columns(pool, b * per, per))
        wa, wb = Worker(sa, name, critical=False), Worker(sb, name, critical=False, group="other")
        times: dict[str, list[float]] = defaultdict(list)
        for w in (wa, wb):
            committer: Any = w._bulk.committer
            rows = committer.rows

            def timed(*a: Any, _rows: Any = rows, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return _rows(*a, **k)
                finally:
                    times["rows"].append(1e3 * (time.perf_counter() - t))
            committer.rows = timed
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 30 and not (len(wa.leases.held()) == len(wb.leases.held()) == 16):
            wa.maintain()
            wb.maintain()
            time.sleep(0.2)
        wa.maintain()
        wb.maintain()
        times.clear()
        n, t0 = 0, time.perf_counter()
        for i in range(args.batches):
            t = time.perf_counter()
            n += (wa if i % 2 == 0 else wb).step()
            times["batch"].append(1e3 * (time.perf_counter() - t))
        elapsed = time.perf_counter() - t0
        r, bt = np.array(times["rows"]), np.array(times["batch"])
        print(f"{n} events, {n / elapsed:.0f}/s; rows() p50 {np.median(r):.1f} ms, mean {r.mean():.1f} ms; "
              f"batch p50 {np.median(bt):.0f} ms")
        wa.stop()
        wb.stop()


if __name__ == "__main__":
    main()
