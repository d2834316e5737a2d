"""Prequential metrics (ROC AUC, log loss, accuracy; overall and windowed) and drift-detection scoring.

Predictions are recorded in stream order, each made *before* the learner saw its label, so computing
the metrics over the recorded arrays at the end is the prequential evaluation itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-15


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC with ties counted as one half (Mann-Whitney); None when a class is absent."""
    y = np.asarray(y, np.float64)
    pos = int((y > 0.5).sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(y.size, np.float64)
    sp = np.asarray(p, np.float64)[order]
    # average ranks over ties
    _, first, counts = np.unique(sp, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y > 0.5].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(((np.asarray(p) >= 0.5) == (np.asarray(y) > 0.5)).mean())


def summary(y: np.ndarray, p: np.ndarray, start: int = 0, stop: int | None = None) -> dict[str, float | None]:
    """AUC, log loss and accuracy over ``[start, stop)``."""
    ys, ps = y[start:stop], p[start:stop]
    if ys.size == 0:
        return {"auc": None, "logloss": None, "accuracy": None}
    auc = roc_auc(ys, ps)
    return {"auc": None if auc is None else round(auc, 4), "logloss": round(log_loss(ys, ps), 4),
            "accuracy": round(accuracy(ys, ps), 4)}


def windowed(y: np.ndarray, p: np.ndarray, window: int, step: int | None = None) -> dict[str, list]:
    """Metrics over the sliding window ``(t - window, t]``, every ``step`` events (positions are ``t``)."""
    step = step or max(1, window // 5)
    out: dict[str, list] = {"t": [], "auc": [], "logloss": [], "accuracy": []}
    for t in range(window, y.size + 1, step):
        s = summary(y, p, t - window, t)
        out["t"].append(t)
        for k in ("auc", "logloss", "accuracy"):
            out[k].append(s[k])
    return out


@dataclass
class DriftScore:
    detections: list[int]
    matched: list[dict[str, Any]]   # one per true drift: first detection, delay (or None)
    false_alarms: int
    max_delay_ok: bool              # every drift detected within ``max_delay`` events

    def to_dict(self) -> dict[str, Any]:
        return {"detections": self.detections, "matched": self.matched, "false_alarms": self.false_alarms,
                "within_max_delay": self.max_delay_ok}


def score_detections(detections: Sequence[int], drift_points: Sequence[int], widths: Sequence[int], n: int,
                     *, max_delay: int = 1000, horizon: int = 3000) -> DriftScore:
    """Match detections to true drifts.

    A detection belongs to drift ``d`` (centre ``p``, width ``w``) if it falls in
    ``[p - w/2, p + w/2 + horizon)`` (and before the next drift); the first one is the detection, later
    ones are repeated alarms for the same change (not false alarms: a gradual drift is a long change).
    Anything else is a false alarm. The delay is measured from ``p - w/2``, where the new concept begins
    to appear (for an abrupt drift, from ``p`` itself, less the few events of its narrow width).
    """
    dets = sorted(int(d) for d in detections)
    used: set[int] = set()
    matched = []
    for i, (p, w) in enumerate(zip(drift_points, widths)):
        begin = p - w // 2
        nxt = drift_points[i + 1] - widths[i + 1] // 2 if i + 1 < len(drift_points) else n + 1
        end = min(p + w // 2 + horizon, nxt)
        mine = [d for d in dets if begin <= d < end]
        used.update(mine)
        first = mine[0] if mine else None
        matched.append({"position": p, "width": w, "detected_at": first,
                        "delay": None if first is None else first - begin})
    false_alarms = sum(1 for d in dets if d not in used)
    ok = all(m["delay"] is not None and m["delay"] <= max_delay for m in matched)
    return DriftScore(dets, matched, false_alarms, ok)
