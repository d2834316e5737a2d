"""Waiting out a failing or slow cluster: exponential back-off with jitter, and error logging that
does not flood; and back-pressure waits (:func:`wait_while`).

Background loops that talk to Cassandra (a scorer's refresher, the prediction-log writer) use one
:class:`Backoff` each, so that an outage costs a log line every ``log_every_s``, not one per attempt.
Producers that buffer what Cassandra has not taken yet (the feedback writer's buffer, the
committer's queue) wait with :func:`wait_while` until there is room, for a bounded time.
"""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable

__all__ = ["Backoff", "wait_while"]


def wait_while(cond: threading.Condition, busy: Callable[[], bool], timeout_s: float, *, poll_s: float,
               check: Callable[[], None] | None = None) -> bool:
    """Wait on ``cond`` (held by the caller) while ``busy()``, at most ``timeout_s``; False if still
    busy then. ``check`` runs after each wake-up and may raise (e.g. the producer was closed)."""
    deadline = time.monotonic() + timeout_s
    while busy():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        cond.wait(min(left, poll_s))
        if check is not None:
            check()
    return True


class Backoff:
    """Exponential back-off with jitter, and error logging that does not flood.

    The first failure of a streak is logged at WARNING, then one line every ``log_every_s`` with
    the count; recovery is logged once.

    >>> b = Backoff(logging.getLogger("x"), "refresh of 'fraud'", base_s=0.1, cap_s=5.0)
    >>> 0.0 <= b.failure(OSError("down")) <= 0.1 and b.errors == 1
    True
    """

    def __init__(self, logger: logging.Logger, what: str, *, base_s: float = 0.1, cap_s: float = 5.0,
                 log_every_s: float = 30.0) -> None:
        self.log, self.what = logger, what
        self.base_s, self.cap_s, self.log_every_s = base_s, cap_s, log_every_s
        self.streak = 0
        self.errors = 0
        self.last_error: str | None = None
        self._streak_start = 0.0
        self._last_log = -math.inf

    def failure(self, exc: BaseException) -> float:
        """Record a failure; return how long to wait before the next attempt."""
        now = time.monotonic()
        if self.streak == 0:
            self._streak_start = now
        self.streak += 1
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        if self.streak == 1 or now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.log.warning("%s failed (%d in a row, for %.1f s): %s", self.what, self.streak,
                             now - self._streak_start, self.last_error)
        return random.uniform(0.5, 1.0) * min(self.cap_s, self.base_s * 2 ** min(self.streak - 1, 16))

    def success(self) -> None:
        if self.streak:
            self.log.info("%s recovered after %d failure(s) in %.1f s", self.what, self.streak,
                          time.monotonic() - self._streak_start)
            self.streak = 0
            self._last_log = -math.inf
