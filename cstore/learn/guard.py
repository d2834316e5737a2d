"""The promotion guard's statistic: the head against a reviewed baseline on the same labelled events.

Each labelled event is scored by both models *before* the head learns from it (test-then-train),
so the two losses are paired: the difference of their means over the last ``window`` labels does
not depend on how hard the events were, only on which model is better. The guard fails when, over
at least ``min_labels`` labels, the head's mean log loss exceeds the baseline's by more than
``max_regression`` (nats per label).

>>> rule = GuardRule(max_regression=0.05, min_labels=10, window=20)
>>> w = GuardWindow(rule)
>>> y, good, bad = np.tile([1.0, 0.0], 5), np.tile([0.9, 0.1], 5), np.tile([0.1, 0.9], 5)
>>> w.add(good, good, y)
>>> w.failing()   # as good as the baseline
False
>>> w.add(bad, good, y)
>>> w.failing(), w.labels   # the head now gets the last ten wrong
(True, 20)
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cstore.errors import ValidationError
from cstore.learn.logistic import log_loss
from cstore.learn.schedule import KIND_WEIGHTS

__all__ = ["GuardRule", "GuardWindow", "auc"]

_MAX_WINDOW = 10_000_000


@dataclass(frozen=True)
class GuardRule:
    """Fail when the head's windowed log loss is worse than the baseline's by ``max_regression``.

    Only labels of ``kinds`` are judged: the trusted ground truth (chargebacks, analysts' reviews are
    ``explicit``). A feedback source that goes bad (a broken click pipeline, a fraud ring feeding
    "legitimate" signals) poisons what the head learns, but cannot make it look good on those.
    """

    max_regression: float = 0.05
    min_labels: int = 500
    window: int = 5000
    kinds: tuple[str, ...] = ("explicit",)
    on_drift: bool = False  # also pin the alias back when the learning group's drift detector fires

    def __post_init__(self) -> None:
        kinds = self.kinds
        if isinstance(kinds, str) or not isinstance(kinds, (tuple, list)) or not kinds \
                or any(k not in KIND_WEIGHTS for k in kinds):
            raise ValidationError(f"guard kinds must be a non-empty list of {', '.join(KIND_WEIGHTS)}, got {kinds!r}")
        object.__setattr__(self, "kinds", tuple(sorted(set(kinds))))
        if not isinstance(self.on_drift, bool):
            raise ValidationError(f"guard on_drift must be true or false, got {self.on_drift!r}")
        r = self.max_regression
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < float(r) <= 10.0:
            raise ValidationError(f"guard max_regression must be a number in (0, 10] (nats of log loss per label), "
                                  f"got {r!r}")
        for name, v, lo in (("min_labels", self.min_labels, 10), ("window", self.window, 10)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= _MAX_WINDOW:
                raise ValidationError(f"guard {name} must be an integer in [{lo}, {_MAX_WINDOW}], got {v!r}")
        if self.window < self.min_labels:
            raise ValidationError(f"guard window ({self.window}) must hold at least min_labels ({self.min_labels})")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GuardRule:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"guard rule is not JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> GuardRule:
        if not isinstance(raw, dict):
            raise ValidationError(f"a guard rule is a mapping of max_regression, min_labels, window, kinds, "
                                  f"on_drift; got {raw!r}")
        unknown = sorted(set(raw) - {"max_regression", "min_labels", "window", "kinds", "on_drift"})
        if unknown:
            raise ValidationError(f"unknown guard setting(s) {', '.join(unknown)}; "
                                  f"use max_regression, min_labels, window, kinds and on_drift")
        return cls(**raw)


class GuardWindow:
    """The last ``rule.window`` labelled events, with both models' predictions."""

    def __init__(self, rule: GuardRule) -> None:
        self.rule = rule
        self._blocks: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()
        self.labels = 0

    def add(self, p_head: np.ndarray, p_base: np.ndarray, y: np.ndarray) -> None:
        """Add one micro-batch (predictions made before the head learned it); drop what fell out."""
        if not len(y):
            return
        self._blocks.append((np.asarray(p_head, np.float64), np.asarray(p_base, np.float64),
                             np.asarray(y, np.float64)))
        self.labels += len(y)
        while self._blocks and self.labels - len(self._blocks[0][2]) >= self.rule.window:
            self.labels -= len(self._blocks.popleft()[2])

    def reset(self) -> None:
        self._blocks.clear()
        self.labels = 0

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blocks = list(self._blocks)  # one copy under the GIL: a metrics thread may read while a batch is added
        if not blocks:
            empty = np.zeros(0)
            return empty, empty, empty
        return (np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]),
                np.concatenate([b[2] for b in blocks]))

    def summary(self) -> dict[str, Any]:
        """Labels, positives, each side's mean log loss and AUC (None where undefined)."""
        head, base, y = self._arrays()
        if not len(y):
            return {"labels": 0, "positives": 0, "head_log_loss": None, "base_log_loss": None,
                    "head_auc": None, "base_auc": None}
        return {"labels": int(len(y)), "positives": int((y >= 0.5).sum()),
                "head_log_loss": float(np.mean(log_loss(head, y))), "base_log_loss": float(np.mean(log_loss(base, y))),
                "head_auc": auc(head, y), "base_auc": auc(base, y)}

    def regression(self) -> float | None:
        """Head minus baseline mean log loss over the window (None below ``min_labels``)."""
        if self.labels < self.rule.min_labels:
            return None
        head, base, y = self._arrays()
        return float(np.mean(log_loss(head, y)) - np.mean(log_loss(base, y)))

    def failing(self) -> bool:
        r = self.regression()
        return r is not None and r > self.rule.max_regression


def auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None when one class is absent.

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    pa, pos = np.asarray(p, np.float64), np.asarray(y, np.float64) >= 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(pa, kind="mergesort")
    ranks = np.empty(len(pa))
    sorted_p = pa[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
