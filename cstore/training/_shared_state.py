"""State a consumer group shares across its workers: drift detector, learning-rate schedule, batch trace.

The detector watches the *prequential* loss of the whole stream (each event scored by the model
before it learns from it), whichever worker saw the event. Its state lives in one ``learner_state``
row updated after scoring each batch with ``IF seq = ?``: on conflict the batch's losses are
re-applied to the newer state, exactly like a chunk transform. So the detector sees every batch once
(modulo redelivered batches after a crash) and a restarted fleet resumes it exactly.
"""
from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
import numpy as np

from cstore.backend import FleetTables, Row
from cstore.errors import ConflictError
from cstore.learn import ADWIN, AdaptiveLearningRate, DriftConfirmer, PageHinkley, detector_from_state

__all__ = ["DEFAULT_ADWIN", "DEFAULT_PAGE_HINKLEY", "DEFAULT_WARMUP", "BatchOutcome", "SharedLearnerState",
           "drift_score", "make_detector"]

# Tuned for per-event log loss (values ~0.1-1, sd ~0.5): 'up' only, a shift of +0.3 nats is
# flagged after ~200 events, while the false-alarm rate per excursion is ~exp(-2*delta*threshold/var).
DEFAULT_PAGE_HINKLEY = {"delta": 0.02, "threshold": 50.0, "min_instances": 500, "mode": "up"}
DEFAULT_ADWIN = {"delta": 0.002, "min_instances": 500}
# Events scored by the group before the detector starts: the loss of a model learning from scratch
# falls fast at first. Learned per event it settles within a few hundred events (20,000, the old value
# for summed steps that overshoot early, meant the drift response never started on shorter streams).
DEFAULT_WARMUP = 1000


def make_detector(drift_cfg: Mapping[str, Any]) -> Any:
    """The configured detector (wrapped in a confirmation step), or None."""
    kind = drift_cfg.get("detector", "page_hinkley")
    if kind == "none":
        return None
    if kind == "page_hinkley":
        base: Any = PageHinkley(**{**DEFAULT_PAGE_HINKLEY, **drift_cfg.get("params", {})})
    elif kind == "adwin":
        base = ADWIN(**{**DEFAULT_ADWIN, **drift_cfg.get("params", {})})
    else:
        raise ValueError(f"unknown drift detector {kind!r}")
    confirmations = int(drift_cfg.get("confirmations", 2))
    if confirmations <= 1:
        return base
    return DriftConfirmer(base, confirmations=confirmations, within=int(drift_cfg.get("within", 2000)))


def drift_score(detector: Any) -> float:
    """How close the detector is to firing: Page-Hinkley statistic / threshold (0 = calm, 1 = alarm)."""
    if detector is None:
        return 0.0
    state = detector.get_state()
    inner = state.get("detector", state)
    if inner.get("type") == "PageHinkley":
        return round(max(0.0, (inner["sum_up"] - inner["min_up"]) / inner["params"]["threshold"]), 6)
    return 1.0 if detector.drift_detected else 0.0


@dataclass
class BatchOutcome:
    drift: bool
    drift_score: float
    lr_scale: float
    drifts_total: int
    loss_ema: float


class SharedLearnerState:
    """The ``learner_state`` row of one (model, consumer group)."""

    def __init__(self, tables: FleetTables, model_id: uuid.UUID, group: str, drift_cfg: Mapping[str, Any],
                 schedule_cfg: Mapping[str, Any], *, ttl_s: int, max_retries: int = 50) -> None:
        self._tables = tables
        self.model_id = model_id
        self.group = group
        self.drift_cfg = drift_cfg
        self.schedule_cfg = schedule_cfg
        self.ttl_s = ttl_s
        self.max_retries = max_retries
        self._row: Row | None = None

    def _fresh_state(self) -> bytes:
        det = make_detector(self.drift_cfg)
        return msgpack.packb({"detector": det.get_state() if det else None,
                              "schedule": AdaptiveLearningRate(**self.schedule_cfg).get_state()}, use_bin_type=True)

    def read(self) -> Row:
        """The group's row at SERIAL (created with a fresh state if the group is new)."""
        row = self._tables.learner_state(self.model_id, self.group)
        if row is None:
            self._tables.init_learner_state(self.model_id, self.group, self._fresh_state())
            row = self._tables.learner_state(self.model_id, self.group)
            if row is None:
                raise ConflictError(f"the learner state of group {self.group!r} could not be created; retry")
        self._row = row
        return row

    def current_lr_scale(self) -> float:
        row = self._row or self.read()
        return float(row["lr_scale"] or 1.0)

    def last_drift_score(self) -> float:
        """The drift score of the last state this process read or wrote (no round trip)."""
        return float((self._row or {}).get("drift_score") or 0.0)

    def apply_batch(self, losses: np.ndarray, batch_id: uuid.UUID, worker: str, *, boost: bool = True) -> BatchOutcome:
        """Feed the batch's prequential losses to the shared detector and schedule (compare-and-set).

        ``boost``: a detected drift raises the learning-rate schedule (the configured response).
        """
        row = self._row or self.read()
        for attempt in range(self.max_retries):
            state = msgpack.unpackb(row["state"], raw=False)
            det = detector_from_state(state["detector"]) if state.get("detector") else None
            sched = AdaptiveLearningRate.from_state(state["schedule"])
            drifted = False
            if det is not None:
                # Warm-up: the loss of a model still learning from scratch falls and jumps around;
                # the detector starts watching once the group has scored `warmup` events.
                skip = max(0, int(self.drift_cfg.get("warmup", DEFAULT_WARMUP)) - (row["events"] or 0))
                for x in losses[skip:].tolist():
                    if det.update(x):
                        drifted = True
            mean = float(losses.mean()) if losses.size else 0.0
            if losses.size:
                sched.update(mean, int(losses.size))
            if drifted and boost:
                sched.on_drift()
            prev = row["loss"]
            ema = mean if prev is None or math.isnan(prev) else 0.8 * prev + 0.2 * mean
            score = drift_score(det)
            drifts = (row["drifts"] or 0) + int(drifted)
            now = datetime.now(UTC)
            blob = msgpack.packb({"detector": det.get_state() if det else None, "schedule": sched.get_state()},
                                 use_bin_type=True)
            args = (row["seq"] + 1, blob, batch_id, now, (row["events"] or 0) + int(losses.size),
                    (row["batches"] or 0) + 1, drifts, now if drifted else row["last_drift"], ema, score,
                    sched.scale, worker)
            applied = self._tables.update_learner_state(self.model_id, self.group, row["seq"], args).applied
            if applied is None:  # unknown: our batch is in the row iff the write applied
                applied = self.read()["last_batch"] == batch_id
            if applied:
                self._row = {**row, "seq": row["seq"] + 1, "state": blob, "events": args[4], "batches": args[5],
                             "drifts": drifts, "last_drift": args[7], "loss": ema, "drift_score": score,
                             "lr_scale": sched.scale}
                return BatchOutcome(drifted, score, sched.scale, drifts, ema)
            time.sleep(0.002 * (attempt + 1))
            row = self.read()
        raise ConflictError(f"learner state of group {self.group!r}: gave up after {self.max_retries} conflicts")

    # -- batch trace -------------------------------------------------------------------------------
    def write_trace(self, batch_id: uuid.UUID, worker: str, segments: list[tuple[int, int, uuid.UUID, int]],
                    n_events: int, n_learned: int, n_skipped: int, weight_sum: float, loss: float,
                    score: float, lr_scale: float) -> None:
        day = int(time.time()) // 86400
        blob = msgpack.packb([[p, ln, u.bytes, n] for p, ln, u, n in segments], use_bin_type=True)
        self._tables.write_trace((self.model_id, self.group, day, batch_id, worker, blob, n_events, n_learned,
                                  n_skipped, weight_sum, loss, score, lr_scale, self.ttl_s))

    def traces(self, since: float) -> list[dict[str, Any]]:
        """Batch trace rows since ``since`` (epoch s), with decoded segment lists."""
        out = []
        for day in range(int(since) // 86400, int(time.time()) // 86400 + 1):
            for r in self._tables.traces(self.model_id, self.group, day):
                segs = [(p, ln, uuid.UUID(bytes=b), n) for p, ln, b, n in msgpack.unpackb(r["segments"], raw=False)]
                out.append({**r, "segments": segs})
        return out
