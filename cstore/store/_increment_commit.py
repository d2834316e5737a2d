"""Committing an increment: a learner's change stored in every chunk it touches without a Paxos round.

:meth:`Committer.increment <cstore.store.Committer.increment>` calls :func:`commit_increment` with the
amounts to add (per chunk and parameter: chunk-local coordinates and amounts; a learner computes them
from the rows it knows, :func:`amounts_of` from any transform). One increment per parameter row is
written to every touched chunk at once (:meth:`~cstore.backend.ParamTables.write_increments`), and the
scored parameters' entries to the increment feed in the same round trip. Nothing is read: the rows the
committer knows take the increment too (so its next batch learns on it), and a row it does not know is
left to be read when needed. A feed entry whose chunk write failed is written again with it, so it
names a stored increment unless its writer died in between (a scorer then holds it until that chunk's
next version shows it is not there).

All or nothing from the caller's view: the writes are idempotent (the same entry under the same op id
and timestamp), so the chunks that failed are written again until every chunk holds it; only a caller
that is stopping (``stop()`` true) gets a :class:`~cstore.errors.PartialCommit` instead, naming what was
stored (its process then dies or hands its lease over: the batch is learned again, as a bulk batch
whose worker dies between commit and checkpoint).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from cstore.backend import IncrementEntry, ParamTables
from cstore.core import (ChunkCommit, ChunkRow, CommitMeta, Increment, ModelInfo, Transform, UpdateResult,
                         ticks_of)
from cstore.errors import CstoreError, PartialCommit, TransientError, ValidationError
from cstore.store._engine import ChunkEngine
from cstore.store._increments import SCORED_PARAMS, encode_increment, op_timestamp_us, with_pending
from cstore.store._known import KnownRows
from cstore.store._stats import Totals

log = logging.getLogger("cstore.commit")

__all__ = ["FOLD_META", "Amounts", "Incrementer", "amounts_of", "commit_increment", "fold_transform",
           "store_entries"]

#: ``{chunk: {param: (chunk-local coordinates, amounts to add)}}``
Amounts = dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]

_RETRY_S = (0.01, 0.05, 0.2, 1.0)  # back-off between rewrites of the chunks that failed
#: What history records of a commit made only to fold increments (:meth:`Committer.fold`).
FOLD_META = CommitMeta("fold", None, "real_time", "{}")


def fold_transform(chunk: int, rows: Mapping[str, ChunkRow]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A transform that changes nothing but folds: every row with pending increments, as it reads."""
    return {p: (r.data, np.empty(0, np.int32)) for p, r in rows.items() if r.pending}


def amounts_of(transform: Transform, rows: Mapping[int, Mapping[str, ChunkRow]]) -> Amounts:
    """What ``transform`` changes in ``rows`` (every chunk of them), as amounts to add: ``new - old`` at the
    coordinates it touched."""
    out: Amounts = {}
    for k, by_param in rows.items():
        for p, (new, touched) in transform(k, by_param).items():
            t = np.unique(np.asarray(touched, np.int32))
            old = by_param[p].data
            out.setdefault(k, {})[p] = (t, (np.asarray(new, old.dtype)[t] - old[t]).astype(old.dtype))
    return out


def commit_increment(known: KnownRows, engine: ChunkEngine, tables: ParamTables, info: ModelInfo, amounts: Amounts,
                     *, op_id: uuid.UUID, stop: Callable[[], bool] = lambda: False
                     ) -> tuple[UpdateResult, Callable[[], None]]:
    """Store ``amounts`` as increment ``op_id`` (see the module docstring); invalid amounts are refused
    before anything is written. Returns what was stored and the bookkeeping still to do (the known rows
    taking the increment, the statistics: copies of whole rows), which the caller runs when it likes,
    before it next reads those rows."""
    entries: dict[int, dict[str, Increment]] = {}
    for k, by_param in amounts.items():
        for p, (idx, vals) in by_param.items():
            idx, vals = _checked(info, k, p, idx, vals)
            keep = vals != 0
            if keep.any():
                i, v = np.asarray(idx, np.int32)[keep], vals[keep]
                entries.setdefault(k, {})[p] = Increment(i, v, encode_increment(engine.codec, info, k, p, op_id, i, v))
    ts = op_timestamp_us(op_id)
    rows = {k: [(op_id, ts, p, inc.blob) for p, inc in by_param.items()] for k, by_param in entries.items()}
    result = UpdateResult(info.name)
    failed = store_entries(tables, info, rows, stop, lambda k: result.commits.append(
        _commit_of(known, info, k, entries[k], op_id)))
    if failed:
        cause = next(iter(failed.values()))
        raise _partial(info, op_id, result, failed, cause) if result.commits else cause

    def remember() -> None:
        for c in result.commits:
            _remember(known, info, c.chunk, entries[c.chunk], op_id, c.old_versions)
        engine.record(info, Totals(updates=1 if result.commits else 0, coords=result.coords,
                                   bytes_written=sum(c.bytes_written for c in result.commits)))
    return result, remember


class Incrementer:
    """A committer's increments: each stored at once (:func:`commit_increment`), its bookkeeping (the known
    rows taking it: copies of whole rows) on a thread of its own, off the caller's path, and finished
    before the committer reads those rows again (:meth:`settle`)."""

    def __init__(self, known: KnownRows, engine: ChunkEngine, tables: ParamTables) -> None:
        self._known, self._engine, self._tables = known, engine, tables
        self._books: ThreadPoolExecutor | None = None
        self._booked: Future[None] | None = None

    def increment(self, info: ModelInfo, amounts: Amounts, *, op_id: uuid.UUID,
                  stop: Callable[[], bool] = lambda: False) -> UpdateResult:
        self.settle()
        result, remember = commit_increment(self._known, self._engine, self._tables, info, amounts, op_id=op_id,
                                            stop=stop)
        if self._books is None:
            self._books = ThreadPoolExecutor(1, thread_name_prefix="cstore-increment-books")
        self._booked = self._books.submit(remember)
        return result

    def settle(self) -> None:
        """Wait for the last increment's bookkeeping."""
        if self._booked is not None:
            self._booked.result()

    def close(self) -> None:
        if self._books is not None:
            self._books.shutdown(wait=True)


def _checked(info: ModelInfo, k: int, p: str, idx: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` and ``vals`` as stored, or a :class:`ValidationError` saying what is wrong."""
    where = f"increment of model {info.name!r} parameter {p!r} chunk {k}"
    if p not in info.params or not 0 <= k < info.n_chunks(p):
        raise ValidationError(f"{where}: the model has no such parameter chunk (parameters: {', '.join(info.params)})")
    idx, raw = np.asarray(idx), np.asarray(vals)
    if idx.ndim != 1 or raw.shape != idx.shape or not np.issubdtype(idx.dtype, np.integer) \
            or not np.issubdtype(raw.dtype, np.number):
        raise ValidationError(f"{where}: needs a 1-d array of integer coordinates and as many numeric amounts")
    start, stop = info.chunk_bounds(p, k)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= stop - start):
        raise ValidationError(f"{where}: coordinates must be chunk-local, in [0, {stop - start})")
    cast = raw.astype(np.dtype(info.dtype))
    if not np.all(np.isfinite(cast)):
        raise ValidationError(f"{where}: amounts must be finite in {info.dtype}")
    return idx.astype(np.int32), cast


def _commit_of(known: KnownRows, info: ModelInfo, k: int, entries: dict[str, Increment],
               op_id: uuid.UUID) -> ChunkCommit:
    rows = known.get((info.model_id, k)) or {}
    versions = {p: rows[p].version for p in entries if p in rows}
    return ChunkCommit(k, op_id, versions, dict(versions), sum(int(inc.idx.size) for inc in entries.values()),
                       bytes_written=sum(len(inc.blob) for inc in entries.values()),
                       touched={p: inc.idx for p, inc in entries.items()})


def _remember(known: KnownRows, info: ModelInfo, k: int, entries: dict[str, Increment], op_id: uuid.UUID,
              versions: Mapping[str, int]) -> None:
    """Chunk ``k`` holds the increment now: so do its known rows (one copy of each touched row; again if
    another thread of the process replaced them meanwhile)."""
    while True:
        rows = known.get((info.model_id, k))
        if rows is None or not all(p in rows for p in entries) or all(op_id in rows[p].pending for p in entries):
            return
        if any(rows[p].version != versions.get(p) for p in entries):
            # A commit moved the rows since the increment was written: it may have folded it (read from the
            # store) or not; the store knows, so the rows are read again rather than guessed at.
            known.drop((info.model_id, k))
            return
        new_rows = dict(rows)
        for p, inc in entries.items():
            row = rows[p]
            pending = {**row.pending, op_id: inc}
            if all(ticks_of(op) < ticks_of(op_id) for op in row.pending):  # the newest: added last, as readers do
                data = row.data.copy()
                np.add.at(data, inc.idx, inc.vals)
            else:
                data = with_pending(row.base_data, pending)
            new_rows[p] = ChunkRow(p, data, row.version, row.op_id, row.deltas, row.delta_bytes, base=row.base_data,
                                   pending=pending)
        if known.replace((info.model_id, k), rows, new_rows):
            return


def store_entries(tables: ParamTables, info: ModelInfo, rows: dict[int, list[IncrementEntry]],
                  give_up: Callable[[], bool], stored: Callable[[int], object]) -> dict[int, CstoreError]:
    """Write increment entries (``{chunk: [(op, ts, param, entry)]}``) and the scored parameters' to the feed;
    the chunks that fail transiently are written again (idempotent) until they are stored or ``give_up()``.
    ``stored(chunk)`` is called as each chunk's entries are. Returns the chunks not stored and why."""
    feed = {k: [e for e in es if e[2] in SCORED_PARAMS] for k, es in rows.items()}
    left = dict(rows)
    attempt = 0
    while True:
        outcomes, fed = tables.write_increments(info.model_id, left, feed=feed)
        if fed is None:
            feed = {}
        for k in [k for k, err in outcomes.items() if err is None]:
            del left[k]
            stored(k)
        failed = {k: e for k, e in outcomes.items() if e is not None}
        if not left or any(not isinstance(e, TransientError) for e in failed.values()) or give_up():
            break
        log.warning("increments of model %r: chunks %s not stored (%s); writing them again", info.name,
                    sorted(left), next(iter(failed.values())))
        time.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
        attempt += 1
    if any(feed.values()):
        log.warning("increments of model %r are stored but not on the feed; scorers see them when their chunks "
                    "next move", info.name)
    return failed


def _partial(info: ModelInfo, op_id: uuid.UUID, result: UpdateResult, left: Mapping[int, object],
             cause: CstoreError) -> PartialCommit:
    return PartialCommit(f"increment {op_id} of model {info.name!r}: chunks {sorted(left)} not stored ({cause}); "
                         f"chunks {result.chunks} hold it", result=result, failed=sorted(left), cause=cause,
                         update_id=op_id)
