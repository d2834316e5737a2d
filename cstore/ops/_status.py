"""``cstore status``: the fleet learning one model, as one dictionary.

Keys: ``model``, ``group``, ``head_version``, ``lag_events`` (events visible but not yet learned, all
partitions), ``partitions`` (each with ``owner``, ``lag_events``, per-lane lag, events learned, last
checkpoint time, and ``critical``: true for the last one, the critical partition), ``workers``
(alive: a heartbeat within the lease TTL), ``last_commit`` (time of the last checkpointed batch),
``drift`` (the shared detector: detections, last drift, score, recent loss, learning-rate scale) and
``feedback`` (the layout).
"""
from __future__ import annotations

from datetime import UTC
from typing import Any

from cstore.feedback import FeedbackReader, PredictionLog, context
from cstore.store import Store


def _iso(dt: Any) -> str | None:
    return dt.replace(tzinfo=UTC).isoformat() if dt is not None else None


def fleet_status(store: Store, model: str, group: str = "default") -> dict[str, Any]:
    """Everything ``cstore status`` shows, computed from Cassandra alone."""
    info, fcfg = context(store).layout(model, create=False)  # a status query never writes
    fleet = store.backend.fleet
    reader = FeedbackReader(store.backend.feedback, fcfg, group, store.chunks.codec)
    parts = reader.lag(range(fcfg.critical_part + 1))
    workers = []
    for w in fleet.workers(info.model_id, group):
        workers.append({"worker": w["worker"], "host": w["host"], "pid": w["pid"],
                        "partitions": list(w["partitions"] or []), "events": w["events"], "batches": w["batches"],
                        "events_per_s": w["rate"], "started_at": _iso(w["started_at"]),
                        "heartbeat_at": _iso(w["heartbeat_at"])})
    state = fleet.learner_state(info.model_id, group, serial=False) or {}
    stamps = [p["checkpoint_at"] for p in parts.values() if p["checkpoint_at"]]
    return {
        "model": model,
        "group": group,
        "head_version": store.head_version(model),
        "lag_events": sum(p["lag_events"] for p in parts.values()),
        "learned_events": sum(p["learned_events"] for p in parts.values()),
        "partitions": [{"partition": p, **d, "critical": p == fcfg.critical_part} for p, d in sorted(parts.items())],
        "workers": sorted(workers, key=lambda w: w["worker"]),
        "last_commit": max(stamps) if stamps else None,
        "drift": {"detections": state.get("drifts") or 0, "last_drift": _iso(state.get("last_drift")),
                  "score": state.get("drift_score"), "loss": state.get("loss"),
                  "lr_scale": state.get("lr_scale"), "batches": state.get("batches") or 0,
                  "events_scored": state.get("events") or 0},
        "feedback": fcfg.to_dict(),
        # Scorers' prediction log, last 24 h: lookup_misses are labels that came without features and
        # found no logged prediction (never scored with log=True, or expired): counted, not dropped.
        "prediction_log": PredictionLog(store).stats(model),
    }
