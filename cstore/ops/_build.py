"""``cstore_build_info``: which cstore (and Python) a process runs, as a constant 1 with labels."""
from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cstore.config import cstore_version

__all__ = ["BuildInfo"]


class BuildInfo(Collector):
    """Joins any cstore series with the version that produced it (``* on(instance) group_left(version)``)."""

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("cstore_build_info", "cstore build: version and Python, always 1.",
                              labels=["version", "python"])
        g.add_metric([cstore_version(), platform.python_version()], 1.0)
        yield g
