"""Increments: additive changes a row holds beside its versions until the next commit folds them.

A critical label must reach every scorer in milliseconds. A compare-and-set of the chunks it touches
costs a Paxos round per chunk, and every bulk micro-batch of the model touches the same chunks, so
the two refuse each other and the label waits behind the batch. An *increment* takes neither: the
learner adds its change (``new - old`` at the touched coordinates, for every parameter: weights and
optimizer state alike) to the rows as an entry of their ``pending`` map, keyed by its op id, with a
plain write (migration 010). Then it writes the scored parameters' entries to the *increment feed*,
which scorers poll beside the head counter and apply at once, without reading a chunk.

What keeps this exact:

* a reader adds a row's pending increments to it (:func:`with_pending`, in op-id time order, so
  every reader gets the same bits), and :class:`~cstore.core.ChunkRow` carries them (``base`` and
  ``pending``), so a commit computed on the row includes them;
* the next commit of the row that read them folds them: its new values include theirs and it deletes
  their keys, so each is counted once. One that lands after the commit read the row stays pending, on
  top of the new values (increments add, they do not set), until a later commit folds it. The
  deletion is stamped later than the entries it folds (each entry is written at its own op time, and
  the commit read it before its round began), so a late copy of a folded entry stays deleted;
* increments commute with everything: a bulk commit folds them on top of its own change, an atomic
  update's transform sees them. What an increment gives up is only what any asynchronous learner
  does: its amounts were computed on the rows its learner held, perhaps one bulk batch old.

History records an increment when a commit folds it (that commit's post-image holds its coordinates);
until then it is in its rows, where every reader sees it. ``cstore.store.Store.replay`` adds the
head's pending increments to the replayed versions, as a read does.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from cstore.backend import FEED_BUCKET_S
from cstore.core import (CodecPipeline, Increment, ModelInfo, decode_sparse, encode_sparse,
                         increment_context, ticks_of)
from cstore.errors import CorruptData

__all__ = ["FEED_BUCKET_S", "SCORED_PARAMS", "WrittenIncrements", "decode_increment", "decode_pending",
           "encode_increment", "op_timestamp_us", "with_pending"]

#: The parameters a scorer needs (optimizer state is never fetched); only they go to the feed.
SCORED_PARAMS = ("weights", "bias")


def op_timestamp_us(op_id: uuid.UUID) -> int:
    """The write timestamp of an increment: its op id's time, in microseconds since 1970 (what Cassandra's
    own timestamps count), so that rewriting the same entry never outlives its fold."""
    return ticks_of(op_id) // 10


def _order(op_id: uuid.UUID) -> tuple[int, int]:
    return ticks_of(op_id), op_id.int


def with_pending(base: np.ndarray, pending: Mapping[uuid.UUID, Increment]) -> np.ndarray:
    """``base`` with ``pending`` added (a new array), in op-id time order: every reader, whatever order
    it learned of the increments in, computes the same bits.

    >>> inc = lambda i, v: Increment(np.array(i, np.int32), np.array(v, np.float32), b"")
    >>> a, b = uuid.UUID(int=1 << 80), uuid.UUID(int=2 << 80)
    >>> with_pending(np.zeros(3, np.float32), {b: inc([0, 2], [1, 1]), a: inc([2], [0.5])}).tolist()
    [1.0, 0.0, 1.5]
    """
    out = base.copy()
    for op in sorted(pending, key=_order):
        inc = pending[op]
        np.add.at(out, inc.idx, inc.vals)
    return out


def encode_increment(codec: CodecPipeline, info: ModelInfo, chunk: int, param: str, op_id: uuid.UUID,
                     idx: np.ndarray, vals: np.ndarray) -> bytes:
    """The stored entry of one increment of one row (sealed to its place like every blob)."""
    sparse = encode_sparse(np.asarray(idx, np.int32), np.asarray(vals, np.dtype(info.dtype)))
    return codec.encode_bytes(sparse, context=increment_context(info.model_id, chunk, param, op_id))


def decode_increment(codec: CodecPipeline, info: ModelInfo, chunk: int, param: str, op_id: uuid.UUID,
                     blob: bytes) -> Increment:
    """One stored entry, checked: the model's dtype, coordinates inside the chunk, finite amounts."""
    where = f"model {info.name!r} parameter {param!r} chunk {chunk}: increment {op_id}"
    try:
        idx, vals = decode_sparse(codec.decode_bytes(blob, context=increment_context(info.model_id, chunk, param,
                                                                                      op_id), what="increment"))
    except CorruptData as exc:
        raise CorruptData(f"{where}: {exc}", model=info.name, param=param, chunk=chunk) from None
    start, stop = info.chunk_bounds(param, chunk)
    # (decode_sparse checked the amounts are finite, as every decoded float array is)
    if (vals.dtype != np.dtype(info.dtype) or idx.shape != vals.shape
            or (idx.size and (int(idx.min()) < 0 or int(idx.max()) >= stop - start))):
        raise CorruptData(f"{where} holds {vals.dtype} values, non-finite amounts or coordinates outside the chunk; "
                          f"the row was damaged or written outside cstore", model=info.name, param=param, chunk=chunk)
    return Increment(idx.astype(np.int32, copy=False), vals, bytes(blob))


def decode_pending(codec: CodecPipeline, info: ModelInfo, chunk: int, param: str,
                   raw: Mapping[uuid.UUID, Any] | None, known: Mapping[uuid.UUID, Increment] | None = None,
                   written: WrittenIncrements | None = None) -> dict[uuid.UUID, Increment]:
    """A row's ``pending`` map decoded (entries already in ``known`` or ``written`` as stored are taken from
    there)."""
    known = known or {}
    if written is not None and raw:
        known = {**written.of(info.model_id, chunk, param, raw), **known}
    return {op: known[op] if op in known and known[op].blob == blob else
            decode_increment(codec, info, chunk, param, op, blob) for op, blob in (raw or {}).items()}



class WrittenIncrements:
    """The increments this process wrote, as it wrote them: a row read back holding one takes it from here
    instead of decoding its entry again (the fold of a thousand adds decoded a thousand entries, an eighth
    of an add's CPU). An entry is taken only if the stored bytes are the bytes written, so what comes back is
    exactly what decoding would give. Entries a row no longer holds (folded) are dropped when the row is
    read; the rest are bounded: past ``limit`` all are forgotten, and those rows are decoded.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._rows: dict[tuple[uuid.UUID, int, str], dict[uuid.UUID, Increment]] = {}
        self._n = 0
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, model_id: uuid.UUID, chunk: int, param: str, op_id: uuid.UUID, inc: Increment) -> None:
        with self._lock:
            if self._n >= self._limit:
                self._rows.clear()
                self._n = 0
            self._rows.setdefault((model_id, chunk, param), {})[op_id] = inc
            self._n += 1

    def of(self, model_id: uuid.UUID, chunk: int, param: str,
           stored: Mapping[uuid.UUID, Any]) -> dict[uuid.UUID, Increment]:
        """Those of ``stored`` (a row's pending map) written here with the same bytes; the row's others that
        this process wrote are forgotten (a fold deleted them)."""
        key = (model_id, chunk, param)
        with self._lock:
            mine = self._rows.get(key)
            if not mine:
                return {}
            out = {op: inc for op, inc in mine.items() if op in stored and stored[op] == inc.blob}
            gone = [op for op in mine if op not in stored]
            for op in gone:
                del mine[op]
            self._n -= len(gone)
            if not mine:
                del self._rows[key]
            return out
