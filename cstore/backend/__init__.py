"""The storage boundary: the only room that talks to Cassandra.

Everything cstore stores goes through here, and nothing else imports the driver:

* :func:`connect` → :class:`Backend`: one cluster connection, an execution profile per operation
  (the consistency profile as the driver's settings), TLS, and connect errors that say what to do.
* table gateways on the backend — ``params`` (models, chunks, the chunk-version index, history,
  snapshots, stats), ``feedback`` (layouts, segments, checkpoints), ``fleet`` (leases, the worker
  registry, shared learner state), ``governance`` (aliases and their guards, online metrics, the
  audit trail), ``predictions`` (the prediction log), ``purge`` (everything a dropped model owns),
  ``baselines`` (the benchmarks' comparison designs) — hold every CQL statement, prepared once per
  connection.
* the one translation point for driver errors (``_errors``): every call raises :mod:`cstore.errors`
  types only; a compare-and-set reports :class:`Cas` (applied, refused, or unknown) instead of
  raising on a timeout, so callers resolve unknown outcomes with a SERIAL read.
* schema migrations (:func:`apply_schema`, :func:`schema_status`, shipped as package data in
  ``cql/``) and least-privilege roles (:func:`apply_roles`).
"""
from cstore.backend._backoff import Backoff, wait_while
from cstore.backend._baselines import BASELINE_KEYSPACE, BaselineTables
from cstore.backend._connection import Backend, connect
from cstore.backend._feedback import FeedbackTables
from cstore.backend._fleet import FleetTables
from cstore.backend._governance import GovernanceTables
from cstore.backend._params import FEED_BUCKET_S, STATS_COLUMNS, ChunkWrite, IncrementEntry, ParamTables
from cstore.backend._predictions import COUNTERS, PredictionTables
from cstore.backend._purge import REVIEW_BANDS, REVIEW_BUCKET_S, DropPlan, PurgeReport, PurgeTables
from cstore.backend._roles import PASSWORD_ENV, ROLES, RolesReport, apply_roles, passwords_from_env, role_name
from cstore.backend._schema import (apply_schema, baseline_migrations, cql_dir, migrations, replication_map,
                                    schema_status, split_statements)
from cstore.backend._statements import Cas, Row

__all__ = [
    "BASELINE_KEYSPACE", "COUNTERS", "FEED_BUCKET_S", "PASSWORD_ENV", "REVIEW_BANDS", "REVIEW_BUCKET_S", "ROLES",
    "STATS_COLUMNS", "Backend", "Backoff", "BaselineTables", "Cas", "ChunkWrite", "DropPlan", "FeedbackTables",
    "FleetTables", "GovernanceTables", "IncrementEntry", "ParamTables", "PredictionTables", "PurgeReport",
    "PurgeTables", "RolesReport", "Row", "apply_roles", "apply_schema", "baseline_migrations", "connect", "cql_dir",
    "migrations", "passwords_from_env", "replication_map", "role_name", "schema_status", "split_statements",
    "wait_while",
]
