"""Prometheus metrics of a scoring process: what its :class:`cstore.Client` sees, at scrape time.

Staleness is the scorer's key SLO (how old the copy it predicts from may be), so a service should
export it, with the version held and the refresh errors that explain it. One line does it::

    server = serve_scorer_metrics(client, port=9109)      # /metrics, /healthz, /readyz (loaded models)

or, on the registry the service already exposes::

    prometheus_client.REGISTRY.register(ScorerCollector(client))

Series (label ``model``): ``cstore_scorer_staleness_seconds``, ``cstore_scorer_model_version``,
``cstore_scorer_model_loaded``, ``cstore_scorer_refresh_errors_total``, ``cstore_scorer_polls_total``,
``cstore_scorer_chunks_fetched_total``, ``cstore_scorer_chunks_caught_up_total``, ``cstore_scorer_feed_polls_total``,
``cstore_scorer_increments_total``, ``cstore_scorer_predictions_total``,
``cstore_scorer_log_events_total`` (label ``outcome``: logged, dropped, write_errors), and
``cstore_scorer_log_queue`` (process-wide); for shadow scoring (labels ``model``, ``shadow``):
``cstore_scorer_shadow_predictions_total``, ``cstore_scorer_shadow_disagreements_total`` and
``cstore_scorer_shadow_mean_abs_diff``. Plus ``cstore_build_info``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cstore.ops._build import BuildInfo
from cstore.ops._http import MetricsServer, serve
from cstore.scoring import Client

__all__ = ["SCORER_PORT", "ScorerCollector", "serve_scorer_metrics"]

SCORER_PORT = 9109
_LOG_OUTCOMES = ("logged", "dropped", "write_errors")


class ScorerCollector(Collector):
    """Collects a :class:`~cstore.Client`'s series at each scrape (no work between scrapes)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        gauges = {name: GaugeMetricFamily(f"cstore_scorer_{name}", doc, labels=["model"]) for name, doc in (
            ("staleness_seconds", "Seconds since the cached model last refreshed successfully (+Inf: never)."),
            ("model_version", "Head version the cached copy is at least as new as."),
            ("model_loaded", "1 once a copy of the model is in memory."))}
        counters = {name: CounterMetricFamily(f"cstore_scorer_{name}", doc, labels=["model"]) for name, doc in (
            ("refresh_errors", "Failed refreshes of the cached model."),
            ("polls", "Head-counter polls of the cached model."),
            ("chunks_fetched", "Chunk partitions fetched whole into the cached model."),
            ("chunks_caught_up", "Moved chunks brought up to date from their delta entries alone."),
            ("feed_polls", "Increment-feed polls of the cached model."),
            ("increments", "Increments (critical labels) added to the cached model from the feed."),
            ("predictions", "Predictions made from the cached model (one per row of a batch)."))}
        log_events = CounterMetricFamily("cstore_scorer_log_events", "Prediction-log entries, by outcome.",
                                         labels=["model", "outcome"])
        shadow_scored = CounterMetricFamily("cstore_scorer_shadow_predictions", "Shadow predictions made beside a "
                                            "model's (challenger scored, answer unchanged).",
                                            labels=["model", "shadow"])
        shadow_disagree = CounterMetricFamily("cstore_scorer_shadow_disagreements", "Shadow predictions on the "
                                              "other side of 0.5 from the model's.", labels=["model", "shadow"])
        shadow_diff = GaugeMetricFamily("cstore_scorer_shadow_mean_abs_diff", "Mean |model - shadow| probability.",
                                        labels=["model", "shadow"])
        for name, handle in sorted(self.client.models().items()):
            st: dict[str, Any] = handle.status()
            for shadow, sh in st["shadows"].items():
                shadow_scored.add_metric([name, shadow], float(sh["scored"]))
                shadow_disagree.add_metric([name, shadow], float(sh["disagreements"]))
                if sh["mean_abs_diff"] is not None:
                    shadow_diff.add_metric([name, shadow], float(sh["mean_abs_diff"]))
            gauges["staleness_seconds"].add_metric([name], st["staleness_s"] if st["loaded"] else math.inf)
            gauges["model_version"].add_metric([name], float(st["version"] or 0))
            gauges["model_loaded"].add_metric([name], 1.0 if st["loaded"] else 0.0)
            counters["refresh_errors"].add_metric([name], float(st["refresh_errors"]))
            counters["polls"].add_metric([name], float(st["polls"]))
            counters["chunks_fetched"].add_metric([name], float(st["chunks_fetched"]))
            counters["chunks_caught_up"].add_metric([name], float(st["chunks_caught_up"]))
            counters["feed_polls"].add_metric([name], float(st["feed_polls"]))
            counters["increments"].add_metric([name], float(st["increments"]))
            counters["predictions"].add_metric([name], float(handle.predictions))
            if handle.loaded:
                life = self.client.log_counters(handle.model_id)
                for outcome in _LOG_OUTCOMES:
                    log_events.add_metric([name, outcome], float(life.get(outcome, 0)))
        queue = GaugeMetricFamily("cstore_scorer_log_queue", "Predictions queued for the prediction log.")
        queue.add_metric([], float(self.client.log_queue))
        yield from gauges.values()
        yield from counters.values()
        yield log_events
        yield from (shadow_scored, shadow_disagree, shadow_diff)
        yield queue


def serve_scorer_metrics(client: Client, port: int = SCORER_PORT, host: str = "0.0.0.0") -> MetricsServer:
    """Serve a scoring process's ``/metrics`` (:class:`ScorerCollector`, ``cstore_build_info``),
    ``/healthz`` and ``/readyz`` (ready once every opened model is loaded) from a daemon thread."""
    registry = CollectorRegistry()
    registry.register(ScorerCollector(client))
    registry.register(BuildInfo())

    def ready() -> tuple[bool, str]:
        missing = sorted(n for n, h in client.models().items() if not h.loaded)
        return (not missing, "every model loaded" if not missing else f"not loaded yet: {', '.join(missing)}")
    return serve(port, host, ready, registry=registry)
