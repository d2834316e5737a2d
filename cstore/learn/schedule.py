"""Learning-rate scheduling and feedback weighting.

:class:`AdaptiveLearningRate` yields a global multiplier for the optimizer's
step (``lr_scale`` in :mod:`cstore.learn.optimizers`): it jumps up on drift,
decays back with a half-life counted in events, and rises gently while the
recent loss is worse than the long-term loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from types import MappingProxyType

import numpy as np

from cstore.learn._common import STATE_VERSION as _STATE_VERSION
from cstore.learn._common import check_state as _check_state

__all__ = ["KIND_WEIGHTS", "AdaptiveLearningRate", "age_weights", "kind_weights", "window_weights"]

#: Default sample weight per feedback kind. Read-only so that one caller
#: cannot silently change the weighting of every other one.
KIND_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"explicit": 1.0, "implicit": 0.5, "reward": 1.0, "other": 0.3}
)


def _pos(name: str, v: float) -> float:
    v = float(v)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return v


class AdaptiveLearningRate:
    """Global step multiplier: ``scale = clip(base * boost * perf, min, max)``.

    * ``boost`` is multiplied by ``drift_boost`` on :meth:`on_drift` and decays
      back to 1 geometrically: ``log(boost)`` halves every
      ``decay_half_life`` events.
    * ``perf = sqrt(fast / slow)`` when the fast loss EMA (rate ``loss_ema``
      per event) is above the slow one (rate ``loss_ema_slow``), else 1:
      a 21 % worse recent loss gives a 10 % larger step. Both EMAs are
      bias-corrected, so early estimates are plain means.

    >>> lr = AdaptiveLearningRate()
    >>> lr.scale
    1.0
    >>> lr.on_drift(); round(lr.scale, 3)
    3.0
    >>> lr.update(loss=0.3, n_events=1000); round(lr.scale, 3)
    1.732
    """

    def __init__(self, base: float = 1.0, min_scale: float = 0.1, max_scale: float = 10.0,
                 drift_boost: float = 3.0, decay_half_life: float = 1000, loss_ema: float = 0.01,
                 loss_ema_slow: float = 0.001) -> None:
        self.base = _pos("base", base)
        self.min_scale = _pos("min_scale", min_scale)
        self.max_scale = _pos("max_scale", max_scale)
        if not self.min_scale <= self.base <= self.max_scale:
            raise ValueError(f"need min_scale <= base <= max_scale, got {min_scale}, {base}, {max_scale}")
        self.drift_boost = _pos("drift_boost", drift_boost)
        if self.drift_boost < 1.0:
            raise ValueError(f"drift_boost must be >= 1 (it raises the rate), got {drift_boost!r}")
        self.decay_half_life = _pos("decay_half_life", decay_half_life)
        self.loss_ema = _pos("loss_ema", loss_ema)
        self.loss_ema_slow = _pos("loss_ema_slow", loss_ema_slow)
        if not self.loss_ema_slow < self.loss_ema < 1.0:
            raise ValueError("need 0 < loss_ema_slow < loss_ema < 1 (slow EMA must be the long-term one)")
        self._log_boost = 0.0
        # Un-normalised EMAs and their normalisers (bias correction).
        self._fast = self._slow = 0.0
        self._fast_norm = self._slow_norm = 0.0
        self.n_events = 0
        self.n_drifts = 0

    @property
    def boost(self) -> float:
        """Current drift boost factor (1.0 = none)."""
        return math.exp(self._log_boost)

    @property
    def performance_factor(self) -> float:
        """``sqrt(recent loss / long-term loss)`` if recent is worse, else 1."""
        if self._fast_norm == 0.0 or self._slow_norm == 0.0:
            return 1.0
        fast, slow = self._fast / self._fast_norm, self._slow / self._slow_norm
        if slow <= 0.0 or fast <= slow:
            return 1.0
        return math.sqrt(fast / slow)

    @property
    def scale(self) -> float:
        """Multiplier to pass as the optimizer's ``lr_scale``."""
        raw = self.base * math.exp(self._log_boost) * self.performance_factor
        return min(self.max_scale, max(self.min_scale, raw))

    def on_drift(self) -> None:
        """Raise the rate after a (confirmed) drift; repeated drifts stack."""
        cap = math.log(self.max_scale / self.base)
        self._log_boost = min(cap, self._log_boost + math.log(self.drift_boost))
        self.n_drifts += 1

    def update(self, loss: float, n_events: int = 1) -> None:
        """Account for ``n_events`` events whose mean loss was ``loss``."""
        if isinstance(n_events, bool) or not isinstance(n_events, (int, np.integer)) or n_events < 0:
            raise ValueError(f"n_events must be an int >= 0, got {n_events!r}")
        loss = float(loss)
        if not (math.isfinite(loss) and loss >= 0.0):
            raise ValueError(f"loss must be a finite number >= 0, got {loss!r}")
        if n_events == 0:
            return
        n = int(n_events)
        self._log_boost *= 0.5 ** (n / self.decay_half_life)
        # n events at once == n single-event EMA steps with the same value.
        for attr, rate in (("_fast", self.loss_ema), ("_slow", self.loss_ema_slow)):
            keep = (1.0 - rate) ** n
            setattr(self, attr, keep * getattr(self, attr) + (1.0 - keep) * loss)
            setattr(self, attr + "_norm", keep * getattr(self, attr + "_norm") + (1.0 - keep))
        self.n_events += n

    def get_state(self) -> dict[str, Any]:
        """Plain-dict snapshot (JSON/msgpack-safe); see :meth:`from_state`."""
        return {
            "type": "AdaptiveLearningRate", "version": _STATE_VERSION,
            "params": {"base": self.base, "min_scale": self.min_scale, "max_scale": self.max_scale,
                       "drift_boost": self.drift_boost, "decay_half_life": self.decay_half_life,
                       "loss_ema": self.loss_ema, "loss_ema_slow": self.loss_ema_slow},
            "log_boost": self._log_boost, "fast": self._fast, "slow": self._slow,
            "fast_norm": self._fast_norm, "slow_norm": self._slow_norm,
            "n_events": self.n_events, "n_drifts": self.n_drifts,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AdaptiveLearningRate:
        """Rebuild a schedule that continues exactly where the snapshot was."""
        _check_state(state, "AdaptiveLearningRate")
        lr = cls(**state["params"])
        lr._log_boost = float(state["log_boost"])
        lr._fast, lr._slow = float(state["fast"]), float(state["slow"])
        lr._fast_norm, lr._slow_norm = float(state["fast_norm"]), float(state["slow_norm"])
        lr.n_events, lr.n_drifts = int(state["n_events"]), int(state["n_drifts"])
        return lr


def age_weights(event_times: np.ndarray, now: float, half_life_s: float | None) -> np.ndarray:
    """Exponential down-weighting of feedback by age: ``0.5 ** (age / half_life_s)``.

    Ages are clipped at 0, so events stamped slightly in the future (clock
    skew) weigh 1. ``half_life_s=None`` disables ageing (all ones).

    >>> age_weights(np.array([100.0, 90.0, 80.0, 110.0]), now=100.0, half_life_s=10.0).tolist()
    [1.0, 0.5, 0.25, 1.0]
    """
    age = _ages(event_times, now)
    if half_life_s is None:
        return np.ones(age.shape)
    out: np.ndarray = np.exp2(-np.maximum(age, 0.0) / _pos("half_life_s", half_life_s))
    return out


def window_weights(event_times: np.ndarray, now: float, window_s: float | None) -> np.ndarray:
    """A sliding window over event time: 1 for events at most ``window_s`` old, 0 for older ones.

    Where ``age_weights`` fades old feedback, a window forgets it at once: the pattern for labels that
    stop being true after a known time (a rule change, a product relaunch). ``None``: all ones.

    >>> window_weights(np.array([100.0, 91.0, 89.0, 110.0]), now=100.0, window_s=10.0).tolist()
    [1.0, 1.0, 0.0, 1.0]
    """
    age = _ages(event_times, now)
    if window_s is None:
        return np.ones(age.shape)
    return (age <= _pos("window_s", window_s)).astype(np.float64)


def _ages(event_times: np.ndarray, now: float) -> np.ndarray:
    """Seconds between each event time and ``now`` (negative for clock skew), validated finite."""
    t = np.asarray(event_times, dtype=np.float64)
    if not np.all(np.isfinite(t)) or not math.isfinite(float(now)):
        raise ValueError("event_times and now must be finite (seconds)")
    return float(now) - t


def kind_weights(kinds: list[str], weights: Mapping[str, float] = KIND_WEIGHTS) -> np.ndarray:
    """Sample weight per feedback kind; unknown kinds get ``weights["other"]``.

    >>> kind_weights(["explicit", "implicit", "click?"]).tolist()
    [1.0, 0.5, 0.3]
    """
    other = weights.get("other", 0.0)
    return np.array([weights.get(k, other) for k in kinds], dtype=np.float64)
