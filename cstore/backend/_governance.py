"""Governance's tables (``cql/007_governance.cql``): aliases with their guards, the guards' online
metrics per worker, and the audit trail. Alias moves are compare-and-sets on ``rev``.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from cstore.backend._statements import Cas, Row, Runner

_ALIAS_COLUMNS = "alias, rev, pinned_version, guard, baseline, guard_state, moved_at, moved_by, reason"
_ALIASES = f"SELECT {_ALIAS_COLUMNS} FROM model_aliases WHERE model_id = ?"
_ALIAS = f"SELECT {_ALIAS_COLUMNS} FROM model_aliases WHERE model_id = ? AND alias = ?"
_ALIAS_CREATE = ("INSERT INTO model_aliases (model_id, alias, rev, pinned_version, guard, baseline, guard_state, "
                 "moved_at, moved_by, reason) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
_ALIAS_MOVE = ("UPDATE model_aliases SET rev = ?, pinned_version = ?, guard = ?, baseline = ?, guard_state = ?, "
               "moved_at = ?, moved_by = ?, reason = ? WHERE model_id = ? AND alias = ? IF rev = ?")
_ALIAS_DELETE = "DELETE FROM model_aliases WHERE model_id = ? AND alias = ? IF rev = ?"
_METRICS_WRITE = ("INSERT INTO online_metrics (model_id, alias, worker_id, baseline, labels, positives, head_log_loss, "
                  "base_log_loss, head_auc, base_auc, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_METRICS = "SELECT * FROM online_metrics WHERE model_id = ?"
_AUDIT_WRITE = ("INSERT INTO audit_log (model, at, action, actor, role, from_value, to_value, reason, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_AUDIT = "SELECT * FROM audit_log WHERE model = ? LIMIT ?"


class GovernanceTables:
    """Every statement of aliases, online metrics and the audit trail."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    @property
    def role(self) -> str | None:
        """The Cassandra role this connection authenticates as (None without authentication)."""
        return self._r.config.username

    # -- aliases ------------------------------------------------------------------------------------------
    def aliases(self, model_id: uuid.UUID) -> list[Row]:
        return self._r.rows(_ALIASES, (model_id,), op="read_model")

    def alias(self, model_id: uuid.UUID, alias: str, *, serial: bool = False,
              timeout: float | None = None) -> Row | None:
        return self._r.one(_ALIAS, (model_id, alias), op="read_model", serial=serial, timeout=timeout)

    def create_alias(self, model_id: uuid.UUID, alias: str, pinned: int | None, guard: str | None,
                     baseline: int | None, guard_state: str | None, at: datetime, by: str, reason: str) -> Cas:
        return self._r.lwt_cql(_ALIAS_CREATE, (model_id, alias, pinned, guard, baseline, guard_state, at, by, reason),
                               op="coordination")

    def move_alias(self, model_id: uuid.UUID, alias: str, rev: int, pinned: int | None, guard: str | None,
                   baseline: int | None, guard_state: str | None, at: datetime, by: str, reason: str) -> Cas:
        """Move the alias iff it is still at revision ``rev`` (it becomes ``rev + 1``)."""
        return self._r.lwt_cql(_ALIAS_MOVE, (rev + 1, pinned, guard, baseline, guard_state, at, by, reason,
                                             model_id, alias, rev), op="coordination")

    def delete_alias(self, model_id: uuid.UUID, alias: str, rev: int) -> Cas:
        return self._r.lwt_cql(_ALIAS_DELETE, (model_id, alias, rev), op="coordination")

    # -- online metrics -----------------------------------------------------------------------------------
    def write_metrics(self, model_id: uuid.UUID, alias: str, worker_id: str, baseline: int, labels: int,
                      positives: int, head_log_loss: float | None, base_log_loss: float | None,
                      head_auc: float | None, base_auc: float | None, at: datetime) -> None:
        self._r.rows(_METRICS_WRITE, (model_id, alias, worker_id, baseline, labels, positives, head_log_loss,
                                      base_log_loss, head_auc, base_auc, at), op="ingest_feedback")

    def metrics(self, model_id: uuid.UUID) -> list[Row]:
        return self._r.rows(_METRICS, (model_id,), op="read_model")

    # -- audit --------------------------------------------------------------------------------------------
    def record(self, model: str, at: uuid.UUID, action: str, actor: str, from_value: str | None,
               to_value: str | None, reason: str | None, details_json: str | None) -> None:
        self._r.rows(_AUDIT_WRITE, (model, at, action, actor, self.role, from_value, to_value, reason, details_json),
                     op="coordination")

    def audit(self, model: str, limit: int) -> list[Row]:
        return self._r.rows(_AUDIT, (model, limit), op="read_model")

