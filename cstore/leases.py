"""Partition leases and the worker registry, coordinated only through Cassandra.

A lease is the static ``owner`` cell of a ``feedback_consumers`` partition, written with a TTL:

* acquire: ``INSERT … (owner) IF NOT EXISTS USING TTL t`` (free = no live owner cell);
* renew:   ``UPDATE … USING TTL t SET owner = me IF owner = me`` (every ``heartbeat_s``);
* release: ``DELETE owner … IF owner = me`` (rebalancing, shutdown).

A worker trusts its lease until ``send time of the last successful acquire/renew + ttl - margin``
on its own monotonic clock. That is conservative without synchronised clocks: the server starts the
TTL when it applies the write, which is after we sent it. Checkpoints are conditioned on the lease
(:meth:`cstore.feedback_reader.FeedbackReader.save`), so a worker that lost its lease cannot move them.

Rebalancing: every live worker (a ``feedback_workers`` row, refreshed by heartbeat with the same TTL)
aims for ``ceil(P / live workers)`` partitions; above it, it releases its highest-numbered extras;
below it, it acquires free partitions in random order. After a crash the dead worker's leases and
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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from cassandra import OperationTimedOut, WriteTimeout
from cassandra.concurrent import execute_concurrent_with_args

log = logging.getLogger("cstore.leases")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Lease:
    since: datetime
    valid_until: float  # time.monotonic()


class LeaseManager:
    """One worker's leases on a model's feedback partitions for one consumer group."""

    def __init__(self, session, model_id: uuid.UUID, group: str, partitions: int, worker_id: str, *,
                 ttl_s: float, serial_level: int) -> None:
        if ttl_s < 1:
            raise ValueError(f"lease TTL must be at least 1 s, got {ttl_s}")
        self.session = session
        self.model_id = model_id
        self.group = group
        self.partitions = partitions
        self.worker_id = worker_id
        self.ttl = int(math.ceil(ttl_s))
        self.serial_level = serial_level
        self.owned: dict[int, Lease] = {}
        self.lock = threading.Lock()
        self.acquired_total = 0
        self.lost_total = 0
        p = session.prepare
        self.q_acquire = p("INSERT INTO feedback_consumers (model_id, grp, part, owner, lease_since) "
                           "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?")
        self.q_renew = p("UPDATE feedback_consumers USING TTL ? SET owner = ?, lease_since = ? "
                         "WHERE model_id = ? AND grp = ? AND part = ? IF owner = ?")
        self.q_release = p("DELETE owner, lease_since FROM feedback_consumers "
                           "WHERE model_id = ? AND grp = ? AND part = ? IF owner = ?")
        self.q_owner = p("SELECT owner FROM feedback_consumers WHERE model_id = ? AND grp = ? AND part = ? LIMIT 1")
        self.q_register = p("INSERT INTO feedback_workers (model_id, grp, worker, host, pid, started_at, heartbeat_at, "
                            "partitions, events, batches, rate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")
        self.q_unregister = p("DELETE FROM feedback_workers WHERE model_id = ? AND grp = ? AND worker = ?")
        self.q_workers = p("SELECT * FROM feedback_workers WHERE model_id = ? AND grp = ?")
        self.started_at = datetime.now(timezone.utc)

    # -- what we hold ------------------------------------------------------------------------------
    def held(self, margin_s: float = 0.0) -> list[int]:
        """Partitions whose lease is still valid for at least ``margin_s`` seconds."""
        now = time.monotonic()
        with self.lock:
            return sorted(p for p, lease in self.owned.items() if lease.valid_until - margin_s > now)

    def _owner_serial(self, part: int) -> str | None:
        stmt = self.q_owner.bind((self.model_id, self.group, part))
        stmt.consistency_level = self.serial_level
        row = self.session.execute(stmt, execution_profile="coordination").one()
        return row["owner"] if row else None

    def _lwt(self, stmt, args, part: int) -> bool:
        """Run a lease LWT; a timeout (unknown outcome) is resolved by reading the owner at SERIAL."""
        try:
            return self.session.execute(stmt, args, execution_profile="coordination").was_applied
        except (WriteTimeout, OperationTimedOut) as exc:
            log.warning("lease operation on partition %d timed out (%s); resolving at SERIAL", part, exc)
            return self._owner_serial(part) == self.worker_id

    # -- acquire / renew / release -----------------------------------------------------------------
    def acquire(self, part: int) -> bool:
        sent = time.monotonic()
        since = datetime.now(timezone.utc)
        ok = self._lwt(self.q_acquire, (self.model_id, self.group, part, self.worker_id, since, self.ttl), part)
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
        args = [(self.ttl, self.worker_id, lease.since, self.model_id, self.group, part, self.worker_id)
                for part, lease in items]
        results = execute_concurrent_with_args(self.session, self.q_renew, args, concurrency=32,
                                               raise_on_first_error=False, execution_profile="coordination")
        lost = []
        for (part, lease), (ok, res) in zip(items, results):
            if ok and res.was_applied:
                lease.valid_until = sent + self.ttl
            elif ok:
                lost.append(part)
            elif isinstance(res, (WriteTimeout, OperationTimedOut)):
                # Unknown outcome: keep the old (shorter) validity; if we are no longer the owner, drop it.
                if self._owner_serial(part) != self.worker_id:
                    lost.append(part)
            else:
                log.warning("renewing lease of partition %d failed: %s", part, res)
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
            execute_concurrent_with_args(self.session, self.q_release,
                                         [(self.model_id, self.group, p, self.worker_id) for p in parts],
                                         concurrency=32, raise_on_first_error=False,
                                         execution_profile="coordination")
            log.info("%s released partition(s) %s", self.worker_id, parts)

    def release_all(self) -> None:
        with self.lock:
            parts = list(self.owned)
        self.release(parts)

    # -- the fleet ---------------------------------------------------------------------------------
    def owners(self) -> dict[int, str | None]:
        results = execute_concurrent_with_args(self.session, self.q_owner,
                                               [(self.model_id, self.group, p) for p in range(self.partitions)],
                                               concurrency=32, raise_on_first_error=True,
                                               execution_profile="coordination")
        out = {}
        for p, (_, rows) in zip(range(self.partitions), results):
            rows = list(rows)
            out[p] = rows[0]["owner"] if rows else None
        return out

    def register(self, stats: Mapping[str, Any], *, unregister: bool = False) -> None:
        if unregister:
            self.session.execute(self.q_unregister, (self.model_id, self.group, self.worker_id),
                                 execution_profile="coordination")
            return
        host, pid, _ = self.worker_id.rsplit(":", 2)
        self.session.execute(self.q_register, (self.model_id, self.group, self.worker_id, host, int(pid),
                                               self.started_at, datetime.now(timezone.utc), self.held(),
                                               int(stats.get("events", 0)), int(stats.get("batches", 0)),
                                               float(stats.get("rate", 0.0)), self.ttl),
                             execution_profile="coordination")

    def live_workers(self) -> list[dict[str, Any]]:
        return list(self.session.execute(self.q_workers, (self.model_id, self.group),
                                         execution_profile="coordination"))

    def rebalance(self) -> tuple[list[int], list[int]]:
        """Move toward ``ceil(P / live workers)`` partitions; returns ``(acquired, released)``."""
        live = {w["worker"] for w in self.live_workers()} | {self.worker_id}
        target = math.ceil(self.partitions / len(live))
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
