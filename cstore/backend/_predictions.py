"""The prediction log's tables (``cql/003_prediction_log.cql``): what scorers saw, review candidates, counters."""
from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from cstore.backend._statements import Row, Runner

_LOG = ("INSERT INTO prediction_log (model_id, entity_id, scored_at, score, version, features) "
        "VALUES (?, ?, ?, ?, ?, ?) USING TTL ?")
_REVIEW = ("INSERT INTO prediction_review (model_id, bucket, band, uncertainty, scored_at, entity_id, score, version) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")
_LOOKUP = "SELECT scored_at, features FROM prediction_log WHERE model_id = ? AND entity_id = ? LIMIT 1"
_REVIEW_READ = ("SELECT uncertainty, scored_at, entity_id, score, version FROM prediction_review "
                "WHERE model_id = ? AND bucket = ? AND band = ?")
_ENTITY_ROWS = "SELECT scored_at, score FROM prediction_log WHERE model_id = ? AND entity_id = ?"
_ENTITY_DROP = "DELETE FROM prediction_log WHERE model_id = ? AND entity_id = ?"
_REVIEW_DROP = ("DELETE FROM prediction_review WHERE model_id = ? AND bucket = ? AND band = ? AND uncertainty = ? "
                "AND scored_at = ? AND entity_id = ?")
COUNTERS = ("logged", "dropped", "write_errors", "lookups", "lookup_hits", "lookup_misses")
_STATS_WRITE = (f"INSERT INTO prediction_log_stats (model_id, day, bucket, writer, {', '.join(COUNTERS)}) "
                f"VALUES (?, ?, ?, ?, {', '.join('?' * len(COUNTERS))})")
_STATS = "SELECT * FROM prediction_log_stats WHERE model_id = ? AND day = ? AND bucket >= ?"
_MAX_LOG_BATCH = 10     # partitions per log batch: Cassandra warns about unlogged batches over 10
_MAX_REVIEW_BATCH = 40  # rows per single-partition batch, well below Cassandra's batch size warning


class PredictionTables:
    """Every statement of the prediction log."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    def write(self, logs: Sequence[tuple[Any, ...]], reviews: Sequence[tuple[Any, ...]],
              ttl_s: int) -> tuple[list[bool], BaseException | None]:
        """Log rows ``(model_id, entity_id, scored_at, score, version, features)`` and review rows
        ``(model_id, bucket, band, uncertainty, scored_at, entity_id, score, version)``.

        Requests, not bytes, cost the client CPU (and the GIL the scorers need), so rows travel in
        unlogged batches: log rows grouped by their primary replica (at most 10 partitions, the
        server's warning threshold), review rows by partition. Returns, per log row, whether it was
        written, and the first error of the round.
        """
        cluster = self._r.session.cluster
        keyspace = self._r.keyspace
        by_replica: dict[Any, list[tuple[int, Any]]] = defaultdict(list)
        for i, row in enumerate(logs):
            stmt = self._r.bind(_LOG, (*row, ttl_s))
            replicas = cluster.metadata.get_replicas(keyspace, stmt.routing_key)
            by_replica[replicas[0] if replicas else None].append((i, stmt))
        by_partition: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
        for r in reviews:
            by_partition[r[:3]].append(r)
        stmts: list[tuple[Any, None]] = []
        owners: list[list[int]] = []
        for group in by_replica.values():
            for i in range(0, len(group), _MAX_LOG_BATCH):
                stmts.append((self._r.batch(s for _, s in group[i:i + _MAX_LOG_BATCH]), None))
                owners.append([j for j, _ in group[i:i + _MAX_LOG_BATCH]])
        for rows in by_partition.values():  # one partition per batch: a single mutation
            for i in range(0, len(rows), _MAX_REVIEW_BATCH):
                batch = self._r.batch(self._r.bind(_REVIEW, (*r, ttl_s)) for r in rows[i:i + _MAX_REVIEW_BATCH])
                stmts.append((batch, None))
        errors = self._r.run_outcomes(stmts, op="ingest_feedback")
        written = [False] * len(logs)
        for rows_of, err in zip(owners, errors):  # the log batches come first
            for j in rows_of:
                written[j] = err is None
        return written, next((e for e in errors if e is not None), None)

    def latest_features(self, model_id: uuid.UUID,
                        entity_ids: Sequence[str]) -> list[tuple[uuid.UUID, bytes] | None]:
        """``(scored_at, stored features)`` of each entity's latest log row, or None, in order."""
        per = self._r.many(_LOOKUP, [(model_id, e) for e in entity_ids], op="read_feedback", concurrency=64)
        return [(rows[0]["scored_at"], rows[0]["features"]) if rows else None for rows in per]

    def review_band(self, model_id: uuid.UUID, buckets: Sequence[int], band: int,
                    fetch_size: int) -> list[Iterator[Row]]:
        """The rows of one uncertainty band in each bucket, least sure first (their clustering order)."""
        stmts = [(self._r.bind(_REVIEW_READ, (model_id, b, band), fetch_size=fetch_size), None) for b in buckets]
        return self._r.read_concurrent(stmts, op="read_feedback")

    def write_counters(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """``(model_id, day, bucket, writer, *COUNTERS)`` each; every process overwrites its own rows."""
        self._r.many(_STATS_WRITE, rows, op="ingest_feedback")

    def counters(self, model_id: uuid.UUID, days: Sequence[int], first_bucket: int) -> list[Row]:
        per = self._r.many(_STATS, [(model_id, d, first_bucket) for d in days], op="read_feedback", concurrency=8)
        return [r for rows in per for r in rows]

    def entity_rows(self, model_id: uuid.UUID, entity_id: str) -> list[Row]:
        """``scored_at, score`` of every log row of one entity (what its review rows are keyed by)."""
        return self._r.rows(_ENTITY_ROWS, (model_id, entity_id), op="read_feedback")

    def erase_entity(self, model_id: uuid.UUID, entity_id: str,
                     review_keys: Sequence[tuple[int, int, float, uuid.UUID]]) -> None:
        """Delete the entity's review rows ``(bucket, band, uncertainty, scored_at)``, then its log partition."""
        self._r.many(_REVIEW_DROP, [(model_id, *k, entity_id) for k in review_keys], op="coordination")
        self._r.write(_ENTITY_DROP, (model_id, entity_id), op="coordination")
