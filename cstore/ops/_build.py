"""``cstore_build_info``: which cstore (and Python) a process runs, as a constant 1 with labels."""
from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["BuildInfo"]


class BuildInfo(Collector):
    """Joins any cstore series with the version that produced it (``* on(instance) group_left(version)``)."""

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("cstore_build_info", "cstore build: version and Python, always 1.",
                              labels=["version", "python"])
        try:
            v = version("cstore")
        except PackageNotFoundError:  # running from a source tree that was never installed
            v = "0+unknown"
        g.add_metric([v, platform.python_version()], 1.0)
        yield g
