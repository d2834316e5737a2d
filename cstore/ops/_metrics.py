"""The worker's Prometheus metrics (one process or several).

A worker builds one :class:`WorkerMetrics`, records what it does through its methods, and
serves ``/metrics``, ``/healthz`` and ``/readyz`` with :func:`~cstore.ops.serve`::

    metrics = WorkerMetrics(model="fraud")
    readiness = Readiness()                       # "starting" until told otherwise
    server = serve(9108, "0.0.0.0", readiness, registry=metrics.registry)
    ...
    readiness.set_ready()                         # connected, holding leases or waiting for them
    metrics.record_commit(chunks=12, seconds=0.004, conflicts=1, retries=1)
    ...
    readiness.set_unready("draining after SIGTERM")
    server.close()

With ``--processes K`` the children each count in their own process: call
:func:`enable_multiprocess` in the parent *before* starting them, serve
:func:`multiprocess_registry` from the parent, and call :func:`mark_process_dead` when a
child exits. Counters and histograms are summed over the processes; the lag gauge keeps the
most recent value per partition from the live processes and the drift score the maximum.
"""
from __future__ import annotations

import os
from typing import Any
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest, values

from cstore.ops._build import BuildInfo

__all__ = ["COMMIT_LATENCY_BUCKETS", "DEFAULT_PORT", "LEASE_CHANGES", "WorkerMetrics", "enable_multiprocess",
           "mark_process_dead", "multiprocess_dir", "multiprocess_registry"]

# Commit latency of one micro-batch (every touched chunk, retries included), in seconds:
# sub-millisecond on a local node up to the driver's request timeout under trouble.
COMMIT_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0, 30.0)
LEASE_CHANGES = ("acquired", "lost", "released")
DEFAULT_PORT = 9108


class WorkerMetrics:
    """Counters, gauges and a histogram for one worker process learning one model.

    Every series carries the ``model`` label. The metric objects are public attributes for
    anything the methods do not cover; the methods are the intended way in.
    """

    def __init__(self, model: str, registry: CollectorRegistry | None = None, *,
                 process_metrics: bool = True) -> None:
        self.model = model
        own = registry is None
        self.registry = registry if registry is not None else CollectorRegistry()
        if own and process_metrics and not multiprocess_dir():
            ProcessCollector(registry=self.registry)  # cpu, memory, fds (Linux /proc)
        if own and not multiprocess_dir():  # a supervisor's aggregated registry carries it once
            self.registry.register(BuildInfo())
        reg = self.registry
        m = ["model"]
        self.events_learned = Counter(
            "cstore_events_learned", "Feedback events learned (included in a committed micro-batch).",
            m, registry=reg)
        self.events_poisoned = Counter(
            "cstore_events_poisoned", "Stored feedback events a learner cannot use (written by another producer, "
            "or damaged): counted, logged with their segment id and passed over.", m, registry=reg)
        self.batches = Counter(
            "cstore_batches_committed", "Micro-batches whose update was committed.", m, registry=reg)
        self.commits = Counter(
            "cstore_chunk_commits", "Chunk writes acknowledged (one per touched chunk per batch).",
            m, registry=reg)
        self.conflicts = Counter(
            "cstore_commit_conflicts",
            "Chunk writes that met a concurrent writer: compare-and-set rejected (strong) or an "
            "overwrite detected (eventual).", m, registry=reg)
        self.retries = Counter(
            "cstore_commit_retries", "Chunk write attempts repeated after a conflict or a timeout.",
            m, registry=reg)
        self.commit_latency = Histogram(
            "cstore_commit_latency_seconds",
            "Time to commit one micro-batch: every touched chunk, retries included.",
            m, buckets=COMMIT_LATENCY_BUCKETS, registry=reg)
        self.lag = Gauge(
            "cstore_partition_lag_seconds",
            "Age of the oldest feedback not yet learned in a leased partition (0 when caught up).",
            m + ["partition"], multiprocess_mode="livemostrecent", registry=reg)
        self.lag_events = Gauge(
            "cstore_partition_lag_events", "Feedback events not yet learned in a leased partition.",
            m + ["partition"], multiprocess_mode="livemostrecent", registry=reg)
        self.drift_score = Gauge(
            "cstore_drift_score", "Current drift statistic of the prequential loss (higher = more drift).",
            m, multiprocess_mode="livemax", registry=reg)
        self.drifts = Counter(
            "cstore_drift_detections", "Drifts detected (each triggers the configured response).",
            m, registry=reg)
        self.lease_changes = Counter(
            "cstore_lease_changes", "Partition lease changes: acquired, lost (expired or taken) or released.",
            m + ["change"], registry=reg)
        self.leases_held = Gauge(
            "cstore_leases_held", "Partition leases this process holds now.",
            m, multiprocess_mode="livesum", registry=reg)
        self.worker_ready = Gauge(
            "cstore_worker_ready", "1 while the worker is ready (/readyz): connected, holding leases or waiting.",
            m, multiprocess_mode="livemin", registry=reg)
        self.batch_errors = Counter(
            "cstore_batch_errors", "Batches that failed (an outage, a failing feature lookup) and are read again.",
            m, registry=reg)
        self.commit_turns = Counter(
            "cstore_commit_turns", "Bulk batches committed in the model's commit turn (workers sharing a model "
            "take turns rather than refusing each other's chunk compare-and-sets).", m, registry=reg)
        self.commit_turn_wait = Counter(
            "cstore_commit_turn_wait_seconds", "Seconds spent waiting for the model's commit turn.",
            m, registry=reg)
        self.commit_turns_missed = Counter(
            "cstore_commit_turns_missed", "Waits for the commit turn that ran out (the batch committed without it: "
            "a holder stalled past its TTL, or Cassandra refused the turn).", m, registry=reg)
        self.guard_regression = Gauge(
            "cstore_guard_regression", "A guarded alias: the head's windowed log loss minus its baseline's "
            "on the same trusted labels (this worker's window; > max_regression trips the guard).",
            m + ["alias"], multiprocess_mode="livemax", registry=reg)
        self.guard_log_loss = Gauge(
            "cstore_guard_log_loss", "Windowed log loss on a guarded alias's trusted labels, of the head and "
            "of the baseline (label side), test-then-train.", m + ["alias", "side"], multiprocess_mode="livemax",
            registry=reg)
        self.guard_labels = Gauge(
            "cstore_guard_labels", "Labels in this worker's guard window of an alias.",
            m + ["alias"], multiprocess_mode="livesum", registry=reg)
        self.guard_failing = Gauge(
            "cstore_guard_failing", "1 while an alias's guard sees the head worse than its baseline.",
            m + ["alias"], multiprocess_mode="livemax", registry=reg)
        self.guard_trips = Counter(
            "cstore_guard_trips", "Times a guard pinned an alias back to its baseline.",
            m + ["alias"], registry=reg)
        # Create the label children up front, so every series exists (at 0) from the first scrape.
        self._learned = self.events_learned.labels(model)
        self._poisoned = self.events_poisoned.labels(model)
        self._batches = self.batches.labels(model)
        self._commits = self.commits.labels(model)
        self._conflicts = self.conflicts.labels(model)
        self._retries = self.retries.labels(model)
        self._latency = self.commit_latency.labels(model)
        self._drift = self.drift_score.labels(model)
        self._drifts = self.drifts.labels(model)
        self._leases = self.leases_held.labels(model)
        self._batch_errors = self.batch_errors.labels(model)
        self._turns = (self.commit_turns.labels(model), self.commit_turn_wait.labels(model),
                       self.commit_turns_missed.labels(model))
        self._ready = self.worker_ready.labels(model)
        self._lease_changes = {c: self.lease_changes.labels(model, c) for c in LEASE_CHANGES}
        self._partitions: set[str] = set()

    # -- learning and commits -------------------------------------------------------------
    def record_learned(self, events: int) -> None:
        """``events`` feedback events were part of a committed micro-batch."""
        if events < 0:
            raise ValueError(f"events must be >= 0, got {events}")
        self._learned.inc(events)

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1.0 if ready else 0.0)

    def record_turns(self, taken: int, wait_s: float, missed: int) -> None:
        """Commit turns taken, seconds waited for them and waits that ran out since the last sample."""
        if taken < 0 or wait_s < 0 or missed < 0:
            raise ValueError(f"turn counts must be >= 0, got {taken}, {wait_s}, {missed}")
        for child, v in zip(self._turns, (taken, wait_s, missed)):
            child.inc(v)

    def record_batch_errors(self, n: int) -> None:
        """``n`` batches failed and will be read again."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._batch_errors.inc(n)

    def record_poisoned(self, events: int) -> None:
        """``events`` stored feedback events were set aside as unusable."""
        if events < 0:
            raise ValueError(f"events must be >= 0, got {events}")
        self._poisoned.inc(events)

    def record_commit(self, chunks: int, seconds: float, *, conflicts: int = 0, retries: int = 0) -> None:
        """One micro-batch committed: ``chunks`` chunk writes acknowledged in ``seconds``
        (retries included), after meeting ``conflicts`` conflicts and making ``retries`` retries."""
        if chunks < 0 or seconds < 0 or conflicts < 0 or retries < 0:
            raise ValueError("chunks, seconds, conflicts and retries must be >= 0")
        self._batches.inc()
        self._commits.inc(chunks)
        self._latency.observe(seconds)
        if conflicts:
            self._conflicts.inc(conflicts)
        if retries:
            self._retries.inc(retries)

    def record_conflict(self, n: int = 1) -> None:
        """Conflicts outside :meth:`record_commit` (e.g. overwrites noticed later)."""
        self._conflicts.inc(n)

    def record_retry(self, n: int = 1) -> None:
        self._retries.inc(n)

    # -- partitions and leases ------------------------------------------------------------
    def set_lag(self, partition: object, seconds: float, events: int | None = None) -> None:
        """Lag of one leased partition: age of its oldest unlearned event and, if known, how many."""
        p = str(partition)
        self._partitions.add(p)
        self.lag.labels(self.model, p).set(max(0.0, float(seconds)))
        if events is not None:
            self.lag_events.labels(self.model, p).set(max(0, int(events)))

    def record_lease_change(self, change: str, partition: object | None = None) -> None:
        """A lease was ``acquired``, ``lost`` or ``released``; a partition no longer held stops
        reporting lag (another worker reports it)."""
        if change not in self._lease_changes:
            raise ValueError(f"lease change must be one of {', '.join(LEASE_CHANGES)}, got {change!r}")
        self._lease_changes[change].inc()
        if change == "acquired":
            self._leases.inc()
        else:
            self._leases.dec()
            if partition is not None:
                self.forget_partition(partition)

    def set_leases_held(self, n: int) -> None:
        """Set the number of held leases outright (e.g. after a rebalance)."""
        self._leases.set(n)

    def forget_partition(self, partition: object) -> None:
        p = str(partition)
        if p in self._partitions:
            self._partitions.discard(p)
            for g in (self.lag, self.lag_events):
                try:
                    g.remove(self.model, p)
                except KeyError:
                    pass

    # -- drift ----------------------------------------------------------------------------
    def set_drift_score(self, score: float) -> None:
        self._drift.set(score)

    def record_drift(self) -> None:
        """A drift was detected (and its response triggered)."""
        self._drifts.inc()

    # -- guards ---------------------------------------------------------------------------
    def set_guard(self, alias: str, summary: dict[str, Any], regression: float | None, failing: bool) -> None:
        """One guarded alias's window (a :meth:`cstore.learn.GuardWindow.summary`)."""
        labels = int(summary["labels"])
        if regression is not None:
            self.guard_regression.labels(self.model, alias).set(regression)
        for side in ("head", "base"):
            if summary[f"{side}_log_loss"] is not None:
                self.guard_log_loss.labels(self.model, alias, "head" if side == "head" else "baseline").set(
                    summary[f"{side}_log_loss"])
        self.guard_labels.labels(self.model, alias).set(labels)
        self.guard_failing.labels(self.model, alias).set(1 if failing else 0)

    def record_guard_trip(self, alias: str, n: int = 1) -> None:
        self.guard_trips.labels(self.model, alias).inc(n)

    def scrape(self) -> str:
        """The registry in the Prometheus text format (what ``/metrics`` returns)."""
        return generate_latest(self.registry).decode()


# -- several worker processes -----------------------------------------------------------------
def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def enable_multiprocess(directory: str | os.PathLike[str]) -> Path:
    """Switch this process, and the processes it starts afterwards, to shared-file metrics in
    ``directory`` (created empty). Call once in the parent before creating any metric."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob("*.db"):  # values from a previous run would be summed in
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d)
    values.ValueClass = values.get_value_class()
    return d


def multiprocess_registry(directory: str | os.PathLike[str] | None = None) -> CollectorRegistry:
    """A registry that aggregates every process's metrics; serve it from the parent."""
    from prometheus_client import multiprocess
    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=str(directory or multiprocess_dir()))
    reg.register(BuildInfo())
    return reg


def mark_process_dead(pid: int) -> None:
    """Drop a dead child's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid)

