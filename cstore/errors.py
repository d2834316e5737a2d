"""One exception hierarchy for everything cstore raises on purpose.

Every message says what went wrong *and* what to do next, because the people
reading them are operators at 3 a.m., not the authors of this code.
"""
from __future__ import annotations


class CstoreError(Exception):
    """Base class of every error cstore raises deliberately."""


class ConfigError(CstoreError):
    """Invalid or missing configuration (flags, CSTORE_* environment, config file)."""


class ConnectionFailed(CstoreError):
    """No Cassandra node could be reached or the login was refused."""


class LocalClusterError(CstoreError):
    """The local Cassandra launcher could not start, find or stop a node."""


class SchemaError(CstoreError):
    """The keyspace or a migration could not be applied (or a migration changed after it was applied)."""


class ValidationError(CstoreError, ValueError):
    """Bad input rejected at the boundary; nothing was written."""


class UnknownModel(ValidationError, KeyError):
    """The named model does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else "unknown model"


class ModelExists(ValidationError):
    """A model with that name already exists."""


class PayloadTooLarge(ValidationError):
    """An update, chunk or feedback event exceeds the configured size limit."""


class CorruptData(CstoreError):
    """Data read back from Cassandra cannot be decoded (truncated, wrong dtype, tampered)."""


class ConflictError(CstoreError):
    """A compare-and-set update kept losing to concurrent writers and gave up after the retry limit."""


class UnknownOutcome(CstoreError):
    """A commit timed out and its outcome could not be resolved: it was applied once or not at all."""


class ConsistencyUnavailable(CstoreError):
    """Not enough replicas answered for the requested consistency level."""


class NotLoaded(CstoreError):
    """A model handle was used for prediction before any copy of the model was loaded."""


class InvalidFeedback(ValidationError):
    """A feedback event (or a line of a feedback file) is malformed; nothing of it was written."""


class FeedbackBackPressure(CstoreError):
    """The feedback writer's buffer stayed full for longer than its send timeout."""


class FeedbackWriteFailed(CstoreError):
    """Feedback segments could not be written after retries; those events are not durable."""


class PermissionDenied(CstoreError):
    """The logged-in role lacks a permission for this operation (see cql/roles/roles.cql)."""
