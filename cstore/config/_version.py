"""The installed cstore's version: one answer for ``cstore.__version__``, ``cstore_build_info`` and
snapshot lineage."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def cstore_version() -> str:
    """The version of the installed distribution, or ``0+unknown`` in a source tree never installed."""
    try:
        return version("cstore")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
        return "0+unknown"
