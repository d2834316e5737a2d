"""Snapshots (immutable copies with provenance) and rollback (a snapshot written back as a new head).

Nothing is rewritten in place: a rollback is a normal commit of every chunk, recorded in the
history as ``rollback``, so scorers pick it up like any other update.
"""
from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cstore.backend import ParamTables
from cstore.core import ChunkRow, CommitMeta, ModelInfo, Transform, chunk_context
from cstore.errors import ValidationError
from cstore.store._engine import ChunkEngine


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
    lineage: Mapping[str, Any] | None = None  # what produced it (see _lineage.py); None before migration 007

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created_at": self.created_at.isoformat() if self.created_at else None,
                "created_by": self.created_by, "reason": self.reason, "chunks": self.n_chunks,
                "lineage": self.lineage}


class Snapshots:
    """Immutable copies of a model's chunks, with provenance."""

    def __init__(self, tables: ParamTables, engine: ChunkEngine) -> None:
        self._tables = tables
        self._engine = engine

    def create(self, info: ModelInfo, chunks: Mapping[int, Mapping[str, ChunkRow]], reason: str,
               lineage: Mapping[str, Any] | None = None) -> int:
        """Persist ``chunks`` (as read) as a snapshot; its id is the head version they add up to. A row's
        pending increments are not in it (``base_data``): a snapshot holds what its chunk versions hold, so
        the same versions are the same content, and a replay from it adds the head's pending increments
        once."""
        head = sum(r.version for rows in chunks.values() for r in rows.values())
        if self._tables.snapshot(info.model_id, head):
            return head  # the same head was snapshotted already: same content, nothing to do
        codec = self._engine.codec
        self._tables.put_snapshot_chunks([(info.model_id, head, k, p,
                                           codec.encode(r.base_data, context=chunk_context(info.model_id, k, p)),
                                           r.version, r.op_id)
                                          for k, rows in chunks.items() for p, r in rows.items()])
        self._tables.put_snapshot(info.model_id, head, datetime.now(UTC), actor(), reason, len(chunks),
                                  json.dumps(lineage, sort_keys=True, default=str) if lineage is not None else None)
        return head

    def list(self, info: ModelInfo) -> list[Snapshot]:
        return [Snapshot(r["version"], r["created_at"], r["created_by"], r["reason"], r["n_chunks"],
                         json.loads(r["lineage"]) if r.get("lineage") else None)
                for r in self._tables.snapshots(info.model_id)]

    def load(self, info: ModelInfo, version: int) -> dict[int, dict[str, ChunkRow]]:
        """The snapshot's chunks, decoded; a clear error when it does not exist."""
        if not self._tables.snapshot(info.model_id, version):
            known = ", ".join(str(s.version) for s in self.list(info)) or "none"
            raise ValidationError(f"model {info.name!r} has no snapshot at version {version}; "
                                  f"snapshots: {known} (see `cstore model versions {info.name}`)")
        ks = list(range(info.max_chunks))
        out = {}
        for k, rows in zip(ks, self._tables.snapshot_chunks(info.model_id, version, ks)):
            stored = [{"param": r["param"], "data": r["data"], "version": r["chunk_version"], "op_id": r["op_id"]}
                      for r in rows]
            out[k] = self._engine.decode(info, k, stored)
        return out


def rollback_transform(snapshot: Mapping[int, Mapping[str, ChunkRow]]) -> Transform:
    """A transform that sets every parameter of a chunk to the snapshot's values."""
    def transform(chunk: int, rows: Mapping[str, ChunkRow]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {p: (snap.data.copy(), np.arange(len(snap.data), dtype=np.int32))
                for p, snap in snapshot[chunk].items() if p in rows}
    return transform


def rollback_meta(to_version: int, reason: str, meta_json: Callable[[Any], str]) -> CommitMeta:
    return CommitMeta("rollback", None, "rollback", meta_json({"to_version": to_version, "reason": reason,
                                                                "by": actor()}))
