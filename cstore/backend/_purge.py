"""Everything a model owns, found and deleted (``cql/008_protection.cql``: the drop in progress).

A dropped model's rows are spread over every table, keyed by partitions the purge has to find: the
chunks by number, history by the buckets ``history_buckets`` lists, segments by the bucket index,
consumer groups (checkpoints, leases, learner state, batch traces) by a scan of those small tables'
partition keys, and the prediction log by the entities its review table names. Each partition is
then deleted whole (one partition tombstone each, no row tombstones). The audit trail
(``audit_log``, keyed by model name) is not the incarnation's: it stays, and records the drop.

What is NOT found: a prediction-log row whose review row was never written (they travel in separate
batches; the review batch failed and the log batch did not) is left to its TTL
(``prediction_log_ttl_s``). Rows a still-running worker or scorer writes after the drop are the
writer's; stop them first (`cstore model drop` says so).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cstore.backend._statements import Row, Runner

REVIEW_BUCKET_S = 600   # prediction_review partitions: scored time // 600 s (fixed for the table's life)
REVIEW_BANDS = 10       # min(9, floor(|score - 0.5| / 0.05))
_DAY = 86400

_DROP_PUT = ("INSERT INTO model_drops (name, model_id, dropped_at, dropped_by, created_at, n_chunks, "
             "history_bucket_s, history_indexed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_DROPS = "SELECT * FROM model_drops WHERE name = ?"
_DROP_DONE = "DELETE FROM model_drops WHERE name = ? AND model_id = ?"
# Consumer groups have no per-model index: these tables hold a partition per (model, group[, part]),
# a few per model, so listing their partition keys is a small scan (done only by a drop).
_GROUP_SCANS = ("SELECT DISTINCT model_id, grp FROM learner_state",
                "SELECT DISTINCT model_id, grp FROM feedback_workers",
                "SELECT DISTINCT model_id, grp, part FROM feedback_consumers")
_LAYOUT = "SELECT partitions FROM feedback_config WHERE model_id = ?"
_SEG_BUCKETS = "SELECT bucket, lane FROM feedback_buckets WHERE model_id = ? AND part = ?"
_SNAP_VERSIONS = "SELECT version, n_chunks FROM snapshots WHERE model_id = ?"
_HISTORY_BUCKETS = "SELECT bucket FROM history_buckets WHERE model_id = ? AND day = ?"
_REVIEW_ENTITIES = "SELECT entity_id FROM prediction_review WHERE model_id = ? AND bucket = ? AND band = ?"

# table -> the partition-delete statement (its partition key, in order). Deleted in this order: what a
# partition is found through (history_buckets, snapshots, feedback_buckets, the group tables,
# prediction_review, feedback_config) goes after what it finds, so a purge cut short finds the rest again.
_DELETES = {t: f"DELETE FROM {t} WHERE " + " AND ".join(f"{c} = ?" for c in key) for t, key in {
    "chunks": ("model_id", "chunk"), "chunk_versions": ("model_id",), "model_heads": ("model_id",),
    "history": ("model_id", "bucket"), "history_buckets": ("model_id", "day"),
    "snapshot_chunks": ("model_id", "version", "chunk"), "snapshots": ("model_id",),
    "stats": ("model_id", "day"), "feedback_segments": ("model_id", "part", "lane", "bucket"),
    "feedback_buckets": ("model_id", "part"), "feedback_batches": ("model_id", "grp", "day"),
    "feedback_consumers": ("model_id", "grp", "part"), "feedback_workers": ("model_id", "grp"),
    "learner_state": ("model_id", "grp"), "prediction_log": ("model_id", "entity_id"),
    "prediction_review": ("model_id", "bucket", "band"), "prediction_log_stats": ("model_id", "day"),
    "model_aliases": ("model_id",), "online_metrics": ("model_id",), "commit_turns": ("model_id",),
    "increment_feed": ("model_id", "bucket"),
    "feedback_config": ("model_id",),
}.items()}


@dataclass(frozen=True)
class DropPlan:
    """What a drop must find: the incarnation, its shape and how far back its data may go."""

    name: str
    model_id: uuid.UUID
    created_at: datetime | None
    n_chunks: int
    history_bucket_s: int
    history_indexed: bool


@dataclass
class PurgeReport:
    """Partitions deleted per table."""

    partitions: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.partitions.values())


class PurgeTables:
    """Every statement of a model's drop."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    # -- the drop in progress -----------------------------------------------------------------------------
    def begin(self, plan: DropPlan, dropped_at: datetime, dropped_by: str) -> None:
        self._r.write(_DROP_PUT, (plan.name, plan.model_id, dropped_at, dropped_by, plan.created_at, plan.n_chunks,
                                  plan.history_bucket_s, plan.history_indexed), op="coordination")

    def unfinished(self, name: str) -> list[DropPlan]:
        """Drops of ``name`` that began and did not finish (the process died, a node was down)."""
        return [DropPlan(r["name"], r["model_id"], r["created_at"], r["n_chunks"], r["history_bucket_s"],
                         bool(r["history_indexed"])) for r in self._r.rows(_DROPS, (name,), op="coordination")]

    def finish(self, plan: DropPlan) -> None:
        self._r.write(_DROP_DONE, (plan.name, plan.model_id), op="coordination")

    # -- the purge ----------------------------------------------------------------------------------------
    def purge(self, plan: DropPlan, *, history_ttl_s: int, max_age_s: int) -> PurgeReport:
        """Delete every partition of the model (idempotent: running it again deletes nothing new).

        ``max_age_s``: the longest TTL of any table, how far back data may go when the creation time is
        unknown; ``history_ttl_s`` bounds the scan of a model whose history buckets are not indexed.
        """
        mid = plan.model_id
        now = time.time()
        created = plan.created_at
        if created is not None and created.tzinfo is None:  # the driver returns timestamps as naive UTC
            created = created.replace(tzinfo=UTC)
        since = created.timestamp() if created else now - max_age_s
        days = list(range(int(since) // _DAY - 1, int(now) // _DAY + 2))  # a day of clock skew either side
        keys: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _DELETES}
        for t in ("chunk_versions", "model_heads", "snapshots", "feedback_config", "model_aliases", "online_metrics"):
            keys[t].append((mid,))
        keys["chunks"] = [(mid, k) for k in range(plan.n_chunks)]
        # the increment feed's minute buckets live ten minutes (migration 010): the last quarter hour's
        keys["increment_feed"] = [(mid, b) for b in range(int(now) // 60 - 15, int(now) // 60 + 2)]
        for t in ("stats", "prediction_log_stats", "history_buckets"):
            keys[t] = [(mid, d) for d in days]
        keys["history"] = [(mid, b) for b in self._history_buckets(plan, days, since, now, history_ttl_s)]
        snaps = self._r.rows(_SNAP_VERSIONS, (mid,), op="coordination")
        keys["snapshot_chunks"] = [(mid, s["version"], k) for s in snaps
                                   for k in range(max(plan.n_chunks, s["n_chunks"] or 0))]
        self._feedback_keys(mid, days, keys)
        self._prediction_keys(mid, since, now, keys)
        report = PurgeReport()
        for table, args in keys.items():
            if args:
                self._r.many(_DELETES[table], sorted(set(args), key=repr), op="coordination", concurrency=64)
            report.partitions[table] = len(set(args))
        return report

    def _history_buckets(self, plan: DropPlan, days: list[int], since: float, now: float,
                         ttl_s: int) -> Iterable[int]:
        width = plan.history_bucket_s
        if plan.history_indexed:
            per = self._r.many(_HISTORY_BUCKETS, [(plan.model_id, d) for d in days], op="coordination")
            return {r["bucket"] for rows in per for r in rows}
        # Models from before migration 006: every bucket their history TTL can still hold.
        return range(int(max(since, now - ttl_s)) // width - 1, int(now) // width + 2)

    def _feedback_keys(self, mid: uuid.UUID, days: list[int], keys: dict[str, list[tuple[Any, ...]]]) -> None:
        layout = self._r.one(_LAYOUT, (mid,), op="coordination")
        parts = range((layout["partitions"] or 0) + 1) if layout else range(0)  # bulk partitions + the critical
        keys["feedback_buckets"] = [(mid, p) for p in parts]
        per = self._r.many(_SEG_BUCKETS, [(mid, p) for p in parts], op="coordination")
        keys["feedback_segments"] = [(mid, p, r["lane"], r["bucket"]) for p, rows in zip(parts, per) for r in rows]
        groups: set[str] = set()
        for cql in _GROUP_SCANS:
            for r in self._r.rows(cql, op="coordination", fetch_size=5000):
                if r["model_id"] == mid:
                    groups.add(r["grp"])
                    if "part" in r:
                        keys["feedback_consumers"].append((mid, r["grp"], r["part"]))
        for g in sorted(groups):
            keys["feedback_consumers"] += [(mid, g, p) for p in parts]
            keys["feedback_workers"].append((mid, g))
            keys["learner_state"].append((mid, g))
            keys["feedback_batches"] += [(mid, g, d) for d in days]

    def _prediction_keys(self, mid: uuid.UUID, since: float, now: float,
                         keys: dict[str, list[tuple[Any, ...]]]) -> None:
        review = [(mid, b, band) for b in range(int(since) // REVIEW_BUCKET_S - 1, int(now) // REVIEW_BUCKET_S + 2)
                  for band in range(REVIEW_BANDS)]
        per: list[list[Row]] = self._r.many(_REVIEW_ENTITIES, review, op="coordination", concurrency=64)
        keys["prediction_review"] = [k for k, rows in zip(review, per) if rows]
        keys["prediction_log"] = [(mid, e) for e in {r["entity_id"] for rows in per for r in rows}]
