"""Run `cstore eval` rows one after another and print them as the tables of benchmarks/QUALITY.md.

    .venv/bin/python scripts/quality_runs.py run [--only LABEL ...]   # runs, one JSON per row
    .venv/bin/python scripts/quality_runs.py table [LABEL ...]        # markdown rows from those JSONs

Each row is one command (printed under the table); its report goes to benchmarks/data/quality/LABEL.json
with the 1-minute load average when it started and the time. Rows run one at a time: the machine has two
cores and the node, the workers and the references share them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "quality"
CSTORE = str(Path(sys.executable).with_name("cstore"))

DRIFTING = ["sine-flip", "stagger-abrupt", "agrawal-abrupt", "agrawal-gradual", "agrawal-f1-f4", "sea-abrupt",
            "hyperplane-abrupt", "hyperplane-gradual", "fraud"]
STATIONARY = ["hyperplane-stationary", "rbf-stationary"]

#: label -> eval arguments (after `cstore eval`); the order is the run order.
ROWS: dict[str, list[str]] = {
    "phishing_default": ["--dataset", "phishing"],
    **{f"{d}_w2": ["--dataset", d, "--workers", "2", "--plot", f"benchmarks/quality_{d}.png"]
       for d in ["phishing", *DRIFTING, *STATIONARY]},
    "hyperplane-stationary_p2": ["--dataset", "hyperplane-stationary", "--workers", "2", "--processes"],
    "hyperplane-stationary_p4": ["--dataset", "hyperplane-stationary", "--workers", "4", "--processes"],
    "rbf-stationary_p4": ["--dataset", "rbf-stationary", "--workers", "4", "--processes"],
    "sine-flip_p4": ["--dataset", "sine-flip", "--workers", "4", "--processes"],
    "rbf-stationary_w2_s2": ["--dataset", "rbf-stationary", "--workers", "2", "--seed", "2"],
    "hyperplane-stationary_w2_s2": ["--dataset", "hyperplane-stationary", "--workers", "2", "--seed", "2"],
    "phishing_block100": ["--dataset", "phishing", "--block", "100"],
    "rbf-stationary_w2_block100": ["--dataset", "rbf-stationary", "--workers", "2", "--block", "100"],
    "hyperplane-stationary_w2_block100": ["--dataset", "hyperplane-stationary", "--workers", "2", "--block", "100"],
    # The same commands after the label-rate CUSUM joined the group's drift detection (no plots: the tracked
    # ones stay those of the rows above).
    "labels_phishing_default": ["--dataset", "phishing"],
    **{f"labels_{d}_w2": ["--dataset", d, "--workers", "2"] for d in ["phishing", *DRIFTING, *STATIONARY]},
    **{f"labels_{d}_p{k}": ["--dataset", d, "--workers", str(k), "--processes"] for d in STATIONARY for k in (2, 4)},
}
#: While this file exists another engineer is measuring latency: a row waits before it starts.
QUIET = Path(__file__).resolve().parent.parent / ".local" / "QUIET"


def run(labels: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for label in labels:
        args = ROWS[label]
        while QUIET.exists():
            time.sleep(30)
        load = os.getloadavg()[0]
        started = time.strftime("%H:%M", time.gmtime())
        print(f"[{started} UTC, load {load:.2f}] cstore eval {' '.join(args)}", file=sys.stderr, flush=True)
        res = subprocess.run([CSTORE, "eval", *args, "--json"], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  failed ({res.returncode}): {res.stderr.strip()[-400:]}", file=sys.stderr, flush=True)
            continue
        report = json.loads(res.stdout)
        report["run"] = {"label": label, "command": "cstore eval " + " ".join(args), "load": round(load, 2),
                         "started_utc": started}
        (OUT / f"{label}.json").write_text(json.dumps(report, indent=1))
        print("  " + row(report), file=sys.stderr, flush=True)


def _f(v: float | None, signed: bool = False) -> str:
    return "–" if v is None else f"{v:+.4f}" if signed else f"{v:.4f}"


def row(r: dict) -> str:
    """One markdown row: the columns of QUALITY.md's tables."""
    s = r["settings"]
    workers = f"{s['workers']} {'proc' if s['worker_mode'] == 'processes' else 'thr'}"
    if s["block"] != 20:
        workers += f", block {s['block']}"
    if s["seed"] != 1:
        workers += f", seed {s['seed']}"

    def four(metric: str, part: str = "") -> str:  # cstore / River / VW / frozen
        return " / ".join(_f(r[f"{who}_{metric}{part}"]) for who in ("cstore", "river", "vw", "frozen"))

    det = ", ".join(f"{d} ({dl})" for d, dl in zip(r["detections"], r["detection_delays"])) if r["detections"] \
        else "none (–)"
    return (f"| {r['dataset']} | {r['events']:,} | {workers} | {four('auc')} | {_f(r['auc_gap_vs_best'], True)} | "
            f"{four('logloss')} | {_f(r['logloss_gap_vs_best'], True)} | {four('auc', '_after')} | "
            f"{four('logloss', '_after')} | {det} | {r['false_alarms']} / {r['river_adwin_false_alarms']} | "
            f"{_f(r['replica_auc'])} | {r['system']['seconds']:.0f} | {r['run']['load']:.2f} |")


HEADER = ("| dataset | events | workers | AUC cstore / River / VW / frozen | AUC vs better | log loss cstore / River / "
          "VW / frozen | log loss vs better | AUC after drift c / R / V / f | log loss after drift c / R / V / f | "
          "cstore detections (delay) | false alarms cstore / River ADWIN | replica AUC | system s | load |\n"
          + "|---" * 14 + "|")


def table(labels: list[str]) -> None:
    reports = [json.loads((OUT / f"{lb}.json").read_text()) for lb in labels if (OUT / f"{lb}.json").exists()]
    print(HEADER)
    for r in reports:
        print(row(r))
    print()
    for r in reports:
        print(f"- `{r['run']['label']}` ({r['run']['started_utc']} UTC): `{r['run']['command']} --json`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("labels", nargs="*", help="rows (default: all, in order)")
    ap.add_argument("--only", nargs="*", default=None, help="rows to run (same as positional labels)")
    a = ap.parse_args()
    labels = a.labels or a.only or list(ROWS)
    unknown = [lb for lb in labels if lb not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    (run if a.what == "run" else table)(labels)


if __name__ == "__main__":
    main()
