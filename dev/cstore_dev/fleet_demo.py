"""The main job, end to end: transactions are scored, labels come back as feedback, two workers learn.

``python -m cstore_dev.fleet_demo`` (or :func:`run` from ``make demo``) prints, once a second, the events/s
ingested, the fleet's lag, the model's head version and the accuracy / log loss of the scores given to
*new* transactions (scored before their labels were known), so the learning shows as it happens. Every
few seconds a confirmed chargeback is sent as a *critical* label and the line shows how long until a
scorer's cached model (``Client().model()``) had learned it. The workers' logs go to files named at the
end, and a PNG of the run (learning curve, critical freshness) is written when matplotlib is installed.
"""
from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cstore.feedback import FeedbackWriter, send_feedback
from cstore.learn import FeatureHasher, log_loss, predict_proba_batch
from cstore.scoring import Client
from cstore.ops import fleet_status
from cstore.training import create_learner
from cstore_dev.fraudsim import FraudStream


def _worker_cmd(store, name: str, lease_ttl: float) -> list[str]:
    cfg = store.config
    return [sys.executable, "-c", "from cstore.cli import main; main()", "--contact-points",
            ",".join(cfg.contact_points), "--port", str(cfg.port), "--keyspace", cfg.keyspace, "--profile", cfg.profile,
            "worker", "--model", name, "--lease-ttl", str(lease_ttl), "--log-format", "text"]


def start_workers(store, name: str, n: int, prefix: str) -> tuple[list[Path], list[subprocess.Popen]]:
    """``n`` `cstore worker` processes learning ``name``, each logging to .local/demo/<prefix>-<i>.log."""
    logs = [Path(store.config.local_dir) / "demo" / f"{prefix}-{i + 1}.log" for i in range(n)]
    logs[0].parent.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(_worker_cmd(store, name, 5.0), stdout=log.open("w"), stderr=subprocess.STDOUT)
             for log in logs]
    return logs, procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=60)


class CriticalProbe:
    """Sends a critical label (a transaction's features and a feature of its own) and times until the
    scorer has learned it: the probe feature moves only with this label."""

    def __init__(self, store, client, name: str, n_features: int) -> None:
        self.store, self.model, self.name = store, client.model(name), name
        self.hasher, self.i, self.pending = FeatureHasher(n_features), 0, None
        self.fresh_ms: list[float] = []

    def send(self, features: dict) -> None:
        feature = f"demo_chargeback_{self.i}"
        self.i += 1
        t = time.monotonic()
        send_feedback(self.store, self.name, f"chargeback-{self.i}", 1, kind="explicit",
                      features={**features, feature: 1.0}, critical=True)
        self.pending = (feature, t)

    def poll(self) -> None:
        if self.pending is None or not self.model.loaded:
            return
        feature, t = self.pending
        with_f, without = self.model.predict_proba_batch([{feature: 1.0}, {}])
        if abs(math.log(with_f / (1 - with_f)) - math.log(without / (1 - without))) > 1e-4:
            self.fresh_ms.append((time.monotonic() - t) * 1e3)
            self.pending = None


def run(store, *, seconds: float = 30.0, rate: float = 3000.0, workers: int = 2, n_features: int = 2**16,
        echo: Callable[[str], None] = print) -> dict:
    """Run the demo for ``seconds``; returns the last line's figures."""
    name = f"fraud_demo_{int(time.time())}"
    create_learner(store, name, n_features=n_features, partitions=8)
    hasher, gen = FeatureHasher(n_features), FraudStream(seed=int(time.time()))
    logs, procs = start_workers(store, name, workers, "worker")
    client = Client(config=store.config)
    probe = CriticalProbe(store, client, name, n_features)
    recent: deque = deque(maxlen=5000)  # (p, y) of the latest transactions, scored before learning from them
    sent, start, last_print, weights, bias, figures = 0, time.monotonic(), 0.0, None, 0.0, {}
    curve: list[dict] = []
    echo(f"model {name}: {workers} workers learning; {rate:.0f} transactions/s for {seconds:.0f} s; a critical "
         f"label (a confirmed chargeback) every 3 s")
    echo(f"{'t':>5} {'sent':>8} {'events/s':>9} {'lag':>7} {'version':>8} {'accuracy':>9} {'log loss':>9} "
         f"{'critical label -> scorer':>25}")
    try:
        with FeedbackWriter(store, name, linger_ms=50) as writer:
            while (now := time.monotonic() - start) < seconds:
                probe.poll()
                txs = gen.sample(max(1, int(rate / 10)))
                if now >= 3 * probe.i + 3 and probe.pending is None:
                    probe.send(txs[0]["features"])
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
                    curve.append(figures)
                    last = f"{probe.fresh_ms[-1]:.0f} ms (label {len(probe.fresh_ms)})" if probe.fresh_ms else "-"
                    echo(f"{now:5.0f} {sent:8d} {figures['events_per_s']:9.0f} {figures['lag']:7d} "
                         f"{figures['version']:8d} {figures['accuracy']:9.4f} {figures['log_loss']:9.4f} {last:>25}")
                while sent / rate > time.monotonic() - start:  # on schedule; meanwhile watch the probe
                    probe.poll()
                    time.sleep(0.005)
    finally:
        stop_workers(procs)
        client.close()
    st = fleet_status(store, name)
    fresh = probe.fresh_ms
    echo(f"done: {sent} transactions, {st['learned_events']} learned, lag {st['lag_events']}, "
         f"head version {st['head_version']}, drift detections {st['drift']['detections']}")
    if fresh:
        echo(f"critical labels: {len(fresh)} learned and visible to the scorer, median {np.median(fresh):.0f} ms, "
             f"slowest {max(fresh):.0f} ms")
    echo(f"worker logs: {', '.join(str(p) for p in logs)}")
    png = _plot(curve, fresh, Path(store.config.local_dir) / "demo" / "demo.png")
    if png:
        echo(f"picture of the run: {png}")
    return {**figures, "critical_fresh_ms": fresh, "worker_logs": [str(p) for p in logs]}


def _plot(curve: list[dict], fresh: list[float], path: Path) -> Path | None:
    """Learning curve and critical-label freshness as a PNG (None when matplotlib is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    pts = [c for c in curve if not math.isnan(c["accuracy"])]
    a.plot([c["t"] for c in pts], [c["log_loss"] for c in pts], label="log loss (new transactions)")
    a.plot([c["t"] for c in pts], [c["accuracy"] for c in pts], label="accuracy")
    a.set_xlabel("seconds")
    a.set_title("learning while scoring")
    a.legend()
    b.bar(range(1, len(fresh) + 1), fresh)
    b.set_xticks(range(1, len(fresh) + 1))
    b.set_xlabel("critical label")
    b.set_ylabel("ms until the scorer had learned it")
    b.set_title("critical labels: send -> scorer")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
