"""The update history: listing, following the commit chain, and replay.

History rows are written *before* each compare-and-set, so every committed chunk version has a
row; rows of attempts that lost are marked ``aborted`` (or, if the writer died, simply never
joined the chain). The truth is the chain: from a chunk's current ``op_id`` follow
``prev_op_id`` backwards. Replaying the chain's post-images onto a snapshot reproduces the
model bit for bit.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cstore.backend import ParamTables
from cstore.core import (SEALED_TEXT_PREFIX, TICKS_PER_S, CodecPipeline, ModelInfo, decode_sparse, history_context,
                         max_uuid_at, metadata_context, min_uuid_at, op_time, open_text)
from cstore.errors import CorruptData, KeyUnavailable


@dataclass(frozen=True)
class HistoryRow:
    op_id: uuid.UUID
    time: datetime
    param: str
    chunk: int
    old_version: int
    new_version: int
    prev_op_id: uuid.UUID | None
    update_type: str
    learning_rate: float | None
    source: str
    metadata: dict[str, Any]
    status: str
    delta: bytes

    @classmethod
    def from_row(cls, r: Mapping[str, Any], codec: CodecPipeline | None = None) -> HistoryRow:
        """A stored row; ``codec`` opens its delta (decrypts it when encryption at rest is on)."""
        delta = r["delta"]
        meta = r["metadata"] or "{}"
        if codec is not None:
            if delta is not None:
                delta = codec.decode_bytes(delta, context=history_context(r["model_id"], r["chunk"], r["param"],
                                                                          r["op_id"]), what="history delta")
            meta = open_text(codec, meta, metadata_context(r["model_id"], r["chunk"], r["param"], r["op_id"]),
                             "history metadata")
        elif meta.startswith(SEALED_TEXT_PREFIX):
            raise KeyUnavailable("history metadata is encrypted but no encryption key is configured; set "
                                 "CSTORE_ENCRYPTION_KEY or CSTORE_ENCRYPTION_KEY_FILE to read it")
        return cls(r["op_id"], datetime.fromtimestamp(op_time(r["op_id"]), UTC), r["param"], r["chunk"],
                   r["old_version"], r["new_version"], r["prev_op_id"], r["update_type"], r["learning_rate"],
                   r["source"], json.loads(meta), r["status"], delta)

    def to_dict(self) -> dict[str, Any]:
        idx, _ = decode_sparse(self.delta)
        return {"time": self.time.isoformat(), "op_id": str(self.op_id), "param": self.param, "chunk": self.chunk,
                "old_version": self.old_version, "new_version": self.new_version, "update_type": self.update_type,
                "learning_rate": self.learning_rate, "source": self.source, "coords": int(len(idx)),
                "metadata": self.metadata}


class HistoryReader:
    """Reads history partitions of one model between two times."""

    def __init__(self, tables: ParamTables, bucket_s: int, ttl_s: int, codec: CodecPipeline | None = None) -> None:
        self._tables = tables
        self.bucket_s = bucket_s
        self.ttl_s = ttl_s
        self.codec = codec

    def rows(self, info: ModelInfo, since: float | None = None, until: float | None = None) -> list[HistoryRow]:
        """Every history row (including aborted attempts) in [since, until], oldest first."""
        until = time.time() + 1 if until is None else until
        since = max(until - self.ttl_s, 0) if since is None else since
        bucket_s = info.history_bucket_seconds(self.bucket_s)
        first, last = int(since) // bucket_s, int(until) // bucket_s
        buckets: Iterable[int] = range(first, last + 1)
        if info.history_indexed:  # only the buckets writers recorded (migration 006), not every minute of a week
            days = range(first * bucket_s // 86400, last * bucket_s // 86400 + 1)
            buckets = [b for b in self._tables.history_buckets(info.model_id, days) if first <= b <= last]
        lo, hi = min_uuid_at(int(since * TICKS_PER_S)), max_uuid_at(int(until * TICKS_PER_S))
        out = [HistoryRow.from_row(r, self.codec) for r in self._tables.history(info.model_id, buckets, lo, hi)]
        out.sort(key=lambda h: (op_time(h.op_id), h.op_id.bytes, h.param))
        return out

    def lookup(self, info: ModelInfo, op_id: uuid.UUID, param: str) -> HistoryRow | None:
        row = self._tables.history_row(info.model_id, info.history_bucket_of(op_id, self.bucket_s), op_id, param)
        return HistoryRow.from_row(row, self.codec) if row else None

    def heads(self, info: ModelInfo) -> dict[tuple[str, int], tuple[int, uuid.UUID]]:
        """(param, chunk) → (version, op_id) from the chunk-version index."""
        return {(r["param"], r["chunk"]): (r["version"], r["op_id"]) for r in self._tables.index(info.model_id)}

    def committed(self, info: ModelInfo, since: float | None = None, until: float | None = None,
                  param: str | None = None) -> list[HistoryRow]:
        """Only rows on a chunk's commit chain (what really happened), oldest first."""
        rows = self.rows(info, since=since)
        by_op = {(h.op_id, h.param): h for h in rows}
        keep: set[tuple[uuid.UUID, str]] = set()
        for (p, _chunk), (_, head_op) in self.heads(info).items():
            op: uuid.UUID | None = head_op
            while op is not None and (op, p) in by_op:
                keep.add((op, p))
                op = by_op[(op, p)].prev_op_id
        until = time.time() + 1 if until is None else until
        return [h for h in rows if (h.op_id, h.param) in keep and op_time(h.op_id) <= until
                and (param is None or h.param == param)]


def chain_between(by_op: dict[tuple[uuid.UUID, str], HistoryRow], param: str, head_op: uuid.UUID | None,
                  base_op: uuid.UUID | None) -> list[HistoryRow]:
    """The commits from ``base_op`` (exclusive) to ``head_op`` (inclusive), oldest first."""
    chain = []
    op = head_op
    while op != base_op:
        row = by_op.get((op, param)) if op is not None else None
        if row is None:
            raise CorruptData(f"history chain of {param!r} is broken at op {op} (expired by TTL, or the "
                              f"snapshot is older than the history kept); cannot replay")
        chain.append(row)
        op = row.prev_op_id
    chain.reverse()
    return chain


def replay_chunk(base: np.ndarray, chain: Iterable[HistoryRow]) -> np.ndarray:
    """Apply each commit's post-image in order: bit-exact by construction."""
    out = base.copy()
    for h in chain:
        idx, values = decode_sparse(h.delta)
        out[idx] = values
    return out


def op_in_chain(tables: ParamTables, bucket_of: Callable[[uuid.UUID], int], info: ModelInfo, param: str,
                chunk: int, head_op: uuid.UUID, target_version: int, op_id: uuid.UUID) -> bool | None:
    """Is ``op_id`` the commit that produced ``target_version``? None when the chain cannot be followed."""
    op = head_op
    for _ in range(10_000):
        row = tables.history_link(info.model_id, bucket_of(op), op, param)
        if row is None:
            return None
        if row["new_version"] == target_version:
            return op == op_id
        if row["new_version"] < target_version or row["prev_op_id"] is None:
            return None
        op = row["prev_op_id"]
    return None
