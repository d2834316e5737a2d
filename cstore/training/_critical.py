"""The critical lane: critical feedback learned within milliseconds, beside the bulk micro-batches.

A producer marks an event critical (``send(..., critical=True)``, ``send_feedback(..., critical=True)``)
and it lands in the model's critical partition (partition P, after the P bulk partitions, see
``cstore.feedback``). In each consumer group one worker holds that partition's lease; its
:class:`CriticalLane` thread polls it every ``critical_poll_ms`` (5 ms), and learns what it finds at
once, in small batches (``critical_batch_size``). It never waits to fill a batch and never waits behind
the bulk loop, which goes on in the worker's main thread: it learns on the rows the worker's bulk
committer keeps current (shared with its own committer: no read on its path) and stores what it
learned as an *increment* of the chunks it touches (no compare-and-set, see :mod:`cstore.store`),
which the next commit of those chunks folds, and which scorers see on the increment feed at their
next poll. A second thread, the lane's refresher, keeps those rows current when the bulk loop has
nothing to do (the version index every ``LANE_REFRESH_S``, the moved rows caught up) and folds
increments that no commit has folded within ``FOLD_AFTER_S`` (a model without bulk traffic).

What the lane leaves out of its own path: the shared drift detector and learning-rate schedule
(``learner_state``: a compare-and-set every batch) take its losses at the bulk loop's next batch, or
when the bulk loop is idle; the lane uses the schedule's current rate meanwhile. Everything else is
as for a bulk batch: the trace before the commit, the checkpoint conditioned on the lease after it.

Which worker holds the lease: whichever asks first, except that a worker standing by while another
holds every bulk partition (``LeaseManager.standing_by``) leaves it to that one: the lane learns on the
rows its bulk loop keeps current, and that loop's commits fold its increments without a read (in a
process of its own the lane's rows go stale and its folds meet bulk commits: measured, bulk p99 0.8-1.1
s against 0.6-0.7 s, critical level). The others look every ``LANE_LOOK_S``
whether the lease is free (a plain read) and ask for it only then, so after a holder stops (release)
the lane moves within a fraction of a second, after it dies within one lease TTL. Critical events are
never lost meanwhile; they wait in their partition.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Protocol

import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from cstore.core import TICKS_PER_S, ModelInfo, UpdateResult, ticks_now
from cstore.feedback import FeedbackLayout, FeedbackReader, LaneCursor
from cstore.store import Amounts, Committer, Store
from cstore.training._batching import WorkerOptions
from cstore.training._learner import Learner, learner_config
from cstore.training._leases import LeaseManager

__all__ = ["CriticalLane", "Lane", "LaneHost", "new_committer"]

log = logging.getLogger("cstore.worker")

LANE_REFRESH_S = 1.0  # the lane's refresher checks the model's version index this often (the bulk loop
#                       keeps the shared rows current meanwhile: this is for a bulk loop with nothing to do)
FOLD_AFTER_S = 2.0    # ... and folds increments no commit has folded for this long
LANE_LOOK_S = 0.25    # a worker not holding the critical partition looks whether it is free this often


def new_committer(store: Store, info: ModelInfo, *, urgent: bool = False,
                  known: Committer | None = None) -> Committer | None:
    """A committer of the learner's own (None for blind-write profiles, which commit through the engine).

    The bulk loop and the critical lane each have one: an increment never waits for a bulk round to
    release its chunks. ``known``: a committer whose known rows this one shares (the lane shares the
    bulk loop's: each bulk commit and each catch-up of the bulk loop keeps the rows the lane learns on
    current, and the bulk loop's next commit folds the lane's increments without a read).
    """
    if not store.profile.lwt:
        return None
    return Committer(store.chunks, store.backend.params, timeout_s=store.config.commit_timeout_s, urgent=urgent,
                     share=known)


@dataclasses.dataclass(eq=False)
class Lane:
    """What a batch is learned with: the bulk loop's (this) or the critical lane's (:class:`CriticalLane`,
    the same fields): its learner (its own hasher cache), weight scratch, stats, cursors, leases and
    committer. ``critical`` lanes defer their losses to the bulk loop's next shared-state update."""

    learner: Learner
    w: np.ndarray
    stats: dict[str, Any]
    cursors: dict[int, dict[int, LaneCursor]]
    leases: LeaseManager
    committer: Committer | None
    critical: bool = False


class LaneHost(Protocol):
    """What the lane needs of its worker (:class:`cstore.training.Worker`)."""

    store: Store
    info: ModelInfo
    fcfg: FeedbackLayout
    opts: WorkerOptions
    worker_id: str
    reader: FeedbackReader
    heartbeat_s: float
    margin_s: float
    leases: LeaseManager
    _stop: threading.Event
    bulk_committer: Committer | None
    on_commit: Callable[[UpdateResult, float], None] | None

    @property
    def stopping(self) -> bool: ...

    def critical_step(self, lane: CriticalLane) -> int: ...


class CriticalLane(Lane):
    """One worker's side of its group's critical partition: the lease, the cursors, the polling thread."""

    def __init__(self, worker: LaneHost) -> None:
        learner = Learner(worker.info, learner_config(worker.info))  # its own hasher cache: not shared
        super().__init__(learner, np.zeros(learner.cfg.n_features, np.float32),
                         {"events": 0, "batches": 0, "learned": 0, "skipped": 0, "errors": 0, "last_batch_s": 0.0,
                          "batch_s_total": 0.0}, {},
                         LeaseManager(worker.store.backend.fleet, worker.fcfg.model_id, worker.opts.group,
                                      worker.fcfg.partitions, worker.worker_id, ttl_s=worker.opts.lease_ttl_s),
                         new_committer(worker.store, worker.info, urgent=True, known=worker.bulk_committer),
                         critical=True)
        self.worker = worker
        self.part = worker.fcfg.critical_part
        self.idle = False  # the last poll found nothing (or another worker holds the lane): for run(until_idle)
        self._lost = False
        self._next_try = 0.0
        self._threads: list[threading.Thread] = []
        self._fold: Future[UpdateResult] | None = None
        self._side = ThreadPoolExecutor(1, thread_name_prefix="cstore-critical-side")

    @property
    def holding(self) -> bool:
        return self.part in self.leases.held()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name="cstore-critical", daemon=True),
                         threading.Thread(target=self._refresh, name="cstore-critical-refresh", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Wait for the threads (the worker's stop event ends them), fold the increments still pending (so
        that history holds every batch the lane learned) and release the lease."""
        for t in self._threads:
            t.join(timeout=30)
        w = self.worker
        if self.committer is not None:
            try:
                pending = sorted(self.committer.refresh(w.info))
                if pending:
                    self.committer.fold(w.info, pending).result(timeout=w.store.config.commit_timeout_s)
            except Exception as exc:  # the next commit of those chunks folds them
                log.warning("could not fold the critical lane's last increments on the way out (%s)", exc)
            self.committer.close()
        self._side.shutdown(wait=True)
        self.leases.release_all()

    def increment(self, amounts: Amounts, batch_id: uuid.UUID, trace: Callable[[], None]) -> None:
        """Store a learned batch as an increment (op id: the batch's id, which the commit that folds it
        names in history) and its batch trace beside it: one round trip for both, both done before the
        checkpoint (a trace goes before a compare-and-set commit; an increment has none to wait for)."""
        assert self.committer is not None
        traced = self._side.submit(trace)
        t = time.perf_counter()
        w = self.worker
        result = self.committer.increment(w.info, amounts, op_id=batch_id, stop=lambda: w.stopping)
        if w.on_commit is not None:
            w.on_commit(result, time.perf_counter() - t)
        traced.result()

    def renew(self) -> None:
        """Called by the worker's heartbeat thread."""
        if self.leases.renew():
            self._lost = True

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        w = self.worker
        poll_s = w.opts.critical_poll_ms / 1000
        failures = 0
        while not w.stopping:
            try:
                if not self._hold():
                    self.idle = True
                    w._stop.wait(min(1.0, w.heartbeat_s))
                    continue
                consumed = w.critical_step(self)
                self.idle, failures = consumed == 0, 0
                if consumed == 0:
                    w._stop.wait(poll_s)
            except Exception as exc:  # an outage: nothing was checkpointed, the events are read again
                failures += 1
                self.stats["errors"] += 1
                log.exception("critical batch failed (%s); retrying in a moment", exc)
                w._stop.wait(min(5.0, 0.05 * 2 ** min(failures, 6)))

    def _refresh(self) -> None:
        """The refresher thread: the rows the lane learns on kept current, its old increments folded."""
        w = self.worker
        while not w._stop.wait(LANE_REFRESH_S):
            if self.committer is None or not self.holding:
                continue
            try:
                oldest = self.committer.refresh(w.info)
                due = sorted(k for k, t in oldest.items() if ticks_now() - t > FOLD_AFTER_S * TICKS_PER_S)
                if due and (self._fold is None or self._fold.done()):
                    self._fold = self.committer.fold(w.info, due)
                    self._fold.add_done_callback(_log_fold_error)
            except Exception as exc:  # an outage: the next round tries again
                log.warning("critical lane refresh failed (%s); retrying", exc)

    def _hold(self) -> bool:
        """Whether this worker holds the critical partition now (asking for it when it is due)."""
        w = self.worker
        if self._lost:
            self._lost = False
            self.cursors = {}
        if self.part in self.leases.held(w.margin_s):
            if w.leases.standing_by:  # the lane goes with the bulk loop: they share their rows
                self.leases.release([self.part])
                self.cursors = {}
                self._next_try = time.monotonic() + w.heartbeat_s
                return False
            if not self.cursors:
                _, lanes = w.reader.load([self.part])[self.part]
                self.cursors = {self.part: lanes}
            return True
        self.cursors = {}
        now = time.monotonic()
        if now < self._next_try or w.leases.standing_by:
            return False
        # Look often (a plain read of the owner cell: a lane a standby lets go reaches the worker holding the
        # bulk partitions within a fraction of a second), ask (a compare-and-set) only when it is free.
        self._next_try = now + min(LANE_LOOK_S, w.heartbeat_s)
        if w.store.backend.fleet.owner(w.fcfg.model_id, w.opts.group, self.part) is not None:
            return False
        return self.leases.acquire(self.part)


def _log_fold_error(fold: Future[UpdateResult]) -> None:
    exc = fold.exception()
    if exc is not None:
        log.warning("folding the critical lane's increments failed (%s); the next commit of their chunks folds "
                    "them, or the next try", exc)
