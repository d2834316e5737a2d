"""ADWIN drift detector (Bifet & Gavaldà, 2007), our own implementation.

See :mod:`cstore.learn.drift` for the common detector interface.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cstore.learn._common import STATE_VERSION as _STATE_VERSION
from cstore.learn._common import check_state as _check_state
from cstore.learn._common import finite as _finite

__all__ = ["ADWIN"]


class ADWIN:
    """ADaptive WINdowing (Bifet & Gavaldà, 2007), exponential-histogram form.

    The window is kept as buckets: row ``i`` holds up to ``max_buckets``
    buckets of ``2**i`` values, each storing (sum, sum of squared deviations).
    Every ``clock`` updates, every split of the window into an older part W0
    and a newer part W1 (at bucket boundaries, both at least
    ``min_window_length`` long) is tested with the cut of the paper::

        |mean(W0) - mean(W1)| > sqrt(2 m var(W) ln(2/d')) + 2/3 m ln(2/d')
        with m = 1/|W0| + 1/|W1| and ln(2/d') = ln(2 ln|W| / delta)

    On a cut the oldest bucket is dropped, repeatedly, until no split is
    significant; that update returns True. The window (hence memory) is
    ``O(max_buckets log |W|)`` buckets.

    During one abrupt change ADWIN usually cuts 1-4 times (one per check
    while old data is flushed); wrap it in
    :class:`~cstore.learn.drift.DriftConfirmer` to get one drift per change.

    >>> ad = ADWIN(clock=8, min_instances=10)
    >>> hits = [i for i, x in enumerate([0.0] * 300 + [1.0] * 100) if ad.update(x)]
    >>> 300 < hits[0] < 330, ad.width < 150
    (True, True)
    """

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5,
                 min_window_length: int = 5, min_instances: int = 30) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta (confidence) must be in (0, 1), got {delta!r}")
        for name, v, lo in (("clock", clock, 1), ("max_buckets", max_buckets, 2),
                            ("min_window_length", min_window_length, 1), ("min_instances", min_instances, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.delta, self.clock, self.max_buckets = float(delta), clock, max_buckets
        self.min_window_length, self.min_instances = min_window_length, min_instances
        self.n_detections = 0
        self._tick = 0
        self._drift = False
        self._dropped: list[tuple[int, float, float]] = []  # (row, sum, m2) dropped by the last cut, in order
        self.reset()

    def reset(self) -> None:
        """Empty the window (keeps ``n_detections``)."""
        self._rows: list[list[list[float]]] = []  # rows[i]: buckets [sum, M2] of 2**i values, oldest first
        self._width = 0
        self._total = 0.0
        self._m2 = 0.0  # sum of squared deviations of the whole window

    @property
    def drift_detected(self) -> bool:
        """Whether the last ``update`` flagged a drift."""
        return self._drift

    @property
    def width(self) -> int:
        """Number of values in the current window."""
        return self._width

    @property
    def estimation(self) -> float:
        """Mean of the current window (0.0 when empty)."""
        return self._total / self._width if self._width else 0.0

    def update(self, x: float) -> bool:
        """Add one value; True if the window was cut at this point."""
        x = _finite(x)
        if self._width:
            d = x - self._total / self._width
            self._m2 += self._width * d * d / (self._width + 1)
        self._width += 1
        self._total += x
        if not self._rows:
            self._rows.append([])
        self._rows[0].append([x, 0.0])
        self._compress()
        self._tick += 1
        self._dropped = []
        drift = False
        if self._tick % self.clock == 0 and self._width >= max(self.min_instances, 2 * self.min_window_length):
            while self._cut_exists():
                self._dropped.append(self._drop_oldest())
                drift = True
        self._drift = drift
        if drift:
            self.n_detections += 1
        return drift

    def _compress(self) -> None:
        # Merge the two oldest buckets of any over-full row into the next row
        # (they are newer than everything already there, so they go last).
        i = 0
        while i < len(self._rows) and len(self._rows[i]) > self.max_buckets:
            (s1, v1), (s2, v2) = self._rows[i][0], self._rows[i][1]
            del self._rows[i][:2]
            size = 1 << i
            merged = [s1 + s2, v1 + v2 + (s1 - s2) ** 2 / (2 * size)]
            if i + 1 == len(self._rows):
                self._rows.append([])
            self._rows[i + 1].append(merged)
            i += 1

    def _cut_exists(self) -> bool:
        n = self._width
        var = self._m2 / n
        log_term = math.log(2.0 * math.log(n) / self.delta)
        n0, s0 = 0, 0.0
        for i in range(len(self._rows) - 1, -1, -1):  # oldest row first
            size = 1 << i
            for bucket_sum, _ in self._rows[i]:
                n0 += size
                s0 += bucket_sum
                n1 = n - n0
                if n1 < self.min_window_length:
                    return False  # later splits only shrink W1
                if n0 < self.min_window_length:
                    continue
                m = 1.0 / n0 + 1.0 / n1
                eps = math.sqrt(2.0 * m * var * log_term) + 2.0 / 3.0 * m * log_term
                if abs(s0 / n0 - (self._total - s0) / n1) > eps:
                    return True
        return False

    def _drop_oldest(self) -> tuple[int, float, float]:
        row = len(self._rows) - 1
        bucket_sum, bucket_m2 = self._rows[row].pop(0)
        size = 1 << row
        rest = self._width - size
        if rest > 0:
            d = bucket_sum / size - (self._total - bucket_sum) / rest
            self._m2 = max(0.0, self._m2 - bucket_m2 - size * rest * d * d / self._width)
        else:
            self._m2 = 0.0
        self._width = rest
        self._total = self._total - bucket_sum if rest else 0.0
        while self._rows and not self._rows[-1]:
            self._rows.pop()
        return row, bucket_sum, bucket_m2

    def _restore_oldest(self, row: int, bucket_sum: float, bucket_m2: float) -> None:
        # Exact inverse of _drop_oldest (merge of two sub-windows).
        size = 1 << row
        while len(self._rows) <= row:
            self._rows.append([])
        self._rows[row].insert(0, [bucket_sum, bucket_m2])
        if self._width:
            d = bucket_sum / size - self._total / self._width
            self._m2 += bucket_m2 + size * self._width * d * d / (self._width + size)
        else:
            self._m2 = bucket_m2
        self._width += size
        self._total += bucket_sum

    def rearm(self) -> None:
        """Undo the cut of the drift just flagged (call right after it).

        The old part of the window comes back as the reference, so the next
        checks need the *new* values to still differ from it: this is how
        :class:`~cstore.learn.drift.DriftConfirmer` asks for confirmation.
        """
        if self._drift:
            for row, bucket_sum, bucket_m2 in reversed(self._dropped):
                self._restore_oldest(row, bucket_sum, bucket_m2)
            self._dropped = []

    def get_state(self) -> dict[str, Any]:
        """Plain-dict snapshot (JSON/msgpack-safe); see :meth:`from_state`."""
        return {
            "type": "ADWIN", "version": _STATE_VERSION,
            "params": {"delta": self.delta, "clock": self.clock, "max_buckets": self.max_buckets,
                       "min_window_length": self.min_window_length, "min_instances": self.min_instances},
            "rows": [[list(b) for b in row] for row in self._rows],
            "width": self._width, "total": self._total, "m2": self._m2, "tick": self._tick,
            "drift": self._drift, "n_detections": self.n_detections,
            "dropped": [list(b) for b in self._dropped],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ADWIN:
        """Rebuild a detector that continues exactly where the snapshot was."""
        _check_state(state, "ADWIN")
        ad = cls(**state["params"])
        ad._rows = [[[float(s), float(v)] for s, v in row] for row in state["rows"]]
        ad._width, ad._total, ad._m2 = int(state["width"]), float(state["total"]), float(state["m2"])
        ad._tick, ad._drift = int(state["tick"]), bool(state["drift"])
        ad.n_detections = int(state["n_detections"])
        ad._dropped = [(int(r), float(s), float(v)) for r, s, v in state["dropped"]]
        if sum(len(r) << i for i, r in enumerate(ad._rows)) != ad._width:
            raise ValueError("corrupt ADWIN state: bucket sizes do not add up to width")
        return ad
