"""The evaluation's optional dependencies, imported on first use with an actionable error.

River, Vowpal Wabbit and matplotlib are needed by ``cstore eval`` only; no other cstore module imports them.
"""
from __future__ import annotations

from types import ModuleType

from cstore.errors import ValidationError

_HINT = "`cstore eval` needs the evaluation extra: pip install -e './dev[eval]' (cstore-dev's eval extra)"


def require_river() -> ModuleType:
    """``river`` (reference learners, ADWIN, datasets), or a clear error naming the extra."""
    try:
        import river
        import river.datasets.synth  # noqa: F401  (submodules the evaluation uses)
        import river.drift  # noqa: F401
        import river.linear_model  # noqa: F401
        import river.optim  # noqa: F401
    except ImportError as exc:
        raise ValidationError(f"{_HINT} (river is missing: {exc})") from None
    return river


def require_vw() -> ModuleType:
    """``vowpalwabbit`` (the second reference learner), or a clear error naming the extra."""
    try:
        import vowpalwabbit
    except ImportError as exc:
        raise ValidationError(f"{_HINT} (vowpalwabbit is missing: {exc})") from None
    return vowpalwabbit


def require_pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display needed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValidationError(f"{_HINT} (matplotlib is missing: {exc})") from None
    return plt
