"""The one place where the driver's exceptions become cstore errors.

Every statement the backend runs goes through :func:`translated` (or :func:`translate` for errors
collected from concurrent requests), so no driver exception reaches the layers above: they catch
the :mod:`cstore.errors` tree, whose types name the condition (a timeout is not a dead replica, and
neither is a lost compare-and-set) and whose fields name the operation and the replicas.

Compare-and-set writes resolve their own timeouts before anything gets here (a timed-out CAS has an
unknown outcome, never a plain failure: see :mod:`cstore.backend._statements`).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from cassandra import (ConsistencyLevel, CoordinationFailure, InvalidRequest, OperationTimedOut, ReadTimeout,
                       Unauthorized, Unavailable, WriteTimeout, WriteType)
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy

from cstore.errors import (ClusterUnreachable, ConsistencyUnavailable, CoordinatorTimeout, CstoreError,
                           PermissionDenied, ReplicaTimeout, SchemaError, UnknownOutcome)

_MISSING_TABLE = re.compile(r"unconfigured table|does not exist|doesn't exist|Keyspace .* not found", re.I)


def server_message(exc: BaseException) -> str:
    """The server's sentence without the driver's wrapping ('Error from server: code=2100 …')."""
    text = str(exc)
    return text.split('message="', 1)[-1].rstrip('"') if 'message="' in text else text


def level_name(level: int | None) -> str:
    return str(ConsistencyLevel.value_to_name.get(level, level))


def replica_error(exc: NoHostAvailable) -> Exception | None:
    """The first server-side error (auth, unavailable, timeout) among the hosts a request tried.

    The driver's retry policy moves on to the next host after an Unavailable; when that host's
    connection is gone too it reports both. The replica error is the one that explains the failure.
    """
    for err in (getattr(exc, "errors", None) or {}).values():
        if isinstance(err, (Unauthorized, Unavailable, ReadTimeout, WriteTimeout, CoordinationFailure,
                            InvalidRequest)):
            return err
    return None


def only_busy(exc: BaseException) -> bool:
    """The driver refused to send because every connection's buffer is full (client-side back-pressure).

    Nothing reached the server, so sending again is safe even for a compare-and-set.
    """
    errors = getattr(exc, "errors", None) or {}
    return isinstance(exc, NoHostAvailable) and bool(errors) and all(
        isinstance(e, ConnectionBusy) for e in errors.values())


def translate(exc: BaseException, operation: str) -> BaseException:
    """The cstore error for ``exc`` raised while running ``operation`` (``exc`` itself if it is not the driver's)."""
    if isinstance(exc, CstoreError):
        return exc
    if isinstance(exc, NoHostAvailable):
        inner = replica_error(exc)
        if inner is not None:
            return translate(inner, operation)
        hosts = ", ".join(str(h) for h in (getattr(exc, "errors", None) or {})) or "no host"
        return ClusterUnreachable(f"{operation}: no Cassandra node could take the request ({hosts}); the driver "
                                  f"reconnects by itself: retry shortly, and check the cluster if it lasts",
                                  operation=operation)
    if isinstance(exc, Unauthorized):
        return PermissionDenied(f"{operation}: the logged-in role may not do this ({server_message(exc)}); log in "
                                f"as a role that has the permission (see cql/roles/roles.cql)", operation=operation)
    if isinstance(exc, Unavailable):
        level = level_name(exc.consistency)
        return ConsistencyUnavailable(
            f"{operation} needs {exc.required_replicas} replica(s) at consistency {level} but only "
            f"{exc.alive_replicas} are alive; bring the missing nodes back or use a weaker profile",
            operation=operation, consistency=level, required=exc.required_replicas, alive=exc.alive_replicas)
    if isinstance(exc, WriteTimeout) and exc.write_type == WriteType.CAS:
        return UnknownOutcome(f"{operation}: a compare-and-set timed out; it is applied once or not at all — "
                              f"read the row at SERIAL before sending it again")
    if isinstance(exc, (ReadTimeout, WriteTimeout)):
        level = level_name(exc.consistency)
        return ReplicaTimeout(
            f"{operation} timed out at consistency {level}: {exc.received_responses} of {exc.required_responses} "
            f"required replica(s) answered; retry later, bring nodes back, or use a weaker profile",
            operation=operation, consistency=level, received=exc.received_responses,
            required=exc.required_responses)
    if isinstance(exc, OperationTimedOut):
        # The client gave up on the coordinator (killed, or overloaded).
        return CoordinatorTimeout(f"{operation}: the coordinator did not answer in time ({server_message(exc)}); "
                                  f"retry, or raise request_timeout_s if the cluster is just slow",
                                  operation=operation)
    if isinstance(exc, InvalidRequest) and _MISSING_TABLE.search(str(exc)):
        return SchemaError(f"{operation}: {server_message(exc)}; the keyspace lacks cstore's tables: run "
                           f"`cstore schema apply`")
    if isinstance(exc, (CoordinationFailure, InvalidRequest)):
        return CstoreError(f"{operation}: Cassandra refused the request: {server_message(exc)}")
    return exc


@contextmanager
def translated(operation: str) -> Iterator[None]:
    """Run a block that talks to the driver; its exceptions leave as cstore errors."""
    try:
        yield
    except CstoreError:
        raise
    except Exception as exc:
        new = translate(exc, operation)
        if new is exc:
            raise
        raise new from None
