"""Lineage: what produced a snapshot, recorded with it (``snapshots.lineage``, JSON).

The cstore version that wrote it, the model's learner configuration, and for each consumer group:
the feedback checkpoints the snapshot covers (per partition, the time below which every segment was
learned and the events consumed), the workers registered and the last writer of the group's shared
learner state. Read from the backend's tables only: the store room does not know the worker.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cstore.backend import Backend
from cstore.config import cstore_version
from cstore.core import ModelInfo

DEFAULT_GROUPS = ("default",)


def collect_lineage(backend: Backend, info: ModelInfo, groups: Sequence[str] = DEFAULT_GROUPS) -> dict[str, Any]:
    meta: Mapping[str, Any] = info.metadata if isinstance(info.metadata, Mapping) else {}
    out: dict[str, Any] = {"cstore_version": cstore_version(), "learner": meta.get("learner"), "groups": {}}
    layout = backend.feedback.layout(info.model_id)
    if layout is None:
        return out  # not a learner: nothing learned it from feedback
    parts = list(range(int(layout["partitions"]) + 1))  # the bulk partitions and the critical one
    for group in groups:
        checkpoints = {}
        for part, rows in zip(parts, backend.feedback.checkpoints(info.model_id, group, parts, serial=False)):
            lanes = [r for r in rows if r.get("lane") is not None]
            if lanes:
                checkpoints[str(part)] = {
                    "floor_ticks": min(int(r["floor_ticks"] or 0) for r in lanes),
                    "events": sum(int(r["events"] or 0) for r in lanes),
                    "last_batch": max((str(r["last_batch"]) for r in lanes if r["last_batch"]), default=None)}
        state = backend.fleet.learner_state(info.model_id, group, serial=False)
        workers = sorted(r["worker"] for r in backend.fleet.workers(info.model_id, group))
        if checkpoints or state or workers:
            out["groups"][group] = {"checkpoints": checkpoints, "workers": workers,
                                    "events": state["events"] if state else 0,
                                    "batches": state["batches"] if state else 0,
                                    "state_updated_by": state["updated_by"] if state else None}
    return out
