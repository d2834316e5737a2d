"""Figures for benchmarks/RESULTS.md, from `cstore bench … --json` results.

    python benchmarks/plot.py --run      # measure: `cstore bench all --json` and an ingest sweep over concurrency
    python benchmarks/plot.py            # plot what benchmarks/data/ holds

Writes ``benchmarks/throughput_vs_concurrency.png`` (ingest: cstore's buffered writer vs the raw-driver
ceiling, events/s against requests in flight) and ``benchmarks/latency.png`` (distributions of one
cached prediction and of end-to-end freshness). Needs the ``bench`` extra (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CONCURRENCY = (1, 4, 16, 64, 256)


def _cstore(*args: str) -> dict:
    """Run ``cstore bench … --json`` and return its result, with the load average around it."""
    load_before = os.getloadavg()[0]
    cmd = [str(Path(sys.executable).with_name("cstore")), "bench", *args, "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["command"] = "cstore bench " + " ".join(args) + " --json"
    return result


def run(quick: bool, duration: float) -> None:
    DATA.mkdir(exist_ok=True)
    all_args = ["all", "--quick"] if quick else ["all", "--duration", str(duration)]
    print("running", "cstore bench " + " ".join(all_args), flush=True)
    (DATA / "all.json").write_text(json.dumps(_cstore(*all_args), indent=1, sort_keys=True))
    for c in CONCURRENCY:
        print(f"running ingest at concurrency {c}", flush=True)
        res = _cstore("ingest", "--duration", "6", "--concurrency", str(c))
        (DATA / f"ingest_c{c}.json").write_text(json.dumps(res, indent=1, sort_keys=True))


def plot() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sweep = sorted((json.loads(p.read_text()) for p in DATA.glob("ingest_c*.json")),
                   key=lambda r: int(r["command"].split("--concurrency ")[1].split()[0]))
    if sweep:
        cs = [int(r["command"].split("--concurrency ")[1].split()[0]) for r in sweep]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.plot(cs, [r["ingest_events_per_s"] for r in sweep], "o-",
                label="cstore send_batch (columns; 8 segments in flight at every C)")
        if all("ingest_send_events_per_s" in r for r in sweep):
            ax.plot(cs, [r["ingest_send_events_per_s"] for r in sweep], "^-", label="cstore send (one event per call)")
        ax.plot(cs, [r["ceiling_events_per_s"] for r in sweep], "s--", label="ceiling: one INSERT per event")
        ax.axhline(100_000, color="grey", lw=0.8, ls=":", label="goal: 100,000 events/s")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("requests in flight (--concurrency)")
        ax.set_ylabel("durable events / s")
        loads = ", ".join(f"{r['loadavg_1m'][0]:.0f}" for r in sweep)
        ax.set_title(f"Feedback ingest vs concurrency (1 node, 2 cores; load avg {loads})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(HERE / "throughput_vs_concurrency.png", dpi=120)
        print("wrote", HERE / "throughput_vs_concurrency.png")
    all_path = DATA / "all.json"
    if all_path.exists():
        res = json.loads(all_path.read_text())
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        score = np.asarray(res.get("score_distribution_us", []), dtype=float)
        if score.size:
            bins = np.logspace(np.log10(max(score.min(), 1)), np.log10(score.max()), 60)
            a1.hist(score, bins=bins, color="tab:blue")
            a1.set_xscale("log")
            for q, ls in ((50, "-"), (99, "--")):
                a1.axvline(np.percentile(score, q), color="k", ls=ls, lw=0.8,
                           label=f"p{q} {np.percentile(score, q):.0f} µs")
            a1.axvline(200, color="red", lw=0.8, ls=":", label="goal p99 < 200 µs")
            a1.set_xlabel("one cached prediction, ~30 features (µs)")
            a1.set_ylabel("calls")
            a1.legend(fontsize=8)
        fresh = np.sort(np.asarray(res.get("e2e_freshness_ms", []), dtype=float))
        if fresh.size:
            a2.plot(fresh, np.arange(1, fresh.size + 1) / fresh.size, drawstyle="steps-post")
            a2.axvline(1000, color="red", lw=0.8, ls=":", label="goal p99 < 1000 ms")
            a2.set_xlabel("feedback acknowledged → visible in a scorer's cache (ms)")
            a2.set_ylabel("fraction of batches")
            a2.legend(fontsize=8)
            a2.grid(True, alpha=0.3)
        fig.suptitle(f"Latency distributions ({res.get('command', 'cstore bench all')}; "
                     f"load avg {res.get('loadavg_1m', ['?'])[0]} on 2 cores)", fontsize=9)
        fig.tight_layout()
        fig.savefig(HERE / "latency.png", dpi=120)
        print("wrote", HERE / "latency.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="measure first (several minutes)")
    ap.add_argument("--full", action="store_true", help="with --run: `all --duration D` instead of `all --quick`")
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    if args.run:
        run(not args.full, args.duration)
    plot()


if __name__ == "__main__":
    main()
