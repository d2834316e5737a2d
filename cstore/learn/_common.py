"""Small helpers shared by the stateful detectors (not public API)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Bumped whenever a get_state() layout changes incompatibly.
STATE_VERSION = 1


def finite(x: float) -> float:
    """``float(x)``, rejecting NaN and inf with an actionable message."""
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"drift detectors need finite values, got {x!r}; clip the loss first")
    return v


def check_state(state: Mapping[str, Any], kind: str) -> None:
    """Reject a state dict that is not ``kind`` at the current version."""
    if not isinstance(state, Mapping) or state.get("type") != kind:
        raise ValueError(f"not a {kind} state: expected a dict with type={kind!r}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"unsupported {kind} state version {state.get('version')!r}; expected {STATE_VERSION}"
        )
