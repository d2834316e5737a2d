"""cstore: an online-learning update store on Apache Cassandra.

The public surface, as the README teaches it::

    store = cstore.connect()                                  # Store: the parameter store
    cstore.create_learner(store, "fraud", n_features=2**20)   # a model workers can learn
    with cstore.FeedbackWriter(store, "fraud") as w:          # labels in
        w.send("tx-42", 1, features={"amount": 12.5})
    cstore.Worker(store, "fraud").run()                       # or: cstore worker --model fraud
    model = cstore.Client().model("fraud")                    # scoring from a fresh in-memory copy

Every error cstore raises on purpose is a :class:`CstoreError` (see :mod:`cstore.errors`). The rooms
behind these names are described in ``docs/ARCHITECTURE.md``.
"""
from cstore.config import Config, cstore_version, load_config
from cstore.core import UpdateResult
from cstore.errors import (Closed, ClusterUnreachable, ConfigError, ConflictError, ConnectionFailed,
                           ConsistencyUnavailable, CoordinatorTimeout, CorruptData, CstoreError, FeedbackBackPressure,
                           FeedbackWriteFailed, GuardFailing, InvalidFeedback, KeyUnavailable, MissingChunk,
                           ModelExists, NotLoaded, PartialCommit, PayloadTooLarge, PermissionDenied, ReplicaTimeout,
                           SchemaError, TransientError, UnknownAlias, UnknownModel, UnknownOutcome, ValidationError)
from cstore.feedback import FeedbackWriter, send_feedback
from cstore.scoring import Client, ModelHandle
from cstore.store import ModelState, Store, connect
from cstore.training import Worker, create_learner

__version__ = cstore_version()

__all__ = [
    # connecting and configuration
    "connect", "Store", "Config", "load_config",
    # models and updates
    "ModelState", "UpdateResult", "create_learner",
    # feedback, learning, scoring
    "FeedbackWriter", "send_feedback", "Worker", "Client", "ModelHandle",
    # errors
    "CstoreError", "ConfigError", "ConnectionFailed", "SchemaError", "PermissionDenied", "ValidationError",
    "UnknownModel", "UnknownAlias", "GuardFailing", "ModelExists", "PayloadTooLarge", "InvalidFeedback",
    "CorruptData", "MissingChunk", "KeyUnavailable",
    "TransientError", "ConflictError", "ConsistencyUnavailable", "ReplicaTimeout", "CoordinatorTimeout",
    "ClusterUnreachable", "UnknownOutcome", "PartialCommit", "NotLoaded", "Closed", "FeedbackBackPressure",
    "FeedbackWriteFailed",
]
