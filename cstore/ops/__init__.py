"""Operating cstore: metrics, health endpoints, logs and fleet status.

* :class:`WorkerMetrics` — the worker's Prometheus series (events learned, commits, conflicts,
  latency, lag per partition, drift, leases), single- or multi-process.
* :func:`serve` — ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread, with a
  :class:`Readiness` flag and :func:`cluster_check`.
* :class:`ScorerCollector` / :func:`serve_scorer_metrics` — a scoring process's series (staleness,
  version held, refresh errors, predictions, the prediction log); :class:`BuildInfo` — ``cstore_build_info``.
* :func:`setup_logging` — one line per event, text or JSON, credentials masked.
* :func:`fleet_status` — the fleet learning one model (lag, owners, workers, drift), from Cassandra
  alone; :class:`WorkerObserver` keeps a running worker's metrics and readiness in step.
"""
from cstore.ops._build import BuildInfo
from cstore.ops._http import MetricsServer, Readiness, ReadyCheck, cluster_check, serve
from cstore.ops._logs import LOG_FORMATS, MASK, JsonFormatter, RedactingFilter, TextFormatter, setup_logging
from cstore.ops._metrics import (COMMIT_LATENCY_BUCKETS, DEFAULT_PORT, LEASE_CHANGES, WorkerMetrics,
                                 enable_multiprocess, mark_process_dead, multiprocess_dir, multiprocess_registry)
from cstore.ops._observer import WorkerObserver
from cstore.ops._scorer_metrics import SCORER_PORT, ScorerCollector, serve_scorer_metrics
from cstore.ops._status import fleet_status

__all__ = ["COMMIT_LATENCY_BUCKETS", "DEFAULT_PORT", "LEASE_CHANGES", "LOG_FORMATS", "MASK", "SCORER_PORT",
           "BuildInfo", "JsonFormatter", "MetricsServer", "ReadyCheck", "Readiness", "RedactingFilter",
           "ScorerCollector", "TextFormatter", "WorkerMetrics", "WorkerObserver", "cluster_check",
           "enable_multiprocess", "fleet_status", "mark_process_dead", "multiprocess_dir", "multiprocess_registry",
           "serve", "serve_scorer_metrics", "setup_logging"]
