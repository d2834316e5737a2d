"""The feedback worker: lease partitions, read new segments, learn a micro-batch, commit, checkpoint.

One iteration (:meth:`Worker.step`):

1. list new segments of the partitions this worker leases (ids only; see :class:`cstore.feedback.FeedbackReader`),
   waiting up to ``max_wait_ms`` for ``batch_size`` events (windowed by time as well as by count);
2. choose segments by priority lane (lane 0 first), oldest first, except that one batch in every
   ``1 / starvation_reserve`` takes the oldest whatever their lane (no starvation); fetch, open, decode;
3. join features (events without them go through ``feature_lookup``; without one or a hit they are
   skipped), hash them, weight samples by kind, confidence and age;
4. read the touched chunks, score every event with the current weights *before* learning (prequential
   loss), feed the losses to the group's shared drift detector and learning-rate schedule;
5. write the batch trace, learn the batch (per event by default, see :class:`Learner`) and commit it through
   ``store.chunks`` (one transform per touched chunk: weights, optimizer state, bias; re-applied on conflict);
   the critical lane (:class:`CriticalLane`) stores its batch as an increment instead, trace beside it;
6. advance the checkpoints of the partitions in the batch, conditioned on still holding their leases.

Delivery is at least once. A batch is learned twice only if its worker dies or loses a lease between step 5
and step 6: each such failure duplicates at most one batch (``batch_size`` events, or one larger segment).
Leases are renewed by a heartbeat thread; rebalancing happens between batches: a release duplicates nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cstore.backend import Cas
from cstore.core import ChunkRow, Transform, UpdateResult, ticks_now, uuid_now
from cstore.errors import KeyUnavailable
from cstore.feedback import FeedbackReader, LaneCursor, LaneListing, PredictionLog, SegmentRef, context
from cstore.learn import log_loss, predict_proba_batch
from cstore.store import Committer, Store
from cstore.training._learner import Learner, learner_config
from cstore.training._leases import LeaseManager, new_worker_id
from cstore.training._batching import (WorkerOptions, batch_metadata, gather, hash_rows, in_event_order,
                                      sample_weights, select_segments, weights_at)
from cstore.training._commit import commit_batch
from cstore.training._critical import CriticalLane, Lane, new_committer
from cstore.training._guard import GuardWatch
from cstore.training._shared_state import SharedLearnerState
from cstore.training._turn import worker_turn

__all__ = ["Worker"]

log = logging.getLogger("cstore.worker")
BOOSTS = ("boost", "both")  # drift responses that raise the learning rate
CRITICAL_SWITCH_S = 0.0005

Cursors = dict[int, dict[int, LaneCursor]]


class Worker:
    """Learns one model's feedback for one consumer group; many may run at once, anywhere."""

    def __init__(self, store: Store, model: str, *, worker_id: str | None = None, **options: Any) -> None:
        self.opts = WorkerOptions(**options)
        self.opts.check()
        if self.opts.feature_lookup is None:  # delayed labels join what the scorers logged
            self.opts.feature_lookup = PredictionLog(store)
        self.store = store
        self.model = model
        self.source = self.opts.feedback_of or model  # whose feedback this worker learns (a challenger's: another's)
        self.info, self.fcfg = context(store).layout(model) if self.source == model else \
            (store.model_info(model), context(store).layout(self.source, create=False)[1])
        if self.source != model and self.opts.group == "default":
            self.opts.group = model  # the source's own workers keep "default"
        self.learner = Learner(self.info, learner_config(self.info))
        self.worker_id = worker_id or new_worker_id()
        fleet = store.backend.fleet
        self.reader = FeedbackReader(store.backend.feedback, self.fcfg, self.opts.group, store.chunks.codec)
        self.leases = LeaseManager(fleet, self.fcfg.model_id, self.opts.group, self.fcfg.partitions,
                                   self.worker_id, ttl_s=self.opts.lease_ttl_s)
        self.shared = SharedLearnerState(fleet, self.info.model_id, self.opts.group, self.learner.cfg.drift,
                                         self.learner.cfg.schedule, ttl_s=self.fcfg.ttl_s)
        self.heartbeat_s = self.opts.heartbeat_s or self.opts.lease_ttl_s / 3
        self.margin_s = max(1.0, self.opts.lease_ttl_s / 5)  # never start a commit on a lease about to expire
        self.cursors: dict[int, dict[int, LaneCursor]] = {}
        self._w = np.zeros(self.learner.cfg.n_features, np.float32)
        self._stop = threading.Event()
        self._lost: set[int] = set()
        self._lock = threading.Lock()
        self._last_rebalance = 0.0
        self.stats: dict[str, Any] = {"events": 0, "batches": 0, "learned": 0, "skipped": 0, "poisoned": 0, "drifts": 0,
                      "lost_checkpoints": 0, "aborted_batches": 0, "errors": 0, "rate": 0.0, "last_batch_s": 0.0,
                      "batch_s_total": 0.0}
        self._rate_mark: tuple[float, int] = (time.monotonic(), 0)
        self._loop_at = time.monotonic()
        self.on_commit: Callable[[UpdateResult, float], None] | None = None  # (result, seconds): metrics hook
        self._deferred: list[tuple[np.ndarray, np.ndarray]] = []  # critical batches' (losses, labels), fed to the
        #                                                               shared state by the bulk loop
        self.bulk_committer = new_committer(store, self.info)
        self._bulk = Lane(self.learner, self._w, self.stats, self.cursors, self.leases, self.bulk_committer)
        self.critical = CriticalLane(self) if self.opts.critical else None
        self.guard = GuardWatch(store, self.info, self.worker_id)
        self.turn = worker_turn(self)  # its bulk commits take turns with other workers of the model

    # -- lifecycle ---------------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """Ask the worker to finish its current batch, release its leases and return from :meth:`run`."""
        self._stop.set()

    @property
    def loop_age_s(self) -> float:
        """Seconds since the learning loop last began an iteration (for a liveness probe)."""
        return time.monotonic() - self._loop_at

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_batches: int | None = None, until_idle: bool = False) -> dict[str, Any]:
        """Work until :meth:`stop`, ``max_batches`` or (``until_idle``) a poll that finds nothing new; a failed
        batch is retried, but ``KeyUnavailable`` ends it. Always releases the leases and unregisters on the way out."""
        self._loop_at = time.monotonic()
        self.leases.register(self.stats)
        hb = threading.Thread(target=self._heartbeat, name="cstore-heartbeat", daemon=True)
        hb.start()
        switch = sys.getswitchinterval()
        if self.critical is not None:
            # The bulk loop holds the GIL for milliseconds at a time (hashing, gradients, encoding); at
            # the default 5 ms switch interval the critical lane's thread would wait that long after
            # each of its ~10 round trips. At 0.5 ms it waits a tenth of that, at a small cost in switches.
            sys.setswitchinterval(min(switch, CRITICAL_SWITCH_S))
            self.critical.start()
        try:
            failures = 0
            while not self._stop.is_set():
                self._loop_at = time.monotonic()
                try:
                    self.maintain()
                    consumed = self.step()
                    failures = 0
                except KeyUnavailable:  # this process cannot open stored data: retrying will not help, and
                    raise               # nothing was checkpointed past it (the next worker with keys learns it)
                except Exception as exc:  # an outage or a failing feature lookup: the batch was not
                    failures += 1         # checkpointed, so it is simply read again after a pause
                    self.stats["errors"] += 1
                    log.exception("batch failed (%s); retrying in a moment", exc)
                    self._stop.wait(min(10.0, 0.2 * 2 ** min(failures, 6)))
                    continue
                if max_batches is not None and self.stats["batches"] >= max_batches:
                    break
                if until_idle and consumed == 0 and self.cursors and (self.critical is None or self.critical.idle):
                    break
        finally:
            self._stop.set()
            sys.setswitchinterval(switch)
            hb.join(timeout=self.heartbeat_s + 5)
            try:
                if self.critical is not None:
                    self.critical.stop()
                self._flush_deferred()
                if self._bulk.committer is not None:
                    self._bulk.committer.close()
                self.leases.release_all()
                self.leases.register(self.stats, unregister=True)
            except Exception as exc:  # Cassandra unreachable at shutdown: the TTLs free the leases anyway
                log.warning("could not release leases on the way out (%s); they expire within %.0f s",
                            exc, self.opts.lease_ttl_s)
        out = dict(self.stats)
        if self.critical is not None:
            out["critical"] = dict(self.critical.stats)
        return out

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                lost = self.leases.renew()
                if lost:
                    with self._lock:
                        self._lost.update(lost)
                if self.critical is not None:
                    self.critical.renew()
                now, n = time.monotonic(), self.stats["events"]
                t0, n0 = self._rate_mark
                self.stats["rate"] = round((n - n0) / max(now - t0, 1e-6), 1)
                self._rate_mark = (now, n)
                self.leases.register(self.stats)
            except Exception as exc:  # a heartbeat must survive a transient outage
                log.warning("heartbeat failed: %s", exc)

    def maintain(self) -> None:
        """Forget lost partitions; rebalance every heartbeat interval (or at once when holding nothing)."""
        with self._lock:
            lost, self._lost = self._lost, set()
        for p in lost:
            self.cursors.pop(p, None)
        for p in [p for p in self.cursors if p not in self.leases.held()]:
            self.cursors.pop(p, None)
        now = time.monotonic()
        # (holding nothing: at once the first time, then every second: a worker standing by asks often)
        if now - self._last_rebalance < (self.heartbeat_s if self.cursors else min(1.0, self.heartbeat_s)):
            return
        self._last_rebalance = now
        _, released = self.leases.rebalance()
        for p in released:
            self.cursors.pop(p, None)
        # Checkpoints of every held partition we have no cursor for (just acquired, or a load that failed).
        missing = [p for p in self.leases.held() if p not in self.cursors]
        if missing:
            for p, (_, lanes) in self.reader.load(missing).items():
                self.cursors[p] = lanes

    # -- one iteration -----------------------------------------------------------------------------
    def step(self) -> int:
        """Learn at most one micro-batch; returns the number of events consumed (0 when idle)."""
        held = set(self.leases.held(self.margin_s))
        cursors = {p: lanes for p, lanes in self.cursors.items() if p in held}
        if not cursors:
            self._stop.wait(self.opts.poll_ms / 1000)
            return 0
        listings = self._collect(cursors)
        every = round(1 / self.opts.starvation_reserve) if self.opts.starvation_reserve > 0 else 0
        by_age = every > 0 and self.stats["batches"] % every == every - 1
        chosen = select_segments(listings, self.opts.batch_size, by_age=by_age)
        if sum(lst.events for lst in listings.values()) - sum(r.n_events for r in chosen) > self.opts.batch_size:
            self.leases.mark_behind()  # more waits than this batch and the next: the group spreads out
        if not chosen:
            for (p, lane), listing in listings.items():
                cursors[p][lane].advance([], listing, self.fcfg.lateness_s)
            self._flush_deferred()  # idle: the critical lane's losses reach the drift detector now
            return 0
        return self._learn(cursors, listings, chosen)

    def critical_step(self, lane: CriticalLane) -> int:
        """One poll of the critical partition (the lane's thread): learn what is there, at once."""
        listings = self.reader.list_new(lane.cursors, ticks_now(), limit=self.opts.list_limit,
                                        max_buckets=self.opts.max_buckets, prefetch=True)
        chosen = select_segments(listings, self.opts.critical_batch_size)
        if not chosen:
            for (p, ln), listing in listings.items():
                lane.cursors[p][ln].advance([], listing, self.fcfg.lateness_s)
            return 0
        return self._learn(lane.cursors, listings, chosen, critical=True)

    def _collect(self, cursors: dict[int, dict[int, LaneCursor]]) -> dict[tuple[int, int], LaneListing]:
        deadline = time.monotonic() + self.opts.max_wait_ms / 1000
        while True:
            listings = self.reader.list_new(cursors, ticks_now(), limit=self.opts.list_limit,
                                            max_buckets=self.opts.max_buckets, quick=True)
            total = sum(lst.events for lst in listings.values())
            left = deadline - time.monotonic()
            if total >= self.opts.go_at or left <= 0 or self._stop.is_set():
                return listings
            self._stop.wait(min(self.opts.poll_ms / 1000, left))

    def _learn(self, cursors, listings, chosen: list[SegmentRef], *, critical: bool = False) -> int:
        """Learn ``chosen`` and checkpoint it. The critical lane's thread calls this too, with its own
        learner (hasher cache), weight scratch, cursors and stats; it defers its losses to the bulk
        loop's next shared-state update instead of taking that compare-and-set on its own path."""
        lane: Lane = self.critical if critical and self.critical is not None else self._bulk
        learner, w, stats = lane.learner, lane.w, lane.stats
        t0 = time.monotonic()
        events, spans = gather(chosen, self.reader.fetch_columns(chosen))
        feats = self._join_features(events)
        keep = [i for i, f in enumerate(feats) if f is not None]
        batch_id = uuid_now()
        parts = sorted({r.part for r in chosen})
        loss = score = 0.0
        lr_scale = self.shared.current_lr_scale()
        if keep:
            indptr, idx, val, keep = in_event_order(hash_rows(learner.hasher, feats, keep, spans), events)
        if keep:
            y = np.array([events[i].label for i in keep], np.float64)
            s = sample_weights(learner.cfg, [events[i] for i in keep])
            touched = learner.chunks_of(np.unique(idx) if idx.size else idx)
            with self.turn.taken(skip=lane.critical) as turn:  # one bulk commit of this model at a time
                committer = lane.committer
                # The critical lane learns on the rows it knows (its refresher keeps them current: no read on
                # its path); the bulk loop catches them up from the rows, not the index: the last holder of the
                # turn moved them.
                current = committer.rows(self.info, touched, fresh=turn and not lane.critical,
                                         known=lane.critical) if committer else \
                    self.store.chunks.read(self.info, touched)
                bias = float(current[0]["bias"].data[0])
                if learner.cfg.update == "summed":  # its gradient takes the weights dense
                    for k, rows in current.items():
                        lo, hi = self.info.chunk_bounds("weights", k)
                        w[lo:hi] = rows["weights"].data
                # (the batch's weights gathered from the rows: a critical label's ~30, not its chunks' 1 MiB each)
                p_head = predict_proba_batch(weights_at(current, idx, self.info.chunk_size), bias, indptr,
                                             np.arange(idx.size), val)
                losses = np.asarray(log_loss(p_head, y), np.float64)
                if set(parts) - set(lane.leases.held(self.margin_s)):
                    stats["aborted_batches"] = stats.get("aborted_batches", 0) + 1  # a lease is about to lapse:
                    return 0                                                        # leave the batch to its next owner
                loss, drift, weight_sum = float(losses.mean()), False, float(s.sum())
                if lane.critical:
                    with self._lock:
                        self._deferred.append((losses, y))
                    score = self.shared.last_drift_score()
                else:
                    deferred = self._take_deferred()  # (losses and labels: the label-rate detector counts them)
                    outcome = self.shared.apply_batch(np.concatenate([*(d[0] for d in deferred), losses]), batch_id,
                                                      self.worker_id, boost=learner.cfg.drift_response in BOOSTS,
                                                      labels=np.concatenate([*(d[1] for d in deferred), y]))
                    score, lr_scale, drift = outcome.drift_score, outcome.lr_scale, outcome.drift
                    if drift:
                        self._on_drift(batch_id)
                    self.guard.observe(p_head, indptr, idx, val, y, np.array([events[i].kind for i in keep]))
                trace = (batch_id, chosen, len(events), len(keep), weight_sum, loss, score, lr_scale)
                if isinstance(lane, CriticalLane) and committer is not None:  # an increment: no CAS to wait for
                    lane.increment(learner.increments(current, w, bias, indptr, idx, val, y, s, lr_scale), batch_id,
                                   lambda: self._trace(*trace))
                else:
                    self._trace(*trace)
                    meta = batch_metadata(batch_id, self.worker_id, self.opts.group, chosen, len(keep),
                                          len(events) - len(keep), weight_sum, loss, score, drift, lr_scale)
                    transform = learner.batch_transform(current, w, bias, indptr, idx, val, y, s, lr_scale)
                    self._commit(touched, transform, meta, current, lr_scale, committer)
        else:
            self._trace(batch_id, chosen, len(events), 0, 0.0, 0.0, 0.0, lr_scale)
        self._checkpoint(cursors, listings, chosen, batch_id, into=lane)
        n = sum(r.n_events for r in chosen)
        with self._lock:
            stats.update(events=stats["events"] + n, batches=stats["batches"] + 1,
                         learned=stats["learned"] + len(keep), skipped=stats["skipped"] + len(events) - len(keep),
                         last_batch_s=round(time.monotonic() - t0, 4),
                         batch_s_total=round(stats["batch_s_total"] + time.monotonic() - t0, 4))
            self.stats["poisoned"] = self.reader.poison_events
        log.info("%s batch %s: %d events (%d learned) from partitions %s, loss %.4f, drift score %.3f, %.0f ms",
                 "critical" if lane.critical else "bulk", batch_id, n, len(keep), parts, loss, score,
                 1000 * (time.monotonic() - t0))
        return n

    def _take_deferred(self) -> list[tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            out, self._deferred = self._deferred, []
        return out

    def _flush_deferred(self) -> None:
        """Feed the critical lane's deferred losses to the shared drift detector and schedule."""
        deferred = self._take_deferred()
        if deferred:
            outcome = self.shared.apply_batch(np.concatenate([d[0] for d in deferred]), uuid_now(), self.worker_id,
                                              boost=self.learner.cfg.drift_response in BOOSTS,
                                              labels=np.concatenate([d[1] for d in deferred]))
            if outcome.drift:
                self._on_drift(uuid_now())

    # -- pieces of a batch -------------------------------------------------------------------------
    def _join_features(self, events) -> list[Mapping[str, Any] | None]:
        feats: list[Mapping[str, Any] | None] = [ev.features for ev in events]
        missing = [i for i, f in enumerate(feats) if f is None]
        if missing and self.opts.feature_lookup is not None:
            found = self.opts.feature_lookup(self.source, [events[i].entity_id for i in missing]) or {}
            for i in missing:
                feats[i] = found.get(events[i].entity_id)
        return feats

    def _on_drift(self, batch_id) -> None:
        self.stats["drifts"] += 1
        log.warning("drift detected on %s (batch %s)", self.model, batch_id)
        self.store.record_drift(self.model)
        self.guard.drift(str(batch_id))  # aliases whose guard trips on a drift alarm are pinned back
        if self.learner.cfg.drift_response in ("snapshot", "both"):
            self.store.snapshot(self.model, reason=f"drift detected by worker {self.worker_id} before batch {batch_id}")

    def _trace(self, batch_id, chosen, n_events, n_learned, weight_sum, loss, score, lr_scale) -> None:
        self.shared.write_trace(batch_id, self.worker_id, [(r.part, r.lane, r.seg_id, r.n_events) for r in chosen],
                                n_events, n_learned, n_events - n_learned, weight_sum, loss, score, lr_scale)

    def _commit(self, chunks: list[int], transform: Transform, meta_json: str,
                current: Mapping[int, Mapping[str, ChunkRow]], lr_scale: float, committer: Committer | None) -> None:
        """A bulk batch's commit (:func:`commit_batch`): every touched chunk exactly once."""
        commit_batch(self.store, self.info, chunks, transform, meta_json, current, lr_scale, committer, self.on_commit)

    def _checkpoint(self, cursors, listings, chosen: list[SegmentRef], batch_id, *, into: Lane) -> None:
        learned: dict[tuple[int, int], list[SegmentRef]] = {}
        for r in chosen:
            learned.setdefault((r.part, r.lane), []).append(r)
        parts = sorted({r.part for r in chosen})
        updates: dict[int, list[LaneCursor]] = {}
        for part in parts:
            updates[part] = []
            for lane, cur in cursors[part].items():
                new = dataclasses.replace(cur, done=dict(cur.done))
                if (part, lane) in listings:
                    new.advance(learned.get((part, lane), []), listings[(part, lane)], self.fcfg.lateness_s)
                new.last_batch = batch_id if (part, lane) in learned else cur.last_batch
                updates[part].append(new)
        for part, outcome in self.reader.save(updates, self.worker_id, batch_id).items():
            if not isinstance(outcome, Cas):
                raise outcome
            applied = self._saved_anyway(part, batch_id) if outcome.applied is None else outcome.applied
            if applied:
                into.cursors[part] = {c.lane: c for c in updates[part]}
            else:  # the lease is gone: whoever has it now re-learns this batch (the duplicate we allow)
                self.stats["lost_checkpoints"] += 1
                log.warning("checkpoint of partition %d refused: lease lost; batch %s may be learned twice",
                            part, batch_id)
                into.leases.release([part])
                into.cursors.pop(part, None)
        for (part, lane), listing in listings.items():
            if part not in updates and part in into.cursors:
                into.cursors[part][lane].advance([], listing, self.fcfg.lateness_s)

    def _saved_anyway(self, part: int, batch_id: uuid.UUID) -> bool:
        """After a timed-out checkpoint LWT: did it apply? (SERIAL read, never a blind retry)."""
        _, lanes = self.reader.load([part])[part]
        return any(c.last_batch == batch_id for c in lanes.values())
