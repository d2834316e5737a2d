"""How much evidence of a drift the labels carry in the first 1,000 events after it (in memory, no Cassandra).

    .venv/bin/python scripts/drift_evidence.py [--seeds 1,2,3] [--window 250] [DATASET ...]

For each stream and seed, cstore's replica (the worker's per-event pass, block 20, no drift response)
scores the stream prequentially. Then, in windows of ``--window`` events after the detector's warm-up, it
computes the model's score statistic per hashed feature: ``z_j = sum((y - p) x_j) / sqrt(sum(p (1 - p)
x_j^2))``, the standardised residual of that feature, and of the bias. This is about N(0, 1) under a model
that fits, and it grows where the concept moved. A window counts only features with ``sum(p (1 - p)
x_j^2) > 0.5``. The script prints, per stream, the largest ``|z|`` of any window before the drift (what
noise gives on this stream) and the largest of each window in the 1,000 events after it. A detector that
looks at the model's residuals cannot find a drift whose windows stay within the noise.
"""
from __future__ import annotations

import argparse

import numpy as np

from cstore.learn import KIND_WEIGHTS, FeatureHasher, FTRLProximal
from cstore.training import DEFAULT_WARMUP
from cstore_dev.evaluation.datasets import load
from cstore_dev.evaluation.references import run_replica
from cstore_dev.evaluation.system import DEFAULT_BLOCK

N_FEATURES = 2**16  # the eval's hashed space


def learner_config() -> dict:
    """The eval's learner (FTRL alpha 0.3, per event) with no drift detector and no response."""
    return {"n_features": N_FEATURES, "hash_seed": 0, "optimizer": FTRLProximal(0.3, 1.0, 0.0, 0.0).get_config(),
            "bias_optimizer": FTRLProximal(0.3, 1.0).get_config(), "kind_weights": dict(KIND_WEIGHTS),
            "half_life_s": None, "drift": {"detector": "none"}, "drift_response": "none", "schedule": {},
            "update": "per_event", "window_s": None}


def window_z(p: np.ndarray, y: np.ndarray, indptr: np.ndarray, idx: np.ndarray, val: np.ndarray, lo: int,
             hi: int) -> tuple[float, float]:
    """The largest |z| over the window's features, and the bias's |z|."""
    a, b = indptr[lo], indptr[hi]
    event = np.repeat(np.arange(lo, hi), np.diff(indptr[lo:hi + 1]))
    _, inverse = np.unique(idx[a:b], return_inverse=True)
    s = np.bincount(inverse, (y - p)[event] * val[a:b])
    v = np.bincount(inverse, (p * (1 - p))[event] * val[a:b] ** 2)
    ok = v > 0.5
    feature = float((np.abs(s[ok]) / np.sqrt(v[ok])).max()) if ok.any() else 0.0
    bias = abs(float((y - p)[lo:hi].sum())) / float(np.sqrt((p * (1 - p))[lo:hi].sum()))
    return feature, bias


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("datasets", nargs="*", default=["sea-abrupt", "fraud", "agrawal-f1-f4", "agrawal-abrupt"])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--window", type=int, default=250)
    args = ap.parse_args()
    hasher = FeatureHasher(N_FEATURES, 0)
    for name in args.datasets:
        for seed in (int(s) for s in args.seeds.split(",")):
            st = load(name, None, seed)
            p = np.clip(run_replica(st.features, st.labels, learner_config(), DEFAULT_BLOCK)["replica"], 1e-6, 1 - 1e-6)
            indptr, idx, val = hasher.transform_many(st.features)
            drift = st.drift_points[0] if st.drift_points else st.n
            starts = range(DEFAULT_WARMUP, st.n - args.window + 1, args.window)
            before = [window_z(p, st.labels, indptr, idx, val, lo, lo + args.window) for lo in starts
                      if lo + args.window <= drift]
            after = [window_z(p, st.labels, indptr, idx, val, lo, lo + args.window) for lo in starts
                     if drift <= lo < drift + 1000]
            print(f"{name} seed {seed}: before the drift max |z| feature {max(f for f, _ in before):.1f}, bias "
                  f"{max(b for _, b in before):.1f}; the windows after it (feature/bias): "
                  + " ".join(f"{f:.1f}/{b:.1f}" for f, b in after), flush=True)


if __name__ == "__main__":
    main()
