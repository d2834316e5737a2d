"""The prediction log: what a scorer saw, so that labels arriving later need no features.

Writing (:class:`PredictionLogWriter`, inside :class:`cstore.Client`): ``model.score(..., log=True)``
appends to a bounded in-process buffer and returns at once; a background thread writes the rows
(``cql/003_prediction_log.cql``) with a TTL. A full buffer drops the entry and a failed write loses
it; both are counted (``prediction_log_stats``), logged with back-off, and never fail or slow the
prediction.

Reading (:class:`PredictionLog`): the worker's ``feature_lookup`` (the latest logged features of
each entity; misses are counted, never silently dropped), active-learning review candidates, and
the counters.

>>> from cstore.prediction_log import PredictionLog                          # doctest: +SKIP
>>> plog = PredictionLog(store)                                              # doctest: +SKIP
>>> plog("fraud", ["tx-1", "tx-2"])        # {"tx-1": {"amount": 12.5, ...}} (tx-2 never logged)  # doctest: +SKIP
>>> Worker(store, "fraud", feature_lookup=plog)                              # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import msgpack
import numpy as np
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType
from cassandra.util import uuid_from_time

from cstore.cache import Backoff
from cstore.errors import ValidationError

log = logging.getLogger("cstore.prediction_log")

REVIEW_BUCKET_S = 600   # fixed for the table's life: writers and readers must agree
REVIEW_BANDS = 10       # |score - 0.5| in steps of 0.05
STATS_BUCKET_S = 300
_DAY = 86400
_MAX_REVIEW_BATCH = 40  # rows per single-partition batch, well below Cassandra's batch size warning
_MAX_LOG_BATCH = 10     # partitions per log batch: Cassandra warns about unlogged batches over 10
COUNTERS = ("logged", "dropped", "write_errors", "lookups", "lookup_hits", "lookup_misses")


def band_of(score: float) -> int:
    """Uncertainty band of a probability: 0 for 0.45-0.55 (least sure) … 9 for below 0.05 / above 0.95."""
    return min(REVIEW_BANDS - 1, int(abs(score - 0.5) / 0.05))


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot log a feature value of type {type(obj).__name__}")


def encode_features(features: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(features), use_bin_type=True, default=_pack_default)


@dataclass(frozen=True)
class ReviewCandidate:
    """A logged prediction the model was unsure about, for an analyst to label."""

    entity_id: str
    score: float
    uncertainty: float     # |score - 0.5|: 0 = a coin toss
    scored_at: datetime
    version: int


class LogTables:
    """Prepared statements of the prediction log, one set per session."""

    def __init__(self, session) -> None:
        p = session.prepare
        self.session = session
        self.q_log = p("INSERT INTO prediction_log (model_id, entity_id, scored_at, score, version, features) "
                       "VALUES (?, ?, ?, ?, ?, ?) USING TTL ?")
        self.q_review = p("INSERT INTO prediction_review (model_id, bucket, band, uncertainty, scored_at, entity_id, "
                          "score, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")
        self.q_lookup = p("SELECT features FROM prediction_log WHERE model_id = ? AND entity_id = ? LIMIT 1")
        self.q_review_read = p("SELECT uncertainty, scored_at, entity_id, score, version FROM prediction_review "
                               "WHERE model_id = ? AND bucket = ? AND band = ?")
        self.q_stats = p("INSERT INTO prediction_log_stats (model_id, day, bucket, writer, logged, dropped, "
                         "write_errors, lookups, lookup_hits, lookup_misses) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self.q_stats_read = p("SELECT * FROM prediction_log_stats WHERE model_id = ? AND day = ? AND bucket >= ?")


class LogCounters:
    """This process's running totals per (model, 5-minute bucket); persisted by overwriting its own rows."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start counting afresh under a new writer id (a forked child must not overwrite its parent's rows)."""
        self.writer = uuid.uuid4().hex[:16]
        self._lock = threading.Lock()
        self._totals: dict[tuple[uuid.UUID, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        self._dirty: set[tuple[uuid.UUID, int]] = set()

    def record(self, model_id: uuid.UUID, **deltas: int) -> None:
        key = (model_id, int(time.time()) // STATS_BUCKET_S * STATS_BUCKET_S)
        with self._lock:
            t = self._totals[key]
            for name, n in deltas.items():
                t[name] += n
            self._dirty.add(key)

    def totals(self, model_id: uuid.UUID) -> dict[str, int]:
        """What this process counted for a model (all buckets still in memory)."""
        with self._lock:
            out = dict.fromkeys(COUNTERS, 0)
            for (mid, _), t in self._totals.items():
                if mid == model_id:
                    for k in COUNTERS:
                        out[k] += t[k]
            return out

    def flush(self, tables: LogTables) -> None:
        """Write the dirty buckets; on failure they stay dirty for the next flush."""
        with self._lock:
            items = [(k, dict(self._totals[k])) for k in self._dirty]
            self._dirty.clear()
        try:
            futures = [tables.session.execute_async(tables.q_stats, (mid, b // _DAY, b, self.writer,
                                                                     *(t[c] for c in COUNTERS)))
                       for (mid, b), t in items]
            for f in futures:
                f.result()
        except Exception:
            with self._lock:
                self._dirty.update(k for k, _ in items)
            raise
        horizon = time.time() - 4 * STATS_BUCKET_S  # older buckets will not change again
        with self._lock:
            for k in [k for k in self._totals if k[1] < horizon and k not in self._dirty]:
                del self._totals[k]


class PredictionLog:
    """Reads the log of one session: lookups for the worker, review candidates, counters.

    Callable as the worker's ``feature_lookup(model, entity_ids) -> {entity_id: features}``.
    """

    def __init__(self, store, counters: LogCounters | None = None) -> None:
        self.store = store
        self.tables = LogTables(store.session)
        self.counters = counters or LogCounters()
        self._last_miss_log = -math.inf

    def __call__(self, model: str, entity_ids: list) -> dict[Any, dict[str, Any]]:
        return self.lookup(model, entity_ids)

    def lookup(self, model: str, entity_ids: Iterable[Any]) -> dict[Any, dict[str, Any]]:
        """The latest logged features of each entity; an entity never logged (or expired) is absent.

        Misses are counted in ``prediction_log_stats`` (see :meth:`stats`) and logged; a read error
        raises, so that the worker retries the batch rather than learning it without features.
        """
        entity_ids = list(entity_ids)
        info = self.store.model_info(model)
        keys: dict[str, list[Any]] = {}
        for e in entity_ids:
            keys.setdefault(str(e), []).append(e)
        results = execute_concurrent_with_args(self.tables.session, self.tables.q_lookup,
                                               [(info.model_id, k) for k in keys], concurrency=64,
                                               raise_on_first_error=True, results_generator=False,
                                               execution_profile="read_feedback")
        out: dict[Any, dict[str, Any]] = {}
        for originals, (_, rows) in zip(keys.values(), results):
            row = rows.one()
            if row is not None:
                features = msgpack.unpackb(row["features"], raw=False)
                for e in originals:
                    out[e] = features
        hits = sum(1 for e in entity_ids if e in out)
        misses = len(entity_ids) - hits
        self.counters.record(info.model_id, lookups=len(entity_ids), lookup_hits=hits, lookup_misses=misses)
        try:
            self.counters.flush(self.tables)  # once per worker batch: cheap, and survives a crash
        except Exception as exc:
            log.warning("could not write prediction log counters: %s", exc)
        if misses and time.monotonic() - self._last_miss_log >= 60:  # reported, at most a line a minute
            self._last_miss_log = time.monotonic()
            log.warning("model %r: %d of %d feedback event(s) without features have no prediction log row "
                        "(never scored with log=True, or expired by TTL); counted as lookup_misses",
                        model, misses, len(entity_ids))
        return out

    def review_candidates(self, model: str, n: int = 20, *, since: float | datetime | None = None,
                          until: float | None = None) -> list[ReviewCandidate]:
        """The ``n`` logged predictions since ``since`` (default: the last hour) closest to 0.5.

        Reads band 0 (least sure) of every bucket in range first and stops after the first band
        that completes ``n``: later bands cannot hold anything less sure.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 10_000:
            raise ValidationError(f"n must be an integer in [1, 10000], got {n!r}")
        until = time.time() if until is None else float(until)
        if isinstance(since, datetime):
            since = (since if since.tzinfo else since.replace(tzinfo=timezone.utc)).timestamp()
        since = until - 3600 if since is None else float(since)
        info = self.store.model_info(model)
        buckets = range(int(since) // REVIEW_BUCKET_S, int(until) // REVIEW_BUCKET_S + 1)
        if len(buckets) > 30 * _DAY // REVIEW_BUCKET_S:
            raise ValidationError("review_candidates looks back at most 30 days; pass a later `since`")
        found: list[ReviewCandidate] = []
        for band in range(REVIEW_BANDS):
            stmts = []
            for b in buckets:
                stmt = self.tables.q_review_read.bind((info.model_id, b, band))
                stmt.fetch_size = min(max(n, 100), 5000)
                stmts.append((stmt, None))
            results = execute_concurrent(self.tables.session, stmts, concurrency=32, raise_on_first_error=True,
                                         results_generator=False, execution_profile="read_feedback")
            for _, rows in results:
                taken = 0
                for r in rows:  # clustered by uncertainty: the first n in range are this partition's best
                    t = (r["scored_at"].time - 0x01B21DD213814000) / 1e7
                    if since <= t <= until:
                        found.append(ReviewCandidate(r["entity_id"], r["score"], r["uncertainty"],
                                                     datetime.fromtimestamp(t, timezone.utc), r["version"]))
                        taken += 1
                        if taken >= n:
                            break
            if len(found) >= n:
                break
        found.sort(key=lambda c: (c.uncertainty, -c.scored_at.timestamp()))
        return found[:n]

    def stats(self, model: str, *, since: float | None = None) -> dict[str, int]:
        """Counters summed over every process and bucket since ``since`` (default: the last 24 hours)."""
        info = self.store.model_info(model)
        since = time.time() - _DAY if since is None else since
        first = int(since) // STATS_BUCKET_S * STATS_BUCKET_S
        days = range(first // _DAY, int(time.time()) // _DAY + 1)
        results = execute_concurrent_with_args(self.tables.session, self.tables.q_stats_read,
                                               [(info.model_id, d, first) for d in days], concurrency=8,
                                               raise_on_first_error=True, results_generator=False)
        out = dict.fromkeys(COUNTERS, 0)
        for _, rows in results:
            for r in rows:
                for c in COUNTERS:
                    out[c] += r[c] or 0
        return out


class PredictionLogWriter:
    """A bounded buffer and one background thread that writes it; never blocks a prediction.

    ``backend_fn()`` returns an object with ``.log`` (a :class:`PredictionLog`); it is called for
    every write round, so a client that reconnects (after ``fork()``) is picked up.
    """

    def __init__(self, backend_fn: Callable[[], Any], counters: LogCounters, *, ttl_s: int, max_queue: int,
                 linger_s: float = 0.02, max_batch: int = 500, stats_every_s: float = 5.0) -> None:
        self.backend_fn = backend_fn
        self.counters = counters
        self.ttl_s, self.max_queue, self.linger_s, self.max_batch = ttl_s, max_queue, linger_s, max_batch
        self.stats_every_s = stats_every_s
        self.backoff = Backoff(log, "prediction log write")
        self._init_sync()

    def _init_sync(self) -> None:
        self._q: deque = deque()
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_stats = time.monotonic()

    def submit(self, model_id: uuid.UUID, entity_id: str, features: Mapping[str, Any], score: float,
               version: int) -> bool:
        """Queue one entry (O(1), no I/O); False if the buffer was full (the entry is counted as dropped)."""
        if len(self._q) >= self.max_queue:
            self.counters.record(model_id, dropped=1)
            return False
        self._q.append((model_id, entity_id, features, score, version, time.time()))
        return True

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="cstore-prediction-log", daemon=True)
            self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's queue (the parent writes it) and count afresh."""
        self._init_sync()
        self.counters.reset()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or failed); True if it was."""
        deadline = time.monotonic() + timeout
        while (self._q or self._busy) and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.005)
        self._flush_stats()
        return not (self._q or self._busy)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._q)

    def _run(self) -> None:
        while True:
            if time.monotonic() - self._last_stats >= self.stats_every_s:  # also under constant load
                self._flush_stats()
            if not self._q:
                if self._stop.is_set():
                    return
                self._stop.wait(self.linger_s)
                continue
            self._busy = True
            batch = []
            while self._q and len(batch) < self.max_batch:
                batch.append(self._q.popleft())
            try:
                err = self._write(batch)
            except Exception as exc:  # nothing was sent (no connection yet, e.g. right after fork())
                for item in batch:
                    self.counters.record(item[0], write_errors=1)
                err = exc
            finally:
                self._busy = False
            if err is None:
                self.backoff.success()
            elif not self._stop.is_set():  # Cassandra unreachable: wait; the buffer absorbs (or drops) meanwhile
                self._stop.wait(self.backoff.failure(err))

    def _write(self, batch: list[tuple]) -> BaseException | None:
        """Write one round; count every entry as logged or failed; return the first error, if any.

        Requests, not bytes, cost the client CPU (and the GIL the scorers need), so rows travel in
        unlogged batches: log rows grouped by their primary replica (at most 10 partitions, the
        server's warning threshold), review rows by partition.
        """
        b = self.backend_fn()
        t = b.log.tables
        meta, keyspace = b.store.conn.cluster.metadata, t.session.keyspace
        by_replica: dict[Any, list] = defaultdict(list)
        reviews: dict[tuple, list] = defaultdict(list)
        for model_id, entity, features, score, version, ts in batch:
            try:
                blob = encode_features(features)
            except (TypeError, ValueError) as exc:
                self.counters.record(model_id, write_errors=1)
                log.warning("prediction of %s not logged: %s", entity, exc)
                continue
            scored_at = uuid_from_time(ts)
            row = t.q_log.bind((model_id, entity, scored_at, score, version, blob, self.ttl_s))
            replicas = meta.get_replicas(keyspace, row.routing_key)
            by_replica[replicas[0] if replicas else None].append((model_id, row))
            key = (model_id, int(ts) // REVIEW_BUCKET_S, band_of(score))
            reviews[key].append((*key, abs(score - 0.5), scored_at, entity, score, version, self.ttl_s))
        stmts: list[tuple[Any, Any]] = []
        owners: list[list[uuid.UUID]] = []
        for rows in by_replica.values():
            for i in range(0, len(rows), _MAX_LOG_BATCH):
                stmts.append((_unlogged(r for _, r in rows[i:i + _MAX_LOG_BATCH]), None))
                owners.append([mid for mid, _ in rows[i:i + _MAX_LOG_BATCH]])
        for rows in reviews.values():  # one partition per batch: a single mutation
            for i in range(0, len(rows), _MAX_REVIEW_BATCH):
                stmts.append((_unlogged(t.q_review.bind(r) for r in rows[i:i + _MAX_REVIEW_BATCH]), None))
        results = execute_concurrent(t.session, stmts, concurrency=32, raise_on_first_error=False,
                                     results_generator=False, execution_profile="ingest_feedback")
        for mids, (ok, _) in zip(owners, results):  # the log batches come first
            for mid in mids:
                self.counters.record(mid, **({"logged": 1} if ok else {"write_errors": 1}))
        return next((res for ok, res in results if not ok), None)

    def _flush_stats(self) -> None:
        self._last_stats = time.monotonic()
        try:
            self.counters.flush(self.backend_fn().log.tables)
        except Exception as exc:
            log.debug("prediction log counters not written yet: %s", exc)


def _unlogged(statements: Iterable[Any]) -> BatchStatement:
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    for st in statements:
        batch.add(st)
    return batch
