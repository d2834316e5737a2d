"""The prediction log: what a scorer saw, so that labels arriving later need no features.

Writing (:class:`PredictionLogWriter`, inside :class:`cstore.Client`): ``model.score(..., log=True)``
appends to a bounded in-process buffer and returns at once; a background thread writes the rows
(``cql/003_prediction_log.cql``) with a TTL. A full buffer drops the entry and a failed write loses
it; both are counted (``prediction_log_stats``), logged with back-off, and never fail or slow the
prediction.

Reading (:class:`PredictionLog`): the worker's ``feature_lookup`` (the latest logged features of
each entity; misses are counted, never silently dropped), active-learning review candidates, and
the counters.

>>> from cstore.feedback import PredictionLog                                # doctest: +SKIP
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
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
import numpy as np

from cstore.backend import COUNTERS, REVIEW_BANDS, REVIEW_BUCKET_S, PredictionTables
from cstore.core import features_context, op_time
from cstore.errors import CorruptData, KeyUnavailable, ValidationError
from cstore.store import Store

__all__ = ["COUNTERS", "REVIEW_BANDS", "REVIEW_BUCKET_S", "LogCounters", "PredictionLog", "ReviewCandidate",
           "band_of", "encode_features"]

log = logging.getLogger("cstore.prediction_log")

STATS_BUCKET_S = 300
_DAY = 86400


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
        self._lifetime: dict[uuid.UUID, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))

    def record(self, model_id: uuid.UUID, **deltas: int) -> None:
        key = (model_id, int(time.time()) // STATS_BUCKET_S * STATS_BUCKET_S)
        with self._lock:
            t, life = self._totals[key], self._lifetime[model_id]
            for name, n in deltas.items():
                t[name] += n
                life[name] += n
            self._dirty.add(key)

    def lifetime(self, model_id: uuid.UUID) -> dict[str, int]:
        """What this process counted for a model since it started (never decreases: Prometheus counters)."""
        with self._lock:
            return dict(self._lifetime.get(model_id) or dict.fromkeys(COUNTERS, 0))

    def totals(self, model_id: uuid.UUID) -> dict[str, int]:
        """What this process counted for a model (all buckets still in memory)."""
        with self._lock:
            out = dict.fromkeys(COUNTERS, 0)
            for (mid, _), t in self._totals.items():
                if mid == model_id:
                    for k in COUNTERS:
                        out[k] += t[k]
            return out

    def flush(self, tables: PredictionTables) -> None:
        """Write the dirty buckets; on failure they stay dirty for the next flush."""
        with self._lock:
            items = [(k, dict(self._totals[k])) for k in self._dirty]
            self._dirty.clear()
        try:
            if items:
                tables.write_counters([(mid, b // _DAY, b, self.writer, *(t[c] for c in COUNTERS))
                                       for (mid, b), t in items])
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

    def __init__(self, store: Store, counters: LogCounters | None = None) -> None:
        self.store = store
        self.tables = store.backend.predictions
        self.codec = store.chunks.codec  # the chunks' key ring seals logged features too
        self.counters = counters or LogCounters()
        self._last_miss_log = -math.inf

    def seal(self, model_id: uuid.UUID, entity_id: str, scored_at: uuid.UUID, features: bytes) -> bytes:
        """Logged features as stored: sealed to their row (model, entity, time) when encryption is on."""
        return self.codec.encode_bytes(features, context=features_context(model_id, entity_id, scored_at))

    def open(self, model_id: uuid.UUID, entity_id: str, scored_at: uuid.UUID, stored: bytes) -> dict[str, Any]:
        """The features of one stored log row; ``KeyUnavailable`` / ``CorruptData`` when they cannot be opened."""
        plain = self.codec.decode_bytes(stored, context=features_context(model_id, entity_id, scored_at),
                                        what="prediction-log row")
        try:
            features = msgpack.unpackb(plain, raw=False)
        except Exception as exc:
            raise CorruptData(f"prediction-log features of entity {entity_id!r} are not msgpack "
                              f"({type(exc).__name__}); the row was not written by cstore") from None
        if not isinstance(features, dict):
            raise CorruptData(f"prediction-log features of entity {entity_id!r} are not a mapping")
        return features

    def __call__(self, model: str, entity_ids: list[Any]) -> dict[Any, dict[str, Any]]:
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
        found = self.tables.latest_features(info.model_id, list(keys))
        out: dict[Any, dict[str, Any]] = {}
        for (entity, originals), row in zip(keys.items(), found):
            if row is None:
                continue
            try:
                features = self.open(info.model_id, entity, row[0], row[1])
            except KeyUnavailable:
                raise  # this process's key setup is wrong: the worker stops, learning nothing from the batch
            except CorruptData as exc:  # one damaged row: its label is a miss, never learned from garbage
                log.error("model %r: %s", model, exc)
                continue
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
            since = (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
        since = until - 3600 if since is None else float(since)
        info = self.store.model_info(model)
        buckets = range(int(since) // REVIEW_BUCKET_S, int(until) // REVIEW_BUCKET_S + 1)
        if len(buckets) > 30 * _DAY // REVIEW_BUCKET_S:
            raise ValidationError("review_candidates looks back at most 30 days; pass a later `since`")
        found: list[ReviewCandidate] = []
        for band in range(REVIEW_BANDS):
            results = self.tables.review_band(info.model_id, list(buckets), band, min(max(n, 100), 5000))
            for rows in results:
                taken = 0
                for r in rows:  # clustered by uncertainty: the first n in range are this partition's best
                    t = op_time(r["scored_at"])
                    if since <= t <= until:
                        found.append(ReviewCandidate(r["entity_id"], r["score"], r["uncertainty"],
                                                     datetime.fromtimestamp(t, UTC), r["version"]))
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
        out = dict.fromkeys(COUNTERS, 0)
        for r in self.tables.counters(info.model_id, list(days), first):
            for c in COUNTERS:
                out[c] += r[c] or 0
        return out
