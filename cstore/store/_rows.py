"""Stored chunk rows and what a commit writes to them: a full copy, or a delta entry.

A stored row holds ``data`` at ``base_version`` and the delta entries above it (migration 005), each
the new values of the coordinates one commit touched, keyed by the version that commit produced.
:func:`decode_row` rebuilds the chunk at ``version`` and checks that the entries are exactly
``base_version + 1 … version`` (so a lost or foreign entry is caught, never silently skipped).

:func:`plan_write` chooses, per parameter of a commit, between

* a **delta** entry: the compare-and-set carries only the touched coordinates, so an atomic update of
  one float costs a Paxos round on tens of bytes, not on the whole chunk; and
* a **full** write of the chunk, which also folds (drops) the entries waiting on the row:

A row may also hold pending increments (:mod:`cstore.store._increments`): readers add them (the
row's ``data``; ``base`` keeps it without them), and every write folds the ones it saw: its
post-image covers their coordinates too, and it deletes them (a conditional write expects exactly
them, see ``ChunkWrite.pending``).

a commit writes a delta when it touches few coordinates (its encoded entry is at most 1/16 of the raw
chunk) and the row has fewer than :data:`MAX_DELTAS` entries adding up to at most 1/4 of the raw
chunk; otherwise it writes the chunk whole. So a row never carries more than a quarter of its size in
entries, readers apply at most :data:`MAX_DELTAS` small patches, and micro-batches that touch much of
a chunk keep writing it whole, as before. Blind writes (the eventual profile) are always full: an
entry keyed by a version two blind writers both claim would mix their chunks.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from cstore.backend import ChunkWrite
from cstore.core import (ChunkRow, CodecPipeline, ModelInfo, chunk_context, decode_sparse, delta_context,
                         encode_sparse)
from cstore.errors import CorruptData
from cstore.store._increments import WrittenIncrements, decode_pending, with_pending

__all__ = ["MAX_DELTAS", "advance_row", "decode_row", "plan_write", "rows_after"]

MAX_DELTAS = 32
_DELTA_SHARE = 16   # a delta entry may be at most 1/16 of the raw chunk ...
_PENDING_SHARE = 4  # ... and the entries waiting on a row at most 1/4 of it


def decode_row(codec: CodecPipeline, info: ModelInfo, chunk: int, r: Mapping[str, Any],
               written: WrittenIncrements | None = None) -> ChunkRow:
    """One stored parameter row as a :class:`ChunkRow` at its ``version``: decrypted, checked, patched."""
    param, version = r["param"], r["version"]
    start, stop = info.chunk_bounds(param, chunk)
    where = f"model {info.name!r} parameter {param!r} chunk {chunk} (version {version})"
    try:
        data = codec.decode(r["data"], expect_dtype=info.dtype, expect_shape=[stop - start],
                            context=chunk_context(info.model_id, chunk, param))
    except CorruptData as exc:
        raise CorruptData(f"{where}: {exc}", model=info.name, param=param, chunk=chunk) from None
    base = r.get("base_version")
    entries = {v: blob for v, blob in (r.get("deltas") or {}).items() if base is None or v > base}
    if base is not None:
        _check_chain(entries, base, version, f"its copy at version {base}", where, info, param, chunk)
    if entries:
        data = _patched(codec, info, chunk, param, data.copy(), entries, where)
    return _with_increments(codec, info, chunk, r, ChunkRow(param, data, version, r["op_id"], len(entries),
                                                            sum(len(b) for b in entries.values())), None, written)


def _with_increments(codec: CodecPipeline, info: ModelInfo, chunk: int, r: Mapping[str, Any], row: ChunkRow,
                     held: ChunkRow | None = None, written: WrittenIncrements | None = None) -> ChunkRow:
    """``row`` (its data the base at its version) with the stored row's pending increments added
    (those ``held`` has already decoded, or this process ``written``, are reused)."""
    pending = decode_pending(codec, info, chunk, row.param, r.get("pending"), held.pending if held else None,
                             written)
    if not pending:
        return row
    return ChunkRow(row.param, with_pending(row.data, pending), row.version, row.op_id, row.deltas, row.delta_bytes,
                    base=row.data, pending=pending)


def advance_row(codec: CodecPipeline, info: ModelInfo, chunk: int, held: ChunkRow,
                r: Mapping[str, Any], written: WrittenIncrements | None = None) -> ChunkRow | None:
    """``held`` brought to the version of the stored row ``r`` (a :meth:`ParamTables.chunk_tails` row) by
    applying the delta entries above ``held.version``, bit for bit what a whole read gives
    (an entry sets values, it does not add them), and the row's pending increments. None when a full
    write came between (its copy is what the reader lacks), or when an increment ``held`` has is not in
    the row at the same version (a replica behind): read that row whole. ``held`` is returned as it is
    when the row has not moved, or when ``r`` is older (a replica behind at a weak consistency level)."""
    param, version, base = held.param, r["version"], r.get("base_version")
    stored_pending = r.get("pending") or {}
    if version < held.version or (version == held.version and set(stored_pending) == set(held.pending)
                                  and all(held.pending[op].blob == blob for op, blob in stored_pending.items())):
        return held
    if version == held.version:  # only increments arrived
        if not set(held.pending) <= set(stored_pending):
            return None
        same = ChunkRow(param, held.base_data, version, held.op_id, held.deltas, held.delta_bytes)
        return _with_increments(codec, info, chunk, r, same, held, written)
    if base is None or base > held.version:
        return None
    where = f"model {info.name!r} parameter {param!r} chunk {chunk} (version {version})"
    waiting = {v: blob for v, blob in (r.get("deltas") or {}).items() if v > base}
    entries = {v: blob for v, blob in waiting.items() if v > held.version}
    _check_chain(entries, held.version, version, f"version {held.version}", where, info, param, chunk)
    data = _patched(codec, info, chunk, param, held.base_data.copy(), entries, where)
    row = ChunkRow(param, data, version, r["op_id"], len(waiting), sum(len(b) for b in waiting.values()))
    return _with_increments(codec, info, chunk, r, row, held, written)


def _check_chain(entries: Mapping[int, bytes], start: int, version: int, origin: str, where: str, info: ModelInfo,
                 param: str, chunk: int) -> None:
    """Raise unless ``entries`` are exactly versions ``start + 1 … version`` (a lost or foreign entry is
    caught, never silently skipped); ``origin`` names what they should lead from."""
    if sorted(entries) != list(range(start + 1, version + 1)):
        raise CorruptData(f"{where}: its delta entries {sorted(entries)} do not lead from {origin} to version "
                          f"{version}; the row was damaged or written outside cstore: restore the model from a "
                          f"snapshot", model=info.name, param=param, chunk=chunk)


def _patched(codec: CodecPipeline, info: ModelInfo, chunk: int, param: str, data: np.ndarray,
             entries: Mapping[int, bytes], where: str) -> np.ndarray:
    """``data`` (a private copy) with ``entries`` applied in version order, each checked."""
    for v in sorted(entries):
        try:
            idx, vals = decode_sparse(codec.decode_bytes(entries[v], context=delta_context(info.model_id, chunk,
                                                                                            param, v)))
        except CorruptData as exc:
            raise CorruptData(f"{where}: delta entry {v}: {exc}", model=info.name, param=param, chunk=chunk) from None
        if vals.dtype != data.dtype or (idx.size and (int(idx.min()) < 0 or int(idx.max()) >= data.size)):
            raise CorruptData(f"{where}: delta entry {v} holds {vals.dtype} values or indices outside the chunk",
                              model=info.name, param=param, chunk=chunk)
        data[idx] = vals
    return data


def plan_write(codec: CodecPipeline, info: ModelInfo, chunk: int, row: ChunkRow, new: np.ndarray,
               touched: np.ndarray, *, conditional: bool) -> tuple[ChunkWrite, bytes]:
    """The write of one parameter row for a commit, and the sparse post-image the history records."""
    touched = np.asarray(touched, dtype=np.int32)
    if row.pending:  # the increments it folds: their coordinates' new values are part of its post-image
        touched = np.union1d(touched, np.concatenate([inc.idx for inc in row.pending.values()])).astype(np.int32)
    folds = {op: inc.blob for op, inc in row.pending.items()}
    sparse = encode_sparse(touched, new[touched])
    raw = new.nbytes
    version = row.version + 1
    small = conditional and len(touched) * new.itemsize * _DELTA_SHARE <= raw
    if small:
        delta = codec.encode_bytes(sparse, context=delta_context(info.model_id, chunk, row.param, version))
        if (row.deltas < MAX_DELTAS and len(delta) * _DELTA_SHARE <= raw
                and (row.delta_bytes + len(delta)) * _PENDING_SHARE <= raw):
            return ChunkWrite(row.version, row.version - row.deltas, delta=delta, pending=folds), sparse
    data = codec.encode(new, context=chunk_context(info.model_id, chunk, row.param))
    return ChunkWrite(row.version, version, data=data, fold=row.deltas > 0, pending=folds), sparse


def rows_after(new: Mapping[str, ChunkRow], writes: Mapping[str, ChunkWrite], op_id: uuid.UUID) -> dict[str, ChunkRow]:
    """The stored rows once ``writes`` (planned by :func:`plan_write`) committed ``new`` under ``op_id``."""
    out = {}
    for p, r in new.items():
        w = writes.get(p)
        if w is None:
            out[p] = r
        elif w.data is not None:
            out[p] = ChunkRow(p, r.data, r.version + 1, op_id)
        else:
            out[p] = ChunkRow(p, r.data, r.version + 1, op_id, r.deltas + 1, r.delta_bytes + w.nbytes)
    return out
