"""Snapshots (immutable copies with provenance) and rollback (a snapshot written back as a new head).

Nothing is rewritten in place: a rollback is a normal commit of every chunk, recorded in the
history as ``rollback``, so scorers pick it up like any other update.
"""
from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from cassandra.concurrent import execute_concurrent_with_args

from cstore.codec import chunk_context
from cstore.errors import ValidationError
from cstore.models import ModelInfo
from cstore.params import ChunkEngine, ChunkRow, CommitMeta


def actor() -> str:
    """Who is acting, for provenance: user@host."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Snapshot:
    version: int
    created_at: datetime
    created_by: str
    reason: str
    n_chunks: int

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created_at": self.created_at.isoformat() if self.created_at else None,
                "created_by": self.created_by, "reason": self.reason, "chunks": self.n_chunks}


class Versions:
    def __init__(self, session, engine: ChunkEngine) -> None:
        self.session = session
        self.engine = engine
        p = session.prepare
        self.q_put_chunk = p("INSERT INTO snapshot_chunks (model_id, version, chunk, param, data, chunk_version, op_id) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)")
        self.q_put_header = p("INSERT INTO snapshots (model_id, version, created_at, created_by, reason, n_chunks) "
                              "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self.q_list = p("SELECT * FROM snapshots WHERE model_id = ?")
        self.q_header = p("SELECT * FROM snapshots WHERE model_id = ? AND version = ?")
        self.q_chunk = p("SELECT param, data, chunk_version, op_id FROM snapshot_chunks "
                         "WHERE model_id = ? AND version = ? AND chunk = ?")

    def create(self, info: ModelInfo, chunks: dict[int, dict[str, ChunkRow]], reason: str) -> int:
        """Persist ``chunks`` (as read) as a snapshot; its id is the head version they add up to."""
        head = sum(r.version for rows in chunks.values() for r in rows.values())
        if self.session.execute(self.q_header, (info.model_id, head), execution_profile="read_model").one():
            return head  # the same head was snapshotted already: same content, nothing to do
        args = [(info.model_id, head, k, p,
                 self.engine.codec.encode(r.data, context=chunk_context(info.model_id, k, p)), r.version, r.op_id)
                for k, rows in chunks.items() for p, r in rows.items()]
        execute_concurrent_with_args(self.session, self.q_put_chunk, args, concurrency=32,
                                     raise_on_first_error=True, execution_profile="commit_chunk")
        self.session.execute(self.q_put_header, (info.model_id, head, datetime.now(timezone.utc), actor(),
                                                 reason, len(chunks)), execution_profile="coordination")
        return head

    def list(self, info: ModelInfo) -> list[Snapshot]:
        rows = self.session.execute(self.q_list, (info.model_id,), execution_profile="read_model")
        return [Snapshot(r["version"], r["created_at"], r["created_by"], r["reason"], r["n_chunks"]) for r in rows]

    def load(self, info: ModelInfo, version: int) -> dict[int, dict[str, ChunkRow]]:
        """The snapshot's chunks, decoded; a clear error when it does not exist."""
        if not self.session.execute(self.q_header, (info.model_id, version), execution_profile="read_model").one():
            known = ", ".join(str(s.version) for s in self.list(info)) or "none"
            raise ValidationError(f"model {info.name!r} has no snapshot at version {version}; "
                                  f"snapshots: {known} (see `cstore model versions {info.name}`)")
        args = [(info.model_id, version, k) for k in range(info.max_chunks)]
        results = execute_concurrent_with_args(self.session, self.q_chunk, args, concurrency=32,
                                               raise_on_first_error=True, execution_profile="read_model")
        out = {}
        for (_, _, k), (ok, rows) in zip(args, results):
            rows = [{"param": r["param"], "data": r["data"], "version": r["chunk_version"], "op_id": r["op_id"]}
                    for r in rows]
            out[k] = self.engine.decode_rows(info, k, rows)
        return out


def rollback_transform(snapshot: dict[int, dict[str, ChunkRow]]):
    """A transform that sets every parameter of a chunk to the snapshot's values."""
    def transform(chunk: int, rows):
        return {p: (snap.data.copy(), np.arange(len(snap.data), dtype=np.int32))
                for p, snap in snapshot[chunk].items() if p in rows}
    return transform


def rollback_meta(to_version: int, reason: str, meta_json) -> CommitMeta:
    return CommitMeta("rollback", None, "rollback", meta_json({"to_version": to_version, "reason": reason,
                                                                "by": actor()}))
