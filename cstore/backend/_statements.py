"""How the backend runs statements: prepared once, named by operation, errors translated.

:class:`Runner` is what the table gateways (``_params``, ``_feedback``, ``_fleet``, ``_predictions``,
``_bench``) are written against. Every call names an *operation* (``read_model``, ``commit_chunk``…),
which the consistency profile maps to a consistency level through the driver's execution profiles;
every statement is prepared once per connection, on first use; and every driver exception leaves
through :mod:`cstore.backend._errors`.

Compare-and-set statements (:meth:`Runner.lwt`) report one of three outcomes — applied, refused
(with the row as it is), or *unknown* — and never raise for a timeout: a timed-out CAS may have
been applied, so the caller resolves it with a SERIAL read instead of sending it again blind. The
same holds when the driver re-sent the statement to a second coordinator after a connection error
(the first send may have been applied, and then "not applied" is our own write).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra import OperationTimedOut, WriteTimeout, WriteType
from cassandra.cluster import NoHostAvailable, ResponseFuture, Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, BoundStatement, PreparedStatement

from cstore.backend._errors import only_busy, replica_error, translate, translated
from cstore.config import Config, Profile
from cstore.errors import CstoreError

log = logging.getLogger("cstore.backend")

Row = dict[str, Any]
Params = Sequence[Any] | None
_BUSY_ATTEMPTS = 200
# Write timeouts of these kinds leave a conditional write's outcome open (CAS: the Paxos round itself;
# SIMPLE/BATCH: the commit of an accepted proposal).
_UNKNOWN_WRITE_TYPES = (WriteType.CAS, WriteType.SIMPLE, WriteType.BATCH)


@dataclass(frozen=True)
class Cas:
    """The outcome of a compare-and-set: ``applied`` is True, False (refused; ``row`` holds the current
    values) or None (unknown: resolve it with a SERIAL read, never by sending it again)."""

    applied: bool | None
    row: Row | None = None


def _unknown_or_raise(exc: BaseException, op: str) -> None:
    """Return (the outcome is unknown) or raise the translated error (the write was definitely refused)."""
    if isinstance(exc, (WriteTimeout, OperationTimedOut)):
        if isinstance(exc, WriteTimeout) and exc.write_type not in _UNKNOWN_WRITE_TYPES:
            raise translate(exc, op) from None
        log.warning("%s timed out (%s); its outcome is unknown", op, type(exc).__name__)
        return
    if isinstance(exc, NoHostAvailable) and replica_error(exc) is None and not only_busy(exc):
        # The connection died under the request: it may have reached a coordinator.
        log.warning("%s lost its connection (%s); its outcome is unknown", op, exc)
        return
    new = translate(exc, op)  # refused before proposing, never sent, or the Paxos read phase failed
    if new is exc:
        raise exc
    raise new from None


def _cas_of(rs: Any | None) -> Cas:
    if rs is None:
        return Cas(None)
    row: Row | None = rs.one()
    if rs.was_applied:
        return Cas(True)
    if len(rs.response_future.attempted_hosts) > 1:
        return Cas(None)  # re-sent to another coordinator after a connection error: maybe our own write
    return Cas(False, row)


class Runner:
    """Statements of one connection, with the consistency profile in force."""

    def __init__(self, session: Session, profile: Profile, config: Config, serial_level: int) -> None:
        self.session = session
        self.profile = profile
        self.config = config
        self.serial_level = serial_level
        self.pid = os.getpid()
        self._prepared: dict[str, PreparedStatement] = {}
        self._prepare_lock = threading.Lock()

    @property
    def keyspace(self) -> str | None:
        return self.session.keyspace

    # -- building statements -------------------------------------------------------------------------
    def prepare(self, cql: str) -> PreparedStatement:
        """``cql`` prepared on this connection (once: later calls return the same statement)."""
        stmt = self._prepared.get(cql)
        if stmt is None:
            with self._prepare_lock, translated("prepare"):
                stmt = self._prepared.get(cql)
                if stmt is None:
                    stmt = self._prepared[cql] = self.session.prepare(cql)
        return stmt

    def bind(self, cql: str, params: Params = None, *, serial: bool = False,
             fetch_size: int | None = None) -> BoundStatement:
        stmt = self.prepare(cql).bind(params or ())
        if serial:
            stmt.consistency_level = self.serial_level  # a linearizable read: sees every accepted proposal
        if fetch_size is not None:
            stmt.fetch_size = fetch_size
        return stmt

    @staticmethod
    def batch(statements: Iterable[BoundStatement], *, logged: bool = False) -> BatchStatement:
        """One batch; unlogged batches of a single partition are applied atomically and in isolation."""
        batch = BatchStatement(batch_type=BatchType.LOGGED if logged else BatchType.UNLOGGED)
        for s in statements:
            batch.add(s)
        return batch

    # -- running them ----------------------------------------------------------------------------------
    def _send(self, stmt: Any, op: str, timeout: float | None) -> Any:
        """``session.execute`` that waits out client-side back-pressure (nothing was sent, so it is safe)."""
        kwargs: dict[str, Any] = {"execution_profile": op}
        if timeout is not None:
            kwargs["timeout"] = timeout
        for attempt in range(_BUSY_ATTEMPTS):
            try:
                return self.session.execute(stmt, **kwargs)
            except NoHostAvailable as exc:
                if not only_busy(exc) or attempt == _BUSY_ATTEMPTS - 1:
                    raise
                time.sleep(min(0.001 * (attempt + 1), 0.05))
        raise AssertionError("unreachable")

    def rows(self, cql: str, params: Params = None, *, op: str, serial: bool = False, timeout: float | None = None,
             fetch_size: int | None = None) -> list[Row]:
        """Every row of a read."""
        with translated(op):
            return list(self._send(self.bind(cql, params, serial=serial, fetch_size=fetch_size), op, timeout))

    def one(self, cql: str, params: Params = None, *, op: str, serial: bool = False,
            timeout: float | None = None) -> Row | None:
        """The first row of a read, or None."""
        with translated(op):
            row: Row | None = self._send(self.bind(cql, params, serial=serial), op, timeout).one()
            return row

    def read_together(self, requests: Sequence[tuple[str, Params]], *, op: str,
                      timeout: float | None = None) -> list[list[Row]]:
        """A few different reads sent at once (one round trip for all); the rows of each, in order."""
        kwargs: dict[str, Any] = {"execution_profile": op}
        if timeout is not None:
            kwargs["timeout"] = timeout
        with translated(op):
            futures = [self.session.execute_async(self.bind(c, p), **kwargs) for c, p in requests]
            return [list(f.result()) for f in futures]

    def write(self, cql: str, params: Params = None, *, op: str) -> None:
        """One plain (idempotent, unconditional) write."""
        with translated(op):
            self._send(self.bind(cql, params), op, None)

    def write_partition(self, requests: Sequence[tuple[str, Params]], *, op: str) -> None:
        """Rows that share one partition in one request: an unlogged batch of one partition is applied
        atomically and in isolation, and costs one round trip and one driver send instead of one each."""
        with translated(op):
            if len(requests) == 1:
                self._send(self.bind(*requests[0]), op, None)
            else:
                self._send(self.batch(self.bind(c, p) for c, p in requests), op, None)

    def send_batch(self, batch: BatchStatement, *, op: str) -> None:
        with translated(op):
            self._send(batch, op, None)

    def fire(self, cql: str, params: Params = None, *, op: str) -> None:
        """Send a write and do not wait for it (best effort: a failure is logged at debug level)."""
        try:
            future: ResponseFuture = self.session.execute_async(self.bind(cql, params), execution_profile=op)
        except Exception as exc:  # noqa: BLE001 - best effort by contract
            log.debug("%s not sent: %s", op, exc)
            return
        future.add_errback(lambda exc: log.debug("%s failed: %s", op, exc))

    def _send_resolvable(self, stmt: BoundStatement | BatchStatement, op: str) -> Any | None:
        """Send a write whose timeout leaves its outcome open; None when the outcome is unknown."""
        try:
            return self._send(stmt, op, None)
        except Exception as exc:
            _unknown_or_raise(exc, op)
            return None

    def lwt(self, stmt: BoundStatement | BatchStatement, *, op: str) -> Cas:
        """Run a compare-and-set (a conditional statement or a conditional single-partition batch)."""
        return _cas_of(self._send_resolvable(stmt, op))

    def lwt_many(self, stmts: Sequence[BoundStatement | BatchStatement], *, op: str) -> list[Cas | CstoreError]:
        """Compare-and-sets on different partitions, all in flight at once; per statement its outcome,
        or the (translated) error that definitely refused it."""
        futures = [self.session.execute_async(s, execution_profile=op) for s in stmts]
        out: list[Cas | CstoreError] = []
        for f in futures:
            try:
                out.append(_cas_of(f.result()))
            except CstoreError as exc:
                out.append(exc)
            except Exception as exc:
                try:
                    _unknown_or_raise(exc, op)
                    out.append(Cas(None))
                except CstoreError as err:
                    out.append(err)
        return out

    def blind(self, stmt: BoundStatement | BatchStatement, *, op: str) -> bool | None:
        """An unconditional write whose outcome matters (a blind chunk commit): True, or None if unknown."""
        return None if self._send_resolvable(stmt, op) is None else True

    def lwt_cql(self, cql: str, params: Params = None, *, op: str) -> Cas:
        return self.lwt(self.bind(cql, params), op=op)

    def many(self, cql: str, args: Sequence[Params], *, op: str, concurrency: int = 32,
             serial: bool = False) -> list[list[Row]]:
        """The same statement with many argument lists, ``concurrency`` in flight; the rows of each, in order.

        The first failure raises (translated); use :meth:`many_outcomes` to keep going."""
        stmts = [(self.bind(cql, a, serial=serial), None) for a in args]
        with translated(op):
            results = execute_concurrent(self.session, stmts, concurrency=concurrency, raise_on_first_error=True,
                                         results_generator=False, execution_profile=op)
        return [list(rs) for _, rs in results]

    def many_outcomes(self, cql: str, args: Sequence[Params], *, op: str,
                      concurrency: int = 32) -> list[BaseException | None]:
        """Like :meth:`many` for writes, but every request runs: None where it succeeded, the
        (translated) error where it failed."""
        return self.run_outcomes([(self.bind(cql, a), None) for a in args], op=op, concurrency=concurrency)

    def run_outcomes(self, statements: Sequence[tuple[Any, Any]], *, op: str,
                     concurrency: int = 32) -> list[BaseException | None]:
        with translated(op):
            results = execute_concurrent(self.session, statements, concurrency=concurrency,
                                         raise_on_first_error=False, results_generator=False, execution_profile=op)
        return [None if ok else translate(res, op) for ok, res in results]

    def read_concurrent(self, statements: Sequence[tuple[Any, Any]], *, op: str) -> list[Iterator[Row]]:
        """Run reads concurrently; each result is an iterator that fetches further pages only as it is
        consumed (stop early to read less), errors translated."""
        with translated(op):
            results = execute_concurrent(self.session, statements, concurrency=32, raise_on_first_error=True,
                                         results_generator=False, execution_profile=op)
        return [_translating(iter(rs), op) for _, rs in results]


def _translating(rows: Iterator[Row], op: str) -> Iterator[Row]:
    while True:
        with translated(op):
            row = next(rows, None)
        if row is None:
            return
        yield row
