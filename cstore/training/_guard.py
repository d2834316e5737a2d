"""The promotion guard, run by every worker that learns a model with a guarded alias.

Each bulk batch is scored by the head *before* it is learned (the worker does that anyway, for the
prequential loss); the watch also scores it with each guarded alias's baseline snapshot (loaded once
per baseline, kept in memory) and keeps both in a :class:`cstore.learn.GuardWindow`. When the head is
worse than the baseline by the rule's margin over at least ``min_labels`` labels, the worker pins the
alias to the baseline (one compare-and-set: if several workers trip at once, one wins and the audit
trail says so once). The head keeps learning; the watch keeps comparing, so ``cstore model metrics``
shows when the head has recovered and a reviewer may promote it again.

Each worker judges its own window (its share of the labels): the guard fires on the first worker to see
the regression, which is what a guard is for. Windows are reported to ``online_metrics`` every few
seconds; readers sum them over workers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from cstore.backend import Backoff
from cstore.core import Alias, ModelInfo
from cstore.errors import CstoreError
from cstore.learn import GuardRule, GuardWindow, predict_proba_batch
from cstore.store import Store

log = logging.getLogger("cstore.guard")

REFRESH_S = 2.0  # how often the watch re-reads the aliases and reports its windows


@dataclass
class _Watched:
    alias: Alias
    window: GuardWindow
    weights: np.ndarray
    bias: float


class GuardWatch:
    """The guarded aliases of one model, as one worker sees them."""

    def __init__(self, store: Store, info: ModelInfo, worker_id: str) -> None:
        self.store = store
        self.info = info
        self.worker_id = worker_id
        self.watched: dict[str, _Watched] = {}
        self.trips: dict[str, int] = {}  # alias -> times this worker's guard pinned it
        self.errors = 0
        self._next = 0.0
        self.backoff = Backoff(log, f"guard of model {info.name!r}", cap_s=30.0)

    def observe(self, p_head: np.ndarray, indptr: np.ndarray, idx: np.ndarray, val: np.ndarray,
                y: np.ndarray, kinds: np.ndarray) -> None:
        """One learned batch: ``p_head`` are the head's predictions made before learning it, ``kinds``
        each event's kind (a guard judges only the kinds its rule trusts). A failure of the watch
        (Cassandra unreachable) is logged and retried later: it never stops the learning."""
        try:
            self._observe(p_head, indptr, idx, val, y, kinds)
        except CstoreError as exc:
            self.errors += 1
            self._next = time.monotonic() + max(REFRESH_S, self.backoff.failure(exc))

    def _observe(self, p_head: np.ndarray, indptr: np.ndarray, idx: np.ndarray, val: np.ndarray,
                 y: np.ndarray, kinds: np.ndarray) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + REFRESH_S
            self._refresh()
            self._report()
            self.backoff.success()
        for name, w in list(self.watched.items()):  # a trip re-reads the aliases
            judged = np.isin(kinds, w.window.rule.kinds)
            if not judged.any():
                continue
            p_base = predict_proba_batch(w.weights, w.bias, indptr, idx, val)
            w.window.add(p_head[judged], p_base[judged], y[judged])
            a = w.alias
            if a.guard_state == "passing" and a.pinned != a.baseline and w.window.failing():
                self._trip(name, w)

    def _refresh(self) -> None:
        current = {a.alias: a for a in self.store.governance.aliases(self.info)
                   if a.guard_json and a.baseline is not None}
        for name in list(self.watched):
            if name not in current:
                del self.watched[name]
        for name, a in current.items():
            w = self.watched.get(name)
            if w is not None and w.alias.baseline == a.baseline and w.window.rule.to_json() == \
                    GuardRule.from_json(a.guard_json or "{}").to_json():
                w.alias = a  # same baseline and rule: keep the window
                continue
            snap = self.store.read_snapshot(self.info.name, a.baseline or 0, params=("weights", "bias"))
            self.watched[name] = _Watched(a, GuardWindow(GuardRule.from_json(a.guard_json or "{}")),
                                          snap.params["weights"].reshape(-1), float(snap.params["bias"].reshape(-1)[0]))
            log.info("guard of %s@%s: comparing the head with baseline version %s", self.info.name, name, a.baseline)

    def _report(self) -> None:
        at = datetime.now(UTC)
        for name, w in self.watched.items():
            s = w.window.summary()
            if s["labels"]:
                self.store.backend.governance.write_metrics(
                    self.info.model_id, name, self.worker_id, w.alias.baseline or 0, s["labels"], s["positives"],
                    s["head_log_loss"], s["base_log_loss"], s["head_auc"], s["base_auc"], at)

    def drift(self, batch_id: str) -> None:
        """The group's drift detector fired before ``batch_id``: pin the aliases whose rule says so."""
        try:
            if not self.watched:
                self._refresh()
            for name, w in list(self.watched.items()):
                a = w.alias
                if w.window.rule.on_drift and a.guard_state == "passing" and a.pinned != a.baseline:
                    self._trip(name, w, why=f"guard: drift detected before batch {batch_id} (on_drift)")
        except CstoreError as exc:
            self.errors += 1
            self.backoff.failure(exc)

    def _trip(self, name: str, w: _Watched, why: str | None = None) -> None:
        a, s = w.alias, w.window.summary()
        regression = w.window.regression() or 0.0
        why = why or (f"guard: over the last {s['labels']} labels the head's log loss {s['head_log_loss']:.4f} is "
                      f"worse than baseline version {a.baseline}'s {s['base_log_loss']:.4f} by {regression:.4f} "
                      f"(> {w.window.rule.max_regression})")
        details = {**s, "regression": regression, "worker": self.worker_id}
        if self.store.governance.trip(self.info, a, why=why, details=details, actor=f"worker {self.worker_id}"):
            log.warning("%s@%s pinned to version %s: %s", self.info.name, name, a.baseline, why)
            self.trips[name] = self.trips.get(name, 0) + 1
        self._refresh()  # read the alias again now (tripped here or by another worker)
        self._report()
        self._next = time.monotonic() + REFRESH_S

    def failing(self) -> dict[str, bool]:
        """Per watched alias: whether this worker's window fails now (for the metrics)."""
        return {name: w.window.failing() for name, w in self.watched.items()}

    def regression(self) -> dict[str, float | None]:
        return {name: w.window.regression() for name, w in self.watched.items()}
