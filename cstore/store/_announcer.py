"""Announcing commits to scorers: the chunk-version index rows, then the model's head counter.

Both follow a commit (it is acknowledged before them) and both are per-model single-partition writes,
so one thread coalesces them: whatever commits arrive while it writes are announced together next
time, in one index request and one increment per model. Commits per second do not become announcement
requests per second; an announcement trails its commit by about one round trip.

The order is what scorers rely on: a model's head counter is incremented only after the index rows it
announces are acknowledged (a scorer that sees the counter move and reads the index finds the moved
chunks). A failed announcement is logged; the commit stands, and scorers catch up at their next full
check (or at the next announcement of that model).
"""
from __future__ import annotations

import logging
import threading
import uuid

from cstore.backend import ParamTables
from cstore.core import ModelInfo

log = logging.getLogger("cstore.commit")

__all__ = ["Announcer"]

Entry = tuple[str, int, int, uuid.UUID]  # (param, chunk, version, op_id)


class Announcer:
    """Writes index rows and head increments for one process, coalesced per model."""

    def __init__(self, tables: ParamTables) -> None:
        self._tables = tables
        self._queue: dict[uuid.UUID, tuple[ModelInfo, dict[tuple[str, int], Entry]]] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def announce(self, info: ModelInfo, entries: list[Entry]) -> None:
        """Queue the index rows of committed chunks (the newest version of a chunk wins)."""
        with self._cond:
            _, pending = self._queue.setdefault(info.model_id, (info, {}))
            for e in entries:
                old = pending.get((e[0], e[1]))
                if old is None or old[2] < e[2]:
                    pending[(e[0], e[1])] = e
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cstore-announcer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is announced (or failed); True if it was in time."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                work, self._queue = self._queue, {}
                self._busy = True
            try:
                for info, pending in work.values():
                    self._announce(info, list(pending.values()))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _announce(self, info: ModelInfo, entries: list[Entry]) -> None:
        try:
            self._tables.write_index(info.model_id, entries)
            self._tables.bump_head(info.model_id)
        except Exception as exc:  # the commits stand; scorers catch up at their next full check
            chunks = sorted({k for _, k, _, _ in entries})
            log.warning("model %s: chunks %s committed but not announced (%s); scorers catch up at their next "
                        "full check", info.name, chunks, exc)

