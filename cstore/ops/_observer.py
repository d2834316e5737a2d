"""Feeds a running :class:`~cstore.training.Worker` into Prometheus metrics and the readiness probe.

The worker stays free of metrics code: it calls an optional ``on_commit`` hook, and this observer
samples its counters, leases and lag once a second from a daemon thread.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from cstore.core import UpdateResult
from cstore.ops._http import Readiness
from cstore.ops._metrics import WorkerMetrics
from cstore.training import Worker

log = logging.getLogger("cstore.worker")


class WorkerObserver:
    """Keeps ``metrics`` and ``readiness`` in step with ``worker``."""

    def __init__(self, worker: Worker, metrics: WorkerMetrics, readiness: Readiness, *, interval_s: float = 1.0,
                 lag_every_s: float = 5.0) -> None:
        self.worker = worker
        self.metrics = metrics
        self.readiness = readiness
        self.interval_s = interval_s
        self.lag_every_s = lag_every_s
        self._seen: dict[str, float] = {}
        self._held: set[int] = set()
        self._trips: dict[str, int] = {}
        self._last_lag = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cstore-observer", daemon=True)
        worker.on_commit = self.on_commit

    def on_commit(self, result: UpdateResult, seconds: float) -> None:
        self.metrics.record_commit(len(result.commits), seconds, conflicts=result.conflicts, retries=result.retries)

    def start(self) -> WorkerObserver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.readiness.set_unready("stopping: finishing the batch and releasing leases")

    def _delta(self, key: str) -> int:
        return int(self._fdelta(key))

    def _fdelta(self, key: str) -> float:
        now = float(self.worker.stats.get(key, 0))
        d, self._seen[key] = now - self._seen.get(key, 0), now
        return max(d, 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as exc:  # metrics must never take the worker down
                log.debug("metrics sample failed: %s", exc)

    def sample(self) -> None:
        w, m = self.worker, self.metrics
        m.record_learned(self._delta("learned"))
        m.record_poisoned(self._delta("poisoned"))
        m.record_batch_errors(self._delta("errors"))
        m.record_turns(self._delta("turns"), self._fdelta("turn_wait_s"), self._delta("turns_missed"))
        for _ in range(self._delta("drifts")):
            m.record_drift()
        held = set(w.leases.held())
        for p in held - self._held:
            m.record_lease_change("acquired", p)
        for p in self._held - held:
            m.record_lease_change("lost" if not w.stopping else "released", p)
            m.forget_partition(p)
        self._held = held
        m.set_leases_held(len(held))
        for alias, watched in list(w.guard.watched.items()):
            window = watched.window
            m.set_guard(alias, window.summary(), window.regression(), window.failing())
        for alias, n in list(w.guard.trips.items()):
            if n > self._trips.get(alias, 0):
                m.record_guard_trip(alias, n - self._trips.get(alias, 0))
                self._trips[alias] = n
        if not w.stopping:
            self.readiness.set_ready(f"holding {len(held)} lease(s)" if held else "waiting for leases")
        m.set_ready(self.readiness()[0])
        if held and time.monotonic() - self._last_lag > self.lag_every_s:
            self._last_lag = time.monotonic()
            for p, row in w.reader.lag(sorted(held)).items():
                m.set_lag(p, _age_s(row.get("checkpoint_at")), row["lag_events"])


def _age_s(iso: Any) -> float:
    if not iso:
        return 0.0
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds())
