"""The worker fleet's tables (``cql/002_feedback.cql``, ``cql/009_commit_turns.cql``): partition leases,
the worker registry, the consumer group's shared learner state, the batch trace and each model's commit
turn. All coordination is compare-and-set with TTLs.
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cstore.backend._statements import Cas, Row, Runner
from cstore.errors import CstoreError

# A lease is the static ``owner`` cell of a feedback_consumers partition, written with a TTL.
_ACQUIRE = ("INSERT INTO feedback_consumers (model_id, grp, part, owner, lease_since) "
            "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?")
_RENEW = ("UPDATE feedback_consumers USING TTL ? SET owner = ?, lease_since = ? "
          "WHERE model_id = ? AND grp = ? AND part = ? IF owner = ?")
_RELEASE = ("DELETE owner, lease_since FROM feedback_consumers "
            "WHERE model_id = ? AND grp = ? AND part = ? IF owner = ?")
_OWNER = "SELECT owner FROM feedback_consumers WHERE model_id = ? AND grp = ? AND part = ? LIMIT 1"
_REGISTER = ("INSERT INTO feedback_workers (model_id, grp, worker, host, pid, started_at, heartbeat_at, partitions, "
             "events, batches, rate, behind_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")
_UNREGISTER = "DELETE FROM feedback_workers WHERE model_id = ? AND grp = ? AND worker = ?"
_WORKERS = "SELECT * FROM feedback_workers WHERE model_id = ? AND grp = ?"
_STATE = "SELECT * FROM learner_state WHERE model_id = ? AND grp = ?"
_STATE_INIT = ("INSERT INTO learner_state (model_id, grp, seq, state, events, batches, drifts, lr_scale) "
               "VALUES (?, ?, 0, ?, 0, 0, 0, 1.0) IF NOT EXISTS")
_STATE_CAS = ("UPDATE learner_state SET seq = ?, state = ?, last_batch = ?, last_commit = ?, events = ?, batches = ?, "
              "drifts = ?, last_drift = ?, loss = ?, drift_score = ?, lr_scale = ?, updated_by = ? "
              "WHERE model_id = ? AND grp = ? IF seq = ?")
_TRACE = ("INSERT INTO feedback_batches (model_id, grp, day, batch_id, worker, segments, n_events, n_learned, "
          "n_skipped, weight_sum, loss, drift_score, lr_scale) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
          "USING TTL ?")
_TRACES = "SELECT * FROM feedback_batches WHERE model_id = ? AND grp = ? AND day = ?"
# A model's commit turn (cql/009_commit_turns.cql): one cell, taken and given up by compare-and-set.
_TURN_TAKE = "UPDATE commit_turns USING TTL ? SET holder = ? WHERE model_id = ? IF holder = null"
_TURN_GIVE = "DELETE holder FROM commit_turns WHERE model_id = ? IF holder = ?"
_TURN_HOLDER = "SELECT holder FROM commit_turns WHERE model_id = ?"


class FleetTables:
    """Every statement of leases, the registry and the shared learner state of one keyspace."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    # -- leases -------------------------------------------------------------------------------------------
    def acquire(self, model_id: uuid.UUID, group: str, part: int, owner: str, since: datetime, ttl_s: int) -> Cas:
        return self._r.lwt_cql(_ACQUIRE, (model_id, group, part, owner, since, ttl_s), op="coordination")

    def renew(self, model_id: uuid.UUID, group: str, owner: str, ttl_s: int,
              leases: Sequence[tuple[int, datetime]]) -> list[Cas | CstoreError]:
        """Renew ``(part, lease_since)`` leases iff ``owner`` still holds them, all at once."""
        stmts = [self._r.bind(_RENEW, (ttl_s, owner, since, model_id, group, part, owner)) for part, since in leases]
        return self._r.lwt_many(stmts, op="coordination")

    def release(self, model_id: uuid.UUID, group: str, owner: str, parts: Sequence[int]) -> None:
        """Give leases up iff ``owner`` holds them (best effort: an unreleased lease expires by its TTL)."""
        self._r.lwt_many([self._r.bind(_RELEASE, (model_id, group, p, owner)) for p in parts], op="coordination")

    def owner(self, model_id: uuid.UUID, group: str, part: int, *, serial: bool = False) -> str | None:
        row = self._r.one(_OWNER, (model_id, group, part), op="coordination", serial=serial)
        return row["owner"] if row else None

    # -- commit turns --------------------------------------------------------------------------------------
    def take_turn(self, model_id: uuid.UUID, holder: str, ttl_s: int) -> Cas:
        """Take the model's commit turn iff nobody holds it (it lapses after ``ttl_s``)."""
        return self._r.lwt_cql(_TURN_TAKE, (ttl_s, holder, model_id), op="coordination")

    def give_turn(self, model_id: uuid.UUID, holder: str) -> Cas:
        """Give the turn up iff ``holder`` still holds it."""
        return self._r.lwt_cql(_TURN_GIVE, (model_id, holder), op="coordination")

    def turn_holder(self, model_id: uuid.UUID) -> str | None:
        """Who holds the turn, by a plain read (a hint for when to try: the compare-and-set decides)."""
        row = self._r.one(_TURN_HOLDER, (model_id,), op="coordination")
        return row["holder"] if row else None

    def owners(self, model_id: uuid.UUID, group: str, parts: Sequence[int]) -> list[str | None]:
        per = self._r.many(_OWNER, [(model_id, group, p) for p in parts], op="coordination")
        return [rows[0]["owner"] if rows else None for rows in per]

    # -- the registry -------------------------------------------------------------------------------------
    def register(self, model_id: uuid.UUID, group: str, worker: str, host: str, pid: int, started_at: datetime,
                 heartbeat_at: datetime, partitions: list[int], events: int, batches: int, rate: float,
                 ttl_s: int, behind_at: datetime | None = None) -> None:
        self._r.write(_REGISTER, (model_id, group, worker, host, pid, started_at, heartbeat_at, partitions, events,
                                  batches, rate, behind_at, ttl_s), op="coordination")

    def unregister(self, model_id: uuid.UUID, group: str, worker: str) -> None:
        self._r.write(_UNREGISTER, (model_id, group, worker), op="coordination")

    def workers(self, model_id: uuid.UUID, group: str) -> list[Row]:
        return self._r.rows(_WORKERS, (model_id, group), op="coordination")

    # -- the shared learner state ---------------------------------------------------------------------------
    def learner_state(self, model_id: uuid.UUID, group: str, *, serial: bool = True) -> Row | None:
        return self._r.one(_STATE, (model_id, group), op="coordination", serial=serial)

    def init_learner_state(self, model_id: uuid.UUID, group: str, state: bytes) -> Cas:
        return self._r.lwt_cql(_STATE_INIT, (model_id, group, state), op="coordination")

    def update_learner_state(self, model_id: uuid.UUID, group: str, expected_seq: int, values: Sequence[Any]) -> Cas:
        """``values``: seq, state, last_batch, last_commit, events, batches, drifts, last_drift, loss,
        drift_score, lr_scale, updated_by; applied iff the row is still at ``expected_seq``."""
        return self._r.lwt_cql(_STATE_CAS, (*values, model_id, group, expected_seq), op="coordination")

    # -- the batch trace ----------------------------------------------------------------------------------
    def write_trace(self, values: Sequence[Any]) -> None:
        self._r.write(_TRACE, values, op="write_history")

    def traces(self, model_id: uuid.UUID, group: str, day: int) -> list[Row]:
        return self._r.rows(_TRACES, (model_id, group, day), op="read_history")
