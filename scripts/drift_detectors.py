"""The group's drift detection, old default against new, in memory (cstore's replica, no Cassandra).

    .venv/bin/python scripts/drift_detectors.py [--seeds 1] [--stationary-seeds 1,2,3] [--variants 'old;new']

For every drifting stream of ``cstore eval`` (seeds ``--seeds``) and the stationary controls (Phishing, and
hyperplane-stationary and rbf-stationary with ``--stationary-seeds``), it runs
:func:`cstore_dev.evaluation.references.run_replica` (the worker's per-event pass at block 20, the shared
detectors fed each block's losses and labels, the learning-rate boost on a drift) with the eval's learner
(FTRL alpha 0.3, 2^16 features) and each variant of the drift settings:

* ``old``: Page-Hinkley on the loss (2 confirmations), the label-rate CUSUM off: the default before it;
* ``new``: the default now: the same, and the label-rate CUSUM beside it (``DEFAULT_LABEL_RATE``);
* ``labels``: the label-rate CUSUM alone; ``shift=S,threshold=H``: the new default with other CUSUM settings.

It prints one row per variant: per drifting stream ``delay/false alarms`` ("–": not found within 1,000
events of the drift's start) and the false alarms summed over the stationary runs, scored like ``cstore
eval`` (``cstore_dev.evaluation.metrics.score_detections``).
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from cstore.learn import KIND_WEIGHTS, FTRLProximal
from cstore_dev.evaluation.datasets import load
from cstore_dev.evaluation.metrics import score_detections
from cstore_dev.evaluation.references import run_replica
from cstore_dev.evaluation.run import MAX_DELAY
from cstore_dev.evaluation.system import DEFAULT_BLOCK

DRIFTING = ["sine-flip", "stagger-abrupt", "agrawal-abrupt", "agrawal-gradual", "agrawal-f1-f4", "sea-abrupt",
            "hyperplane-abrupt", "hyperplane-gradual", "fraud"]
STATIONARY = ["hyperplane-stationary", "rbf-stationary"]


def drift_settings(variant: str) -> dict[str, Any]:
    """The learner's drift section (what create_learner stores at its defaults) for one variant."""
    base: dict[str, Any] = {"detector": "page_hinkley", "params": {}, "confirmations": 2, "within": 2000,
                            "warmup": 1000}
    if variant == "old":
        return {**base, "label_rate": False}
    if variant == "new":
        return base
    if variant == "labels":
        return {**base, "detector": "none_but_labels"}
    return {**base, "label_rate": {k: float(v) for k, v in (kv.split("=") for kv in variant.split(","))}}


def learner(variant: str) -> dict[str, Any]:
    """The eval's learner config (FTRL alpha 0.3, beta 1, 2^16 features, per event, boost on drift)."""
    drift = drift_settings(variant)
    if drift["detector"] == "none_but_labels":  # the CUSUM alone: a loss detector that never fires
        drift = {**drift, "detector": "page_hinkley", "params": {"threshold": 1e12}}
    return {"n_features": 2**16, "hash_seed": 0, "optimizer": FTRLProximal(0.3, 1.0, 0.0, 0.0).get_config(),
            "bias_optimizer": FTRLProximal(0.3, 1.0).get_config(), "kind_weights": dict(KIND_WEIGHTS),
            "half_life_s": None, "drift": drift, "drift_response": "boost", "schedule": {},
            "update": "per_event", "window_s": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--stationary-seeds", default="1,2,3")
    ap.add_argument("--variants", default="old;new", help="';'-separated: old, new, labels, shift=S,threshold=H")
    ap.add_argument("--datasets", default=",".join(DRIFTING))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [(d, s) for d in args.datasets.split(",") if d for s in seeds]
    controls = [("phishing", 1)] + [(d, s) for d in STATIONARY for s in map(int, args.stationary_seeds.split(","))]
    streams = {(d, s): load(d, None, s) for d, s in runs + controls}
    t0 = time.time()
    for v in args.variants.split(";"):
        if v:
            cells = []
            for d, s in runs:
                st = streams[(d, s)]
                det = run_replica(st.features, st.labels, learner(v), DEFAULT_BLOCK)["replica_detections"]
                sc = score_detections(det, st.drift_points, st.drift_widths, st.n, max_delay=MAX_DELAY)
                delay = sc.matched[0]["delay"]
                shown = "–" if delay is None or delay > MAX_DELAY else f"{delay:,}"
                late = "" if delay is None or delay <= MAX_DELAY else f" (found at {delay:,})"
                cells.append(f"{shown} / {sc.false_alarms}{late}")
            fa = []
            for d, s in controls:
                st = streams[(d, s)]
                fa.append(len(run_replica(st.features, st.labels, learner(v), DEFAULT_BLOCK)["replica_detections"]))
            print(f"| {v} | " + " | ".join(cells) + f" | {sum(fa)} (of {len(controls)} runs: {fa}) |", flush=True)
    print(f"({time.time() - t0:.0f} s; streams: {', '.join(f'{d} {s}' for d, s in runs)})")


if __name__ == "__main__":
    main()
