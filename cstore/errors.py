"""The one exception tree for everything cstore raises on purpose.

Every message says what went wrong *and* what to do next, because the people reading them are
operators at 3 a.m., not the authors of this code. Errors that concern a stored thing carry it as
fields (``model``, ``chunk``, ``op_id``…), so a caller can act on them without parsing messages.
Driver exceptions never escape: ``cstore.backend`` translates them at one place.

::

    CstoreError
    ├── ConfigError              settings, profiles, key files
    ├── ConnectionFailed         no node answered at connect, login refused, keyspace missing
    ├── SchemaError              a migration could not be applied, or changed after it was
    ├── PermissionDenied         the logged-in role lacks a permission
    ├── ValidationError          bad input, rejected before anything was written (also a ValueError)
    │   ├── UnknownModel             (also a KeyError)
    │   ├── UnknownAlias             (also a KeyError)
    │   ├── GuardFailing             a promotion the alias's guard refuses (force it with a reason)
    │   ├── ModelExists
    │   ├── PayloadTooLarge
    │   └── InvalidFeedback
    ├── CorruptData              stored bytes cannot be decoded or authenticated
    │   ├── MissingChunk             a chunk row the model's metadata promises is not there
    │   └── KeyUnavailable           stored bytes are encrypted with a key this process does not hold
    │                                (or encryption is on and they are not encrypted): a setup problem
    ├── TransientError           failed for now and left nothing behind: retrying is safe
    │   ├── ConflictError            a compare-and-set kept losing to concurrent writers
    │   ├── ConsistencyUnavailable   fewer replicas alive than the consistency level needs
    │   ├── ReplicaTimeout           replicas did not answer the coordinator in time
    │   ├── CoordinatorTimeout       the coordinator did not answer the client in time
    │   └── ClusterUnreachable       no connection to any node right now
    ├── UnknownOutcome           a commit timed out and could not be resolved: applied once or not at all
    ├── PartialCommit            some chunks of a multi-chunk update committed, others did not
    ├── NotLoaded                a model handle has no copy of the model to predict with yet
    ├── Closed                   a client or writer was used after close()
    ├── FeedbackBackPressure     the feedback buffer stayed full past the send timeout
    └── FeedbackWriteFailed      feedback segments could not be written; those events are not durable
"""
from __future__ import annotations

import uuid
from typing import Any

__all__ = [
    "Closed", "ClusterUnreachable", "ConfigError", "ConflictError", "ConnectionFailed", "ConsistencyUnavailable",
    "CoordinatorTimeout", "CorruptData", "CstoreError", "FeedbackBackPressure", "FeedbackWriteFailed", "GuardFailing",
    "InvalidFeedback", "KeyUnavailable", "MissingChunk", "ModelExists", "NotLoaded", "PartialCommit",
    "PayloadTooLarge", "PermissionDenied", "ReplicaTimeout", "SchemaError", "TransientError", "UnknownAlias",
    "UnknownModel", "UnknownOutcome", "ValidationError",
]


class CstoreError(Exception):
    """Base class of every error cstore raises deliberately."""


class ConfigError(CstoreError):
    """Invalid or missing configuration (flags, CSTORE_* environment, config file, key files)."""


class ConnectionFailed(CstoreError):
    """No Cassandra node could be reached at connect time, the login was refused, or the keyspace is missing."""


class SchemaError(CstoreError):
    """The keyspace or a migration could not be applied (or a migration changed after it was applied)."""


class PermissionDenied(CstoreError):
    """The logged-in role lacks a permission for ``operation`` (see ``cql/roles/roles.cql``)."""

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation


class ValidationError(CstoreError, ValueError):
    """Bad input rejected at the boundary; nothing was written."""


class UnknownModel(ValidationError, KeyError):
    """The named model does not exist."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else "unknown model"


class UnknownAlias(ValidationError, KeyError):
    """The model has no alias of that name (``cstore model aliases NAME`` lists them)."""

    def __init__(self, message: str, *, model: str | None = None, alias: str | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.alias = alias

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown alias"


class GuardFailing(ValidationError):
    """A promotion was refused: the alias's guard sees the head worse than its baseline (``regression``
    nats of log loss per label over ``labels`` labels). Nothing was moved."""

    def __init__(self, message: str, *, model: str | None = None, alias: str | None = None,
                 regression: float | None = None, labels: int | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.alias = alias
        self.regression = regression
        self.labels = labels


class ModelExists(ValidationError):
    """A model with that name already exists."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model


class PayloadTooLarge(ValidationError):
    """An update, chunk or feedback event exceeds the configured size limit."""


class InvalidFeedback(ValidationError):
    """A feedback event (or a line of a feedback file) is malformed; nothing of it was written."""


class CorruptData(CstoreError):
    """Data read back from Cassandra cannot be decoded (truncated, wrong dtype, tampered)."""

    def __init__(self, message: str, *, model: str | None = None, param: str | None = None,
                 chunk: int | None = None) -> None:
        super().__init__(message)
        self.model, self.param, self.chunk = model, param, chunk


class MissingChunk(CorruptData):
    """A chunk row that the model's metadata promises is absent: the model is incomplete."""


class KeyUnavailable(CorruptData):
    """Stored bytes cannot be opened with this process's keys: encrypted with a key it does not hold
    (``key_id``), encrypted while it has none, or plain while encryption is on. Nothing about the
    data is wrong; the process's key setup is, so consumers stop instead of setting the data aside."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class TransientError(CstoreError):
    """The operation failed for now and left nothing committed behind: the same call may be retried."""


class ConflictError(TransientError):
    """A compare-and-set update kept losing to concurrent writers and gave up after ``retries`` retries."""

    def __init__(self, message: str, *, model: str | None = None, chunk: int | None = None,
                 retries: int = 0) -> None:
        super().__init__(message)
        self.model, self.chunk, self.retries = model, chunk, retries


class ConsistencyUnavailable(TransientError):
    """Fewer replicas are alive than ``consistency`` needs for ``operation`` (the coordinator refused)."""

    def __init__(self, message: str, *, operation: str | None = None, consistency: str | None = None,
                 required: int | None = None, alive: int | None = None) -> None:
        super().__init__(message)
        self.operation, self.consistency, self.required, self.alive = operation, consistency, required, alive


class ReplicaTimeout(TransientError):
    """The coordinator did not hear from enough replicas in time (``received`` of ``required``)."""

    def __init__(self, message: str, *, operation: str | None = None, consistency: str | None = None,
                 received: int | None = None, required: int | None = None) -> None:
        super().__init__(message)
        self.operation, self.consistency, self.received, self.required = operation, consistency, received, required


class CoordinatorTimeout(TransientError):
    """The client gave up waiting for the coordinator (killed, overloaded or partitioned away)."""

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation


class ClusterUnreachable(TransientError):
    """No connection to any node could carry the request right now (after connecting successfully once)."""

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation


class UnknownOutcome(CstoreError):
    """A commit timed out and its outcome could not be resolved: op ``op_id`` is applied once or not at all."""

    def __init__(self, message: str, *, op_id: uuid.UUID | None = None, model: str | None = None,
                 chunk: int | None = None) -> None:
        super().__init__(message)
        self.op_id, self.model, self.chunk = op_id, model, chunk


class PartialCommit(CstoreError):
    """Some chunks of a multi-chunk update were committed and others were not.

    ``result`` (a :class:`cstore.core.UpdateResult`) holds the committed chunks, ``failed`` the chunks
    that were not committed and ``cause`` the first error among them. ``update_id`` (when not None)
    finishes the update exactly once: ``Store.apply_update(s)(..., update_id=err.update_id)`` with the
    same arguments commits only the ``failed`` chunks, however often it is called.
    """

    def __init__(self, message: str, *, result: Any, failed: list[int], cause: CstoreError,
                 update_id: uuid.UUID | None = None) -> None:
        super().__init__(message)
        self.result, self.failed, self.cause, self.update_id = result, failed, cause, update_id


class NotLoaded(CstoreError):
    """A model handle was used for prediction before any copy of the model was loaded."""


class Closed(CstoreError):
    """A client, store or feedback writer was used after ``close()``."""


class FeedbackBackPressure(CstoreError):
    """The feedback writer's buffer stayed full for longer than its send timeout."""


class FeedbackWriteFailed(CstoreError):
    """Feedback segments could not be written after retries; ``events`` events are not durable."""

    def __init__(self, message: str, *, events: int = 0) -> None:
        super().__init__(message)
        self.events = events

