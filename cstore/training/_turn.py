"""Commit turns: the bulk batches of one model's workers commit one after another, not against each other.

Every bulk batch touches nearly every chunk of a model, so two workers of one model that commit at
the same time refuse each other's compare-and-sets: measured with two worker processes at 5,000
events/s (``cstore bench latency``), 1,836 refused rounds for 2,199 chunk commits, each a wasted Paxos
round, an aborted history row, a re-read and a back-off. A worker that shares its model (it does not
hold every partition of its group) therefore takes the model's *commit turn* — one cell of
``commit_turns``, taken by compare-and-set with a TTL — before it reads the chunks its batch will
change, and gives it up as soon as the commit is acknowledged. The next holder catches those chunks up
from their rows (the delta entries above the versions it holds), not from the version index, so it
need not wait for the announcement, which trails the commit. Fetching, decoding and hashing the next
batch go on meanwhile, outside the turn.

The turn is only an optimisation: each chunk commit keeps its own version check. A holder that dies
or stalls past the TTL lets the others in (a late commit then meets a conflict, handled as before);
a worker that waits longer than ``wait_s`` commits without the turn. The critical lane never takes
it: its commits are small and urgent, and a bulk commit it meets is retried at once.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cstore.backend import FleetTables
from cstore.errors import CstoreError

__all__ = ["CommitTurn", "worker_turn"]

log = logging.getLogger("cstore.worker")

TTL_S = 10        # a turn lapses this long after it was taken (a batch's commit takes well under a second)
WAIT_S = 5.0      # the longest a batch waits for the turn before committing without it
POLL_S = 0.005    # how often a waiting worker looks at the holder (a plain read of one small row)


class CommitTurn:
    """The commit turn of one model, as one worker takes it (see the module docstring)."""

    def __init__(self, tables: FleetTables, model_id: uuid.UUID, holder: str, *, shared: Callable[[], bool],
                 stop: threading.Event, stats: dict[str, Any],
                 ttl_s: int = TTL_S, wait_s: float = WAIT_S, poll_s: float = POLL_S) -> None:
        """``shared()``: does another worker commit to this model now (else the turn is skipped)?
        ``stop``: set when the worker stops (waiting ends). ``stats``: the worker's, which gain
        ``turns`` (taken), ``turn_wait_s`` (spent taking them) and ``turns_missed`` (waits that ran out)."""
        self._tables, self._model_id, self._holder = tables, model_id, holder
        self._shared, self._stop = shared, stop
        self._ttl_s, self._wait_s, self._poll_s = ttl_s, wait_s, poll_s
        self.stats = stats
        stats.update(turns=0, turn_wait_s=0.0, turns_missed=0)

    @contextmanager
    def taken(self, *, skip: bool = False) -> Iterator[bool]:
        """Hold the turn for the block (yields whether it was taken: False when ``skip``, when the model
        is not shared, or when the wait ran out)."""
        got = not skip and self._shared() and self._take()
        try:
            yield got
        finally:
            if got:
                self._give()

    def _take(self) -> bool:
        t0 = time.monotonic()
        deadline = t0 + self._wait_s
        try:
            while not self._stop.is_set():
                holder = self._tables.turn_holder(self._model_id)
                if holder is None or holder == self._holder:
                    cas = self._tables.take_turn(self._model_id, self._holder, self._ttl_s)
                    if cas.applied or (cas.row is not None and cas.row.get("holder") == self._holder):
                        self.stats["turns"] += 1
                        return True
                if time.monotonic() > deadline:
                    break
                self._stop.wait(self._poll_s)
        except CstoreError as exc:  # the turn is an optimisation: commit without it
            log.warning("model %s: could not take the commit turn (%s); committing without it", self._model_id, exc)
        finally:
            self.stats["turn_wait_s"] += time.monotonic() - t0
        if not self._stop.is_set():  # a stopping worker did not miss its turn: it stopped waiting
            self.stats["turns_missed"] += 1
        return False

    def _give(self) -> None:
        try:
            self._tables.give_turn(self._model_id, self._holder)
        except CstoreError as exc:  # it lapses by its TTL
            log.warning("model %s: could not give the commit turn up (%s); it lapses in %d s", self._model_id,
                        exc, self._ttl_s)


def worker_turn(worker: Any) -> CommitTurn:
    """The commit turn of a :class:`~cstore.training.Worker`: shared while it holds only some of its
    group's partitions (another worker holds the rest)."""
    return CommitTurn(worker.store.backend.fleet, worker.info.model_id, worker.worker_id,
                      shared=lambda: len(worker.leases.held()) < worker.fcfg.partitions,
                      stop=worker._stop, stats=worker.stats)
