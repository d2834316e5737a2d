"""Partition leases and the worker registry, coordinated only through Cassandra.

A lease is the static ``owner`` cell of a ``feedback_consumers`` partition, written with a TTL:

* acquire: ``INSERT … (owner) IF NOT EXISTS USING TTL t`` (free = no live owner cell);
* renew:   ``UPDATE … USING TTL t SET owner = me IF owner = me`` (every ``heartbeat_s``);
* release: ``DELETE owner … IF owner = me`` (rebalancing, shutdown).

A worker trusts its lease until ``send time of the last successful acquire/renew + ttl - margin``
on its own monotonic clock. That is conservative without synchronised clocks: the server starts the
TTL when it applies the write, which is after we sent it. Checkpoints are conditioned on the lease
(:meth:`cstore.feedback.FeedbackReader.save`), so a worker that lost its lease cannot move them.

Rebalancing: every live worker (a ``feedback_workers`` row, refreshed by heartbeat with the same TTL)
aims for its target; above it, it releases its highest-numbered extras; below it, it acquires free
partitions in random order. The target: while no worker of the group has been behind (more waiting
in its partitions than a whole batch, :meth:`LeaseManager.mark_behind`) for ``CONCENTRATE_AFTER_S``,
the oldest live worker takes every partition and the others stand by, hot; otherwise every worker
aims for ``ceil(P / live workers)``. Concentrating is what freshness wants: a model's bulk commits
are taken in turn (``_turn``), so a second worker that is not needed only makes each batch wait for
the other's turn and catch up the other's commit (measured in benchmarks/RESULTS.md: bulk label ->
scorer p99 0.8 s with one worker against 1.3 s with two). After a crash the dead worker's leases and
registry row expire within one TTL and the survivors pick the partitions up at their next rebalance.
"""
from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cstore.backend import Cas, FleetTables, Row
from cstore.errors import CstoreError

__all__ = ["CONCENTRATE_AFTER_S", "Lease", "LeaseManager", "new_worker_id"]

log = logging.getLogger("cstore.leases")

#: A group's partitions go to one worker once none of its workers has been behind for this long.
CONCENTRATE_AFTER_S = 60.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Lease:
    since: datetime
    valid_until: float  # time.monotonic()


class LeaseManager:
    """One worker's leases on a model's feedback partitions for one consumer group."""

    def __init__(self, tables: FleetTables, model_id: uuid.UUID, group: str, partitions: int, worker_id: str, *,
                 ttl_s: float) -> None:
        if ttl_s < 1:
            raise ValueError(f"lease TTL must be at least 1 s, got {ttl_s}")
        self._tables = tables
        self.model_id = model_id
        self.group = group
        self.partitions = partitions
        self.worker_id = worker_id
        self.ttl = int(math.ceil(ttl_s))
        self.owned: dict[int, Lease] = {}
        self.lock = threading.Lock()
        self.acquired_total = 0
        self.lost_total = 0
        self.started_at = datetime.now(UTC)
        self.behind_at: datetime | None = None  # when this worker last had more waiting than a batch
        self.standing_by = False  # the last rebalance meant no partition for this worker: another holds them

    # -- what we hold ------------------------------------------------------------------------------
    def held(self, margin_s: float = 0.0) -> list[int]:
        """Partitions whose lease is still valid for at least ``margin_s`` seconds."""
        now = time.monotonic()
        with self.lock:
            return sorted(p for p, lease in self.owned.items() if lease.valid_until - margin_s > now)

    def _owner_serial(self, part: int) -> str | None:
        return self._tables.owner(self.model_id, self.group, part, serial=True)

    def _still_mine(self, part: int) -> bool | None:
        """Whether we own ``part`` (read at SERIAL), or None when the cluster cannot tell right now."""
        try:
            return self._owner_serial(part) == self.worker_id
        except CstoreError as exc:
            log.warning("could not read the owner of partition %d: %s", part, exc)
            return None

    def _resolved(self, cas: Cas, part: int) -> bool:
        """A lease LWT's outcome; an unknown one is resolved by reading the owner at SERIAL."""
        if cas.applied is None:
            log.warning("lease operation on partition %d timed out; resolving at SERIAL", part)
            return self._owner_serial(part) == self.worker_id
        return cas.applied

    # -- acquire / renew / release -----------------------------------------------------------------
    def acquire(self, part: int) -> bool:
        sent = time.monotonic()
        since = datetime.now(UTC)
        ok = self._resolved(self._tables.acquire(self.model_id, self.group, part, self.worker_id, since, self.ttl),
                            part)
        if ok:
            with self.lock:
                self.owned[part] = Lease(since, sent + self.ttl)
            self.acquired_total += 1
            log.info("%s acquired partition %d", self.worker_id, part)
        return ok

    def renew(self) -> list[int]:
        """Renew every held lease; returns the partitions lost (someone else owns them or they expired)."""
        with self.lock:
            items = list(self.owned.items())
        if not items:
            return []
        sent = time.monotonic()
        results = self._tables.renew(self.model_id, self.group, self.worker_id, self.ttl,
                                     [(part, lease.since) for part, lease in items])
        lost = []
        for (part, lease), res in zip(items, results):
            if not isinstance(res, Cas):
                log.warning("renewing lease of partition %d failed: %s", part, res)
            elif res.applied:
                lease.valid_until = sent + self.ttl
            elif res.applied is False:
                lost.append(part)
            elif self._still_mine(part) is False:
                # Unknown outcome: keep the old (shorter) validity; if we are no longer the owner, drop it.
                lost.append(part)
        now = time.monotonic()
        with self.lock:
            for part in lost:
                self.owned.pop(part, None)
            expired = [p for p, lease in self.owned.items() if lease.valid_until <= now]
            for part in expired:  # could not renew in time: it may be someone else's by now
                self.owned.pop(part, None)
        lost += expired
        if lost:
            self.lost_total += len(lost)
            log.warning("%s lost partition(s) %s", self.worker_id, sorted(lost))
        return sorted(lost)

    def release(self, parts: Iterable[int]) -> None:
        parts = list(parts)
        with self.lock:
            for p in parts:
                self.owned.pop(p, None)
        if parts:
            self._tables.release(self.model_id, self.group, self.worker_id, parts)
            log.info("%s released partition(s) %s", self.worker_id, parts)

    def release_all(self) -> None:
        with self.lock:
            parts = list(self.owned)
        self.release(parts)

    # -- the fleet ---------------------------------------------------------------------------------
    def owners(self) -> dict[int, str | None]:
        parts = list(range(self.partitions))
        return dict(zip(parts, self._tables.owners(self.model_id, self.group, parts)))

    def register(self, stats: Mapping[str, Any], *, unregister: bool = False) -> None:
        if unregister:
            self._tables.unregister(self.model_id, self.group, self.worker_id)
            return
        host, pid, _ = self.worker_id.rsplit(":", 2)
        self._tables.register(self.model_id, self.group, self.worker_id, host, int(pid), self.started_at,
                              datetime.now(UTC), self.held(), int(stats.get("events", 0)),
                              int(stats.get("batches", 0)), float(stats.get("rate", 0.0)), self.ttl,
                              behind_at=self.behind_at)

    def live_workers(self) -> list[Row]:
        return self._tables.workers(self.model_id, self.group)

    def mark_behind(self) -> None:
        """This worker found more waiting than its next batch takes (told to the group at the next
        heartbeat, and to its own next rebalance at once)."""
        self.behind_at = datetime.now(UTC)

    def target(self, live: list[Row]) -> int:
        """How many partitions this worker aims for, given the group's live registry rows (see the module
        docstring)."""
        workers = {w["worker"]: w for w in live}
        stored = workers.get(self.worker_id, {}).get("behind_at")
        mine = max((self.behind_at, stored), key=_ts)
        workers[self.worker_id] = {"worker": self.worker_id, "started_at": self.started_at, "behind_at": mine}
        now = time.time()
        if any(_ts(w.get("behind_at")) > now - CONCENTRATE_AFTER_S for w in workers.values()) or len(workers) == 1:
            return math.ceil(self.partitions / len(workers))
        oldest = min(workers.values(), key=lambda w: (_ts(w.get("started_at")), w["worker"]))
        return self.partitions if oldest["worker"] == self.worker_id else 0

    def rebalance(self) -> tuple[list[int], list[int]]:
        """Move toward :meth:`target` partitions; returns ``(acquired, released)``."""
        live = self.live_workers()
        target = self.target(live)
        others = len({w["worker"] for w in live} - {self.worker_id})
        self.standing_by = target == 0 and others > 0
        mine = self.held()
        if len(mine) > target:
            extras = mine[target:]
            self.release(extras)
            return [], extras
        acquired: list[int] = []
        if len(mine) < target:
            free = [p for p, o in self.owners().items() if o is None]
            random.shuffle(free)
            for p in free:
                if len(mine) + len(acquired) >= target:
                    break
                if self.acquire(p):
                    acquired.append(p)
        return sorted(acquired), []


def _ts(value: datetime | None) -> float:
    """Seconds since 1970 of a registry timestamp (the driver returns naive UTC), -inf for none, in whole
    milliseconds: what Cassandra keeps of a timestamp, so that a worker's own start time (microseconds)
    compares with the others' (read back) as every other worker compares them."""
    if value is None:
        return -math.inf
    return math.floor((value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp() * 1000) / 1000
