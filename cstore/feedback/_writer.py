"""``FeedbackWriter``: buffered, batched, back-pressured feedback ingestion.

>>> with FeedbackWriter(store, "fraud", linger_ms=20) as w:            # doctest: +SKIP
...     for tx in transactions:
...         w.send(tx.id, tx.label, kind="explicit", features=tx.features)
...     w.flush()   # everything sent above is durable at the ingest_feedback level

Producers holding batches as columns (arrays, a DataFrame) use :meth:`send_batch` instead: one
vectorised validation per column and segments stored as columns (``_columns``).

Events are validated in :meth:`send` (a bad event raises and nothing of it is buffered), then
buffered per (partition, lane). A buffer becomes a segment (one CQL row) when it holds
``max_batch`` events or ``max_segment_bytes``, or when its oldest event is ``linger_ms`` old. A
background thread writes segments with ``execute_concurrent``. Buffered plus in-flight bytes are
bounded by ``max_buffer_bytes``: :meth:`send` blocks while the bound is reached (back-pressure)
and raises :class:`~cstore.errors.FeedbackBackPressure` after ``send_timeout_s``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cstore.backend import wait_while
from cstore.errors import Closed, FeedbackBackPressure, FeedbackWriteFailed, ValidationError
from cstore.feedback._columns import Batch, encode_block, make_batch, reorder
from cstore.feedback._events import encode_event, make_event
from cstore.feedback._layout import FeedbackLayout, context
from cstore.feedback._segments import COLUMNAR_VERSION, PAYLOAD_VERSION, Segment
from cstore.feedback._write import WriteReport, check_critical, raise_failures, write_now, write_segments
from cstore.store import Store

log = logging.getLogger("cstore.feedback")

MAX_SEGMENT_BYTES = 512 * 1024  # well under Cassandra's mutation and batch limits


class FeedbackWriter:
    """Buffered writer of one model's feedback; use as a context manager (flushes and closes on exit)."""

    def __init__(self, store: Store, model: str, *, linger_ms: float = 20.0, max_batch: int = 500,
                 max_segment_bytes: int = MAX_SEGMENT_BYTES, max_buffer_bytes: int = 32 * 1024 * 1024,
                 send_timeout_s: float = 60.0, concurrency: int = 32, max_attempts: int = 6) -> None:
        for name, v, lo in (("linger_ms", linger_ms, 0), ("max_batch", max_batch, 1),
                            ("max_segment_bytes", max_segment_bytes, 1024), ("concurrency", concurrency, 1),
                            ("max_attempts", max_attempts, 1), ("send_timeout_s", send_timeout_s, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
                raise ValidationError(f"{name} must be a number >= {lo}, got {v!r}")
        if max_segment_bytes > MAX_SEGMENT_BYTES:
            raise ValidationError(f"max_segment_bytes must be at most {MAX_SEGMENT_BYTES}")
        if max_buffer_bytes < max_segment_bytes:
            raise ValidationError(f"max_buffer_bytes ({max_buffer_bytes}) must hold at least one segment "
                                  f"({max_segment_bytes} bytes)")
        self.ctx = context(store)
        self.info, self.cfg = self.ctx.layout(model)
        self.model = model
        self.linger_s = linger_ms / 1000.0
        self.max_batch = int(max_batch)
        self.max_segment_bytes = int(max_segment_bytes)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.send_timeout_s = float(send_timeout_s)
        self.concurrency = int(concurrency)
        self.max_attempts = int(max_attempts)
        self._cond = threading.Condition()
        self._open: dict[tuple[int, int], tuple[float, Segment]] = {}  # (part, lane) -> (opened at, segment)
        self._sealed: list[Segment] = []
        self._buffered = 0           # bytes accepted and not yet durable (or failed)
        self._outstanding = 0        # segments sealed and not yet finished
        self._sealed_count = 0
        self._finished_count = 0     # sealed segments finished, in sealing order: writes are FIFO
        self._failures: list[tuple[Segment, BaseException]] = []
        self._closed = False
        self.events_sent = 0
        self.events_written = 0
        self.segments_written = 0
        self.bytes_written = 0
        self.retries = 0
        self.restamped = 0
        self.critical_written = 0
        self.blocked_s = 0.0
        self._thread = threading.Thread(target=self._run, name=f"cstore-feedback-{model}", daemon=True)
        self._thread.start()

    @property
    def layout(self) -> FeedbackLayout:
        return self.cfg

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    # -- producing ---------------------------------------------------------------------------------
    def send(self, entity_id: Any, label: Any, *, kind: str = "explicit", confidence: Any = None,
             event_time: Any = None, features: Any = None, metadata: Any = None, critical: bool = False) -> None:
        """Validate and buffer one event; blocks while the buffer is full (back-pressure).

        ``critical=True`` skips the buffer: the event is written at once, on this thread, to the model's
        critical partition (polled every few milliseconds by one worker and learned at once), and is
        durable when ``send`` returns (it raises if it could not be written).
        """
        ev = make_event(entity_id, label, kind, confidence, event_time, features, metadata)
        if check_critical(critical):
            self._check_usable()
            write_now(self.ctx, self.cfg, ev.entity_id, ev.kind, encode_event(ev), critical=True,
                      max_attempts=self.max_attempts)
            self.events_sent += 1
            self.events_written += 1
            self.critical_written += 1
            return
        self.send_event(ev.entity_id, ev.kind, encode_event(ev))

    def send_event(self, entity_id: Any, kind: str, data: bytes) -> None:
        """Buffer an event already validated and encoded (:func:`~cstore.feedback.make_event`, ``encode_event``)."""
        key = (self.cfg.part_of(entity_id), self.cfg.lane_of(kind))
        with self._cond:
            self._append(key, data, 1, PAYLOAD_VERSION)

    def send_batch(self, entity_ids: Sequence[Any], labels: Any, *, kind: str = "explicit", confidence: Any = None,
                   event_time: Any = None, features: Mapping[str, Any] | None = None) -> int:
        """Validate and buffer a batch of events given as columns; returns how many were buffered.

        All-or-nothing: a bad value anywhere raises before any event of the batch is buffered. See
        :func:`~cstore.feedback.make_batch` for the columns (NaN or None = a feature missing for one event).

        >>> w.send_batch(["tx-1", "tx-2"], [0, 1], features={"amount": [12.5, 3.0]})   # doctest: +SKIP
        2
        """
        batch = make_batch(entity_ids, labels, kind=kind, confidence=confidence, event_time=event_time,
                           features=features)
        lane = self.cfg.lane_of(kind)
        parts = self.cfg.parts_of(batch.entity_ids)
        order = np.argsort(parts, kind="stable")  # groups partitions, keeping each one's events in order
        batch, parts = reorder(batch, order), parts[order]
        edges = [0, *(np.flatnonzero(np.diff(parts)) + 1).tolist(), batch.n]
        before = self.events_sent
        try:
            for start, end in zip(edges, edges[1:]):
                key = (int(parts[start]), lane)
                for lo in range(start, end, self.max_batch):
                    self._append_block(key, batch, lo, min(end, lo + self.max_batch))
        except FeedbackBackPressure as exc:
            raise FeedbackBackPressure(f"{exc} ({self.events_sent - before} of this batch's {batch.n} events "
                                       f"were buffered before the timeout and will be written)") from None
        return batch.n

    def _append_block(self, key: tuple[int, int], batch: Batch, lo: int, hi: int) -> None:
        data = encode_block(batch, lo, hi)
        if len(data) > self.max_segment_bytes and hi - lo > 1:  # too wide for one segment: halve it
            mid = (lo + hi) // 2
            self._append_block(key, batch, lo, mid)
            self._append_block(key, batch, mid, hi)
            return
        with self._cond:
            self._append(key, data, hi - lo, COLUMNAR_VERSION)

    def _append(self, key: tuple[int, int], data: bytes, n_events: int, version: int) -> None:
        """Add one encoded item (an event, or a block of ``n_events``) to its open segment. Holds the lock."""
        size = len(data)
        self._check_usable()
        if self._buffered + size > self.max_buffer_bytes:
            self._wait_for_room(size)
        opened = self._open.get(key)
        if opened is not None and opened[1].items and (
                opened[1].version != version or opened[1].nbytes + size > self.max_segment_bytes
                or opened[1].n_events + n_events > self.max_batch):
            self._seal(key)
            opened = None
        if opened is None:
            opened = self._open[key] = (time.monotonic(), Segment(*key, version=version))
        seg = opened[1]
        seg.items.append(data)
        seg.nbytes += size
        seg.block_events += n_events if version == COLUMNAR_VERSION else 0
        self._buffered += size
        self.events_sent += n_events
        if seg.n_events >= self.max_batch or seg.nbytes >= self.max_segment_bytes:
            self._seal(key)
        if len(self._open) == 1 and len(seg.items) == 1:
            self._cond.notify_all()  # the flusher may be sleeping without a deadline

    def _wait_for_room(self, size: int) -> None:
        started = time.monotonic()
        # Seal everything so that the flusher can free memory now rather than after a linger.
        for key in list(self._open):
            self._seal(key)
        self._cond.notify_all()
        if not wait_while(self._cond, lambda: self._buffered + size > self.max_buffer_bytes, self.send_timeout_s,
                          poll_s=0.5, check=self._check_usable):
            raise FeedbackBackPressure(
                f"feedback buffer for {self.model!r} full ({self._buffered} of {self.max_buffer_bytes} bytes) "
                f"for {self.send_timeout_s:.0f} s: Cassandra is not keeping up; slow down, raise "
                f"max_buffer_bytes or send_timeout_s, or add nodes")
        self.blocked_s += time.monotonic() - started

    def _seal(self, key: tuple[int, int]) -> None:
        _, seg = self._open.pop(key)
        self._sealed.append(seg)
        self._sealed_count += 1
        self._outstanding += 1
        self._cond.notify_all()

    def _check_usable(self) -> None:
        if self._closed:
            raise Closed("this feedback writer is closed; open a new one with FeedbackWriter(store, model)")

    # -- durability --------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Return once every event sent before this call is durable; raise if some could not be written."""
        with self._cond:
            for key in list(self._open):
                self._seal(key)
            target = self._sealed_count
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._finished_count < target:
                if not self._thread.is_alive():
                    raise FeedbackWriteFailed(f"the writer thread of {self.model!r} died; "
                                              f"{target - self._finished_count} segment(s) were not written")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise FeedbackWriteFailed(f"flush timed out after {timeout} s with "
                                              f"{target - self._finished_count} segment(s) still in flight; "
                                              f"they may or may not be durable")
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            failures, self._failures = self._failures, []
        if failures:
            raise_failures(WriteReport(failed=failures))

    def close(self) -> None:
        """Flush, then stop the background thread. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(timeout=30)

    def __enter__(self) -> FeedbackWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return {"events_sent": self.events_sent, "events_written": self.events_written,
                "segments_written": self.segments_written, "bytes_written": self.bytes_written,
                "retries": self.retries, "restamped": self.restamped, "critical_written": self.critical_written,
                "buffered_bytes": self._buffered,
                "blocked_s": round(self.blocked_s, 3)}

    # -- the background thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    for key, (opened, _) in list(self._open.items()):
                        if now - opened >= self.linger_s:
                            self._seal(key)
                    if self._sealed or self._closed:
                        break
                    next_due = min((o for o, _ in self._open.values()), default=None)
                    self._cond.wait(None if next_due is None else max(0.0, next_due + self.linger_s - now))
                if self._closed and not self._sealed:
                    return
                batch = self._sealed[:self.concurrency * 4]
                del self._sealed[:len(batch)]
            try:
                report = write_segments(self.ctx, self.cfg, batch, max_attempts=self.max_attempts,
                                        concurrency=self.concurrency)
            except Exception as exc:  # never let the thread die with events in its hands
                log.exception("feedback writer thread failed")
                report = WriteReport(failed=[(s, exc) for s in batch])
            self._finish(batch, report)

    def _finish(self, batch: list[Segment], report: WriteReport) -> None:
        failed = {id(s) for s, _ in report.failed}
        with self._cond:
            for seg in batch:
                self._buffered -= seg.nbytes
                self._outstanding -= 1
                self._finished_count += 1
                if id(seg) not in failed:
                    self.events_written += seg.n_events
                    self.segments_written += 1
                    self.bytes_written += seg.nbytes
            self.retries += report.retries
            self.restamped += report.restamped
            self._failures.extend(report.failed)
            self._cond.notify_all()
        for seg, err in report.failed:
            log.error("feedback segment of %d event(s) for %s could not be written: %s", seg.n_events,
                      self.model, err)
