"""Update statistics per model and time bucket (5 minutes by default).

Each writer process keeps running totals for the current bucket and overwrites its own row
(idempotent, no counters, no read-before-write); readers sum over writers.
"""
from __future__ import annotations

import math
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

from cstore.backend import STATS_COLUMNS, ParamTables

_DAY = 86400


@dataclass
class Totals:
    updates: int = 0
    chunk_commits: int = 0
    coords: int = 0
    lr_updates: int = 0
    lr_sum: float = 0.0
    lr_sq_sum: float = 0.0
    conflicts: int = 0
    retries: int = 0
    overwrites: int = 0
    bytes_written: int = 0
    drift_events: int = 0

    def add(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> dict[str, Any]:
        n = self.lr_updates
        mean = self.lr_sum / n if n else None
        std = math.sqrt(max(self.lr_sq_sum / n - mean * mean, 0.0)) if mean is not None else None
        return {"updates": self.updates, "chunk_commits": self.chunk_commits, "coords": self.coords,
                "lr_mean": mean, "lr_std": std, "conflicts": self.conflicts, "retries": self.retries,
                "overwrites": self.overwrites, "bytes_written": self.bytes_written,
                "drift_events": self.drift_events}


class StatsRecorder:
    """In-process accumulator that persists this writer's totals per (model, bucket)."""

    def __init__(self, tables: ParamTables, bucket_s: int, writer: str | None = None) -> None:
        self._tables = tables
        self.bucket_s = bucket_s
        self.writer = writer or uuid.uuid4().hex[:16]
        self._lock = threading.Lock()
        self._totals: dict[tuple[uuid.UUID, int], Totals] = defaultdict(Totals)
        self._dirty: set[tuple[uuid.UUID, int]] = set()

    def record(self, model_id: uuid.UUID, delta: Totals, when: float | None = None) -> None:
        bucket = int(when or time.time()) // self.bucket_s * self.bucket_s
        with self._lock:
            self._totals[(model_id, bucket)].add(delta)
            self._dirty.add((model_id, bucket))

    def flush(self) -> None:
        """Write this writer's dirty buckets (fire and forget is not enough: we wait)."""
        with self._lock:
            items = [(k, Totals(**vars(self._totals[k]))) for k in self._dirty]
            self._dirty.clear()
            # Buckets older than two widths will not change again: forget them.
            horizon = time.time() - 2 * self.bucket_s
            written = dict(items)
            for k in [k for k in self._totals if k[1] < horizon and k not in written]:
                del self._totals[k]
        if items:
            self._tables.write_stats([(mid, b // _DAY, b, self.writer, *(getattr(t, c) for c in STATS_COLUMNS))
                                      for (mid, b), t in items])

    def read(self, model_id: uuid.UUID, since: float) -> list[dict[str, Any]]:
        """Per-bucket totals summed over writers, oldest first."""
        first = int(since) // self.bucket_s * self.bucket_s
        days = range(first // _DAY, int(time.time()) // _DAY + 1)
        per_bucket: dict[int, Totals] = defaultdict(Totals)
        for r in self._tables.stats(model_id, days, first):
            per_bucket[r["bucket"]].add(Totals(**{f.name: r[f.name] or 0 for f in fields(Totals)}))
        return [{"bucket_start": b, **per_bucket[b].summary()} for b in sorted(per_bucket)]
