"""The main job, end to end: transactions are scored, labels come back as feedback, two workers learn.

``python -m cstore_dev.fleet_demo`` (or :func:`run` from ``make demo``) prints, once a second, the events/s
ingested, the fleet's lag, the model's head version and the accuracy / log loss of the scores given to
*new* transactions (scored before their labels were known), so the learning shows as it happens.
"""
from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from cstore.feedback import FeedbackWriter
from cstore.learn import FeatureHasher, log_loss, predict_proba_batch
from cstore.ops import fleet_status
from cstore.training import create_learner
from cstore_dev.fraudsim import FraudStream


def _worker_cmd(store, name: str, lease_ttl: float) -> list[str]:
    cfg = store.config
    return [sys.executable, "-c", "from cstore.cli import main; main()", "--contact-points",
            ",".join(cfg.contact_points), "--port", str(cfg.port), "--keyspace", cfg.keyspace, "--profile", cfg.profile,
            "worker", "--model", name, "--lease-ttl", str(lease_ttl), "--batch-size", "2000", "--max-wait-ms", "200"]


def run(store, *, seconds: float = 30.0, rate: float = 3000.0, workers: int = 2, n_features: int = 2**16,
        echo: Callable[[str], None] = print) -> dict:
    """Run the demo for ``seconds``; returns the last line's figures."""
    name = f"fraud_demo_{int(time.time())}"
    create_learner(store, name, n_features=n_features, partitions=8)
    hasher, gen = FeatureHasher(n_features), FraudStream(seed=int(time.time()))
    procs = [subprocess.Popen(_worker_cmd(store, name, 5.0)) for _ in range(workers)]
    recent: deque = deque(maxlen=5000)  # (p, y) of the latest transactions, scored before learning from them
    sent, start, last_print, weights, bias, figures = 0, time.monotonic(), 0.0, None, 0.0, {}
    echo(f"model {name}: {workers} workers learning; {rate:.0f} transactions/s for {seconds:.0f} s")
    echo(f"{'t':>5} {'sent':>8} {'events/s':>9} {'lag':>7} {'version':>8} {'accuracy':>9} {'log loss':>9}")
    try:
        with FeedbackWriter(store, name, linger_ms=50) as writer:
            while (now := time.monotonic() - start) < seconds:
                txs = gen.sample(max(1, int(rate / 10)))
                if weights is not None:
                    indptr, idx, val = hasher.transform_many([t["features"] for t in txs])
                    p = predict_proba_batch(weights, bias, indptr, idx, val)
                    recent.extend(zip(p.tolist(), (t["label"] for t in txs)))
                for tx in txs:
                    writer.send(tx["entity_id"], tx["label"], features=tx["features"])
                sent += len(txs)
                if now - last_print >= 1.0:
                    last_print = now
                    params = store.read_model(name, params=["weights", "bias"]).params
                    weights, bias = params["weights"], float(params["bias"][0])
                    figures = _line(store, name, now, sent, recent)
                    echo(f"{now:5.0f} {sent:8d} {figures['events_per_s']:9.0f} {figures['lag']:7d} "
                         f"{figures['version']:8d} {figures['accuracy']:9.4f} {figures['log_loss']:9.4f}")
                time.sleep(max(0.0, sent / rate - (time.monotonic() - start)))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    st = fleet_status(store, name)
    echo(f"done: {sent} transactions, {st['learned_events']} learned, lag {st['lag_events']}, "
         f"head version {st['head_version']}, drift detections {st['drift']['detections']}")
    return figures


def _line(store, name: str, now: float, sent: int, recent: deque) -> dict:
    st = fleet_status(store, name)
    p = np.array([r[0] for r in recent]) if recent else np.array([0.5])
    y = np.array([r[1] for r in recent]) if recent else np.array([0.0])
    return {"t": now, "sent": sent, "events_per_s": sent / max(now, 1e-6), "lag": st["lag_events"],
            "version": st["head_version"], "accuracy": float(np.mean((p > 0.5) == y)) if recent else math.nan,
            "log_loss": float(np.mean(log_loss(p, y))) if recent else math.nan}


if __name__ == "__main__":  # pragma: no cover - manual entry point
    from cstore.store import connect
    with connect() as s:
        run(s, seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
