"""State a consumer group shares across its workers: drift detectors, learning-rate schedule, batch trace.

Two detectors watch the whole stream, whichever worker saw each event (:class:`GroupDrift`): the
configured one on the *prequential* loss (each event scored by the model before it learns from it),
and a CUSUM on the rate of positive labels (:class:`~cstore.learn.LabelRateCUSUM`), which finds
concept changes that move the share of positives even when the model follows them too fast for its
loss to show them. Their state lives in one ``learner_state`` row updated after scoring each batch
with ``IF seq = ?``: on conflict the batch is re-applied to the newer state, exactly like a chunk
transform. So the detectors see every batch once (modulo redelivered batches after a crash) and a
restarted fleet resumes them exactly.
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
from cstore.learn import (ADWIN, AdaptiveLearningRate, DriftConfirmer, LabelRateCUSUM, PageHinkley,
                          detector_from_state)

__all__ = ["DEFAULT_ADWIN", "DEFAULT_LABEL_RATE", "DEFAULT_PAGE_HINKLEY", "DEFAULT_WARMUP", "BatchOutcome",
           "GroupDrift", "SharedLearnerState", "drift_score", "make_detector", "make_label_detector"]

# Tuned for per-event log loss (values ~0.1-1, sd ~0.5): 'up' only, a shift of +0.3 nats is
# flagged after ~200 events, while the false-alarm rate per excursion is ~exp(-2*delta*threshold/var).
DEFAULT_PAGE_HINKLEY = {"delta": 0.02, "threshold": 50.0, "min_instances": 500, "mode": "up"}
DEFAULT_ADWIN = {"delta": 0.002, "min_instances": 500}
# Events scored by the group before the detector starts: the loss of a model learning from scratch
# falls fast at first. Learned per event it settles within a few hundred events (20,000, the old value
# for summed steps that overshoot early, meant the drift response never started on shorter streams).
DEFAULT_WARMUP = 1000
# The label-rate CUSUM beside the loss detector: a change of 0.3 in the log-odds of a positive (0.50 -> 0.57,
# 0.20 -> 0.25), alarm at 10 nats (about 0.06 false alarms per 100,000 labels of a fixed rate, simulated).
# Armed once its reference rate has n p (1 - p) >= 400; it needs no warm-up: the labels do not depend on the model.
DEFAULT_LABEL_RATE = {"shift": 0.3, "threshold": 10.0, "min_information": 400.0}


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


def make_label_detector(drift_cfg: Mapping[str, Any]) -> LabelRateCUSUM | None:
    """The label-rate CUSUM: on whenever drift detection is (``drift_cfg["label_rate"]``: False turns it off,
    a dict overrides :data:`DEFAULT_LABEL_RATE`)."""
    if drift_cfg.get("detector", "page_hinkley") == "none":
        return None
    cfg = drift_cfg.get("label_rate", True)
    if cfg is False or cfg is None:
        return None
    return LabelRateCUSUM(**{**DEFAULT_LABEL_RATE, **(cfg if isinstance(cfg, Mapping) else {})})


class GroupDrift:
    """The group's drift detection for one batch at a time: the loss detector, the label-rate CUSUM, and a
    cool-down shared by both (pure: no I/O; :class:`SharedLearnerState` stores :meth:`get_state`).

    A drift is reported when either detector alarms, unless the group reported one within the last
    ``drift_cfg["within"]`` events (default 2,000): the other detector finding the same change later
    restarts itself but does not count, nor boost the learning rate, twice. The loss detector skips the
    group's first ``warmup`` events (a model learning from scratch); the label detector sees every label.

    >>> g = GroupDrift({"warmup": 0, "label_rate": {"min_information": 50.0}})
    >>> before, after = np.array([float(j % 5 == 0) for j in range(20)]), np.array([float(j % 2) for j in range(20)])
    >>> ys = [before] * 100 + [after] * 20  # blocks of 20 labels: a rate of 0.2, then 0.5 from block 100
    >>> [i for i, y in enumerate(ys) if g.feed(np.full(20, 0.5), y, 20 * i)]
    [106]
    """

    def __init__(self, drift_cfg: Mapping[str, Any], state: Mapping[str, Any] | None = None) -> None:
        self.drift_cfg = drift_cfg
        self.warmup = int(drift_cfg.get("warmup", DEFAULT_WARMUP))
        self.cooldown = int(drift_cfg.get("within", 2000))
        if state is None:
            self.detector: Any = make_detector(drift_cfg)
            self.labels = make_label_detector(drift_cfg)
            self.quiet_until = 0
            return
        self.detector = detector_from_state(state["detector"]) if state.get("detector") else None
        labels = state.get("labels")
        # A group created before the label detector existed starts one now.
        self.labels = LabelRateCUSUM.from_state(labels) if labels else make_label_detector(drift_cfg)
        self.quiet_until = int(state.get("quiet_until", 0))

    def feed(self, losses: np.ndarray, labels: np.ndarray | None, events_before: int) -> bool:
        """The batch's prequential losses (the group had scored ``events_before`` events before it) and the
        labels of its last ``len(labels)`` events, if given; True if the group reports a drift."""
        alarm = False
        if self.detector is not None:
            for x in losses[max(0, self.warmup - events_before):].tolist():
                if self.detector.update(x):
                    alarm = True
        if self.labels is not None and labels is not None and labels.size:
            alarm = self.labels.update_counts(float(labels.size), float(np.sum(labels))) or alarm
        if not alarm or events_before < self.quiet_until:
            return False
        self.quiet_until = events_before + int(losses.size) + self.cooldown
        return True

    @property
    def score(self) -> float:
        """How close the group is to an alarm: the larger of the loss detector's :func:`drift_score` and
        the label CUSUM's statistic / threshold."""
        label = 0.0 if self.labels is None else round(self.labels.statistic / self.labels.threshold, 6)
        return max(drift_score(self.detector), label)

    def get_state(self) -> dict[str, Any]:
        """What the ``learner_state`` row keeps beside the schedule."""
        return {"detector": self.detector.get_state() if self.detector is not None else None,
                "labels": self.labels.get_state() if self.labels is not None else None,
                "quiet_until": self.quiet_until}


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
        return msgpack.packb({**GroupDrift(self.drift_cfg).get_state(),
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

    def apply_batch(self, losses: np.ndarray, batch_id: uuid.UUID, worker: str, *, boost: bool = True,
                    labels: np.ndarray | None = None) -> BatchOutcome:
        """Feed the batch's prequential losses (and ``labels``, those of its last ``len(labels)`` events) to
        the shared detectors and schedule (compare-and-set). Without ``labels`` only the loss detector
        learns from the batch.

        ``boost``: a detected drift raises the learning-rate schedule (the configured response).
        """
        row = self._row or self.read()
        for attempt in range(self.max_retries):
            state = msgpack.unpackb(row["state"], raw=False)
            group = GroupDrift(self.drift_cfg, state)
            sched = AdaptiveLearningRate.from_state(state["schedule"])
            # Warm-up: the loss of a model still learning from scratch falls and jumps around; the loss
            # detector starts watching once the group has scored `warmup` events (GroupDrift.feed).
            drifted = group.feed(losses, None if labels is None else np.asarray(labels, np.float64),
                                 row["events"] or 0)
            mean = float(losses.mean()) if losses.size else 0.0
            if losses.size:
                sched.update(mean, int(losses.size))
            if drifted and boost:
                sched.on_drift()
            prev = row["loss"]
            ema = mean if prev is None or math.isnan(prev) else 0.8 * prev + 0.2 * mean
            score = group.score
            drifts = (row["drifts"] or 0) + int(drifted)
            now = datetime.now(UTC)
            blob = msgpack.packb({**group.get_state(), "schedule": sched.get_state()}, use_bin_type=True)
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
