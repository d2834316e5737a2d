"""The freshness half of `cstore bench latency` alone, as one JSON line (for old/new comparisons).

    .venv/bin/python scripts/freshness_only.py [--seconds 20] [--warmup 0] [--workers 2] [--label new] [--chunk-size N]

Runs `cstore.bench._latency.run_freshness` (the bench's workers, producer at 5,000 events/s, probes and
scorer) and prints its figures with the time, the load average before and after, and the local node's
CPU share over the run (its `/proc` stat). To compare code trees in one sitting, alternate runs with
`PYTHONPATH=<a git worktree of the old commit>`, or layouts with `--chunk-size` (the learner's weights per
chunk; default: `cstore.training.LEARNER_CHUNK_SIZE`); the JSON lines go to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from cstore.bench._latency import PROBE_HELP, PROBE_KINDS, run_freshness
from cstore.bench._runner import BenchContext
from cstore.config import load_config

KEYS = ("critical_fresh_p50_ms", "critical_fresh_p99_ms", "critical_fresh_max_ms", "critical_fresh_probes",
        "bulk_fresh_p50_ms", "bulk_fresh_p99_ms", "bulk_fresh_max_ms", "learned_events_per_s", "bulk_events_per_s",
        "worker_events_per_batch", "worker_ms_per_batch", "critical_ms_per_batch", "chunk_commits", "chunk_conflicts")


def node_cpu_s() -> float | None:
    """CPU seconds of the local Cassandra node so far (None when there is none on this machine)."""
    found = subprocess.run(["pgrep", "-f", "CassandraDaemon"], capture_output=True, text=True).stdout.split()
    if not found:
        return None
    fields = open(f"/proc/{found[0]}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=0.0, help="seconds of load before measuring (0: none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--label", default="run")
    ap.add_argument("--probes", default=PROBE_KINDS[0], choices=PROBE_KINDS, help=PROBE_HELP)
    ap.add_argument("--chunk-size", type=int, default=None, help="the learner's weights per chunk (default: "
                    "cstore.training.LEARNER_CHUNK_SIZE)")
    args = ap.parse_args()
    ctx = BenchContext(load_config(), duration=args.seconds, workers=args.workers, log=lambda m: None)
    load0, at, cpu0, t0 = os.getloadavg()[0], time.strftime("%H:%M:%S"), node_cpu_s(), time.monotonic()
    out = run_freshness(ctx, args.seconds, probes=args.probes, chunk_size=args.chunk_size,
                        **({"warmup_s": args.warmup} if args.warmup else {}))  # (older trees have no warm-up)
    cpu1 = node_cpu_s()
    node = None if cpu0 is None or cpu1 is None else round(100 * (cpu1 - cpu0) / (time.monotonic() - t0))
    print(json.dumps({"label": args.label, "probes": args.probes, "chunk_size": args.chunk_size, "at": at,
                      "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
                      **{k: out.get(k) for k in KEYS}, "node_cpu_pct": node}))


if __name__ == "__main__":
    main()
