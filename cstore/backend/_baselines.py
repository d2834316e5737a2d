"""The benchmarks' baselines (``cql/bench/``), in a keyspace of their own that cstore never uses otherwise:

* the original brief's design translated literally: one row per scalar parameter, one history row
  per scalar update (``model_parameters``, ``parameter_updates``);
* the raw driver's ceiling for feedback: one prepared INSERT per event (``feedback_raw``).
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cstore.backend._statements import Row, Runner

BASELINE_KEYSPACE = "cstore_bench_naive"

_SCALAR = "SELECT current_value, version FROM model_parameters WHERE model_id = ? AND parameter_id = ?"
_SCALARS_IN = "SELECT parameter_id, current_value FROM model_parameters WHERE model_id = ? AND parameter_id IN ?"
_SCALAR_WRITE = ("UPDATE model_parameters SET current_value = ?, version = ?, last_updated = ? "
                 "WHERE model_id = ? AND parameter_id = ?")
_SCALAR_HISTORY = ("INSERT INTO parameter_updates (id, model_id, parameter_id, old_value, new_value, update_type, "
                   "learning_rate, timestamp, source, metadata) VALUES (?, ?, ?, ?, ?, 'gradient', ?, ?, "
                   "'feedback', '{}')")
_RAW_EVENT = ("INSERT INTO feedback_raw (run, part, event_id, entity_id, label, kind, features) "
              "VALUES (?, ?, ?, ?, ?, ?, ?)")


class BaselineTables:
    """The statements of the baselines ``cstore bench`` measures cstore against."""

    def __init__(self, runner: Runner, concurrency: int = 64) -> None:
        self._r = runner
        self.concurrency = concurrency

    def read_scalars(self, model_id: uuid.UUID, param_ids: Sequence[str]) -> list[Row | None]:
        """``current_value, version`` of each scalar (one read each, concurrently), or None."""
        per = self._r.many(_SCALAR, [(model_id, p) for p in param_ids], op="read_model",
                           concurrency=self.concurrency)
        return [rows[0] if rows else None for rows in per]

    def read_scalars_in(self, model_id: uuid.UUID, param_ids: list[str]) -> list[Row]:
        """The scalars of one request with one ``SELECT … IN``."""
        return self._r.rows(_SCALARS_IN, (model_id, param_ids), op="read_model")

    def write_scalars(self, model_id: uuid.UUID, updates: Sequence[tuple[str, float, float, int]], lr: float,
                      now: datetime) -> None:
        """Per ``(param_id, old, new, new_version)``: an UPDATE of the scalar and a history INSERT."""
        stmts: list[tuple[Any, None]] = []
        for pid, old, new, version in updates:
            stmts.append((self._r.bind(_SCALAR_WRITE, (new, version, now, model_id, pid)), None))
            stmts.append((self._r.bind(_SCALAR_HISTORY, (uuid.uuid4(), model_id, pid, old, new, lr, now)), None))
        errors = self._r.run_outcomes(stmts, op="commit_chunk", concurrency=self.concurrency)
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def insert_events(self, rows: Sequence[tuple[Any, ...]]) -> list[BaseException | None]:
        """``(run, part, event_id, entity_id, label, kind, features)`` each; per row None once written,
        else the (translated) error."""
        return self._r.many_outcomes(_RAW_EVENT, rows, op="ingest_feedback", concurrency=self.concurrency)
