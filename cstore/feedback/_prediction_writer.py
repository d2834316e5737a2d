"""The prediction log's writer: a bounded buffer and one background thread; it never blocks a prediction.

``model.score(..., log=True)`` appends to the buffer (O(1), no I/O) and returns; the thread writes
rows in batches with a TTL. A full buffer drops the entry and a failed write loses it; both are
counted (``prediction_log_stats``), logged with back-off, and never fail or slow the prediction.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from cstore.backend import Backoff
from cstore.core import TICKS_PER_S, uuid_at
from cstore.feedback._prediction_log import REVIEW_BUCKET_S, LogCounters, band_of, encode_features

__all__ = ["PredictionLogWriter"]

log = logging.getLogger("cstore.prediction_log")


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
        self._q: deque[tuple[Any, ...]] = deque()
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
            batch: list[tuple[Any, ...]] = []
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

    def _write(self, batch: list[tuple[Any, ...]]) -> BaseException | None:
        """Write one round; count every entry as logged or failed; return the first error, if any."""
        plog = self.backend_fn().log
        logs, owners, reviews = [], [], []
        for model_id, entity, features, score, version, ts in batch:
            try:
                blob = encode_features(features)
            except (TypeError, ValueError) as exc:
                self.counters.record(model_id, write_errors=1)
                log.warning("prediction of %s not logged: %s", entity, exc)
                continue
            scored_at = uuid_at(int(ts * TICKS_PER_S))
            logs.append((model_id, entity, scored_at, score, version, plog.seal(model_id, entity, scored_at, blob)))
            owners.append(model_id)
            reviews.append((model_id, int(ts) // REVIEW_BUCKET_S, band_of(score), abs(score - 0.5), scored_at, entity,
                            score, version))
        if not logs:
            return None
        written, err = plog.tables.write(logs, reviews, self.ttl_s)
        for mid, ok in zip(owners, written):
            self.counters.record(mid, **({"logged": 1} if ok else {"write_errors": 1}))
        return err

    def _flush_stats(self) -> None:
        self._last_stats = time.monotonic()
        try:
            self.counters.flush(self.backend_fn().log.tables)
        except Exception as exc:
            log.debug("prediction log counters not written yet: %s", exc)
