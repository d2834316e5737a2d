"""Additive atomic updates as increments: ``Store.add`` / ``Store.submit_adds``.

A gradient step (``new = old - lr * values``) commutes with every other one, so it needs no
compare-and-set: it is stored as an *increment* of each chunk it touches (:mod:`._increments`), which
readers add at once and the next commit of the chunk folds into a version. The :class:`Adder` takes
the adds of one process in rounds, as the :class:`~cstore.store.Committer` takes updates:

1. the history rows of every add of the round (the amounts each adds, its kind, learning rate, source and
   metadata; status ``increment``) go first, one request per history partition;
2. then every add's entries, up to ten chunk partitions a request (each add its own map key: its op id),
   and the scored parameters' to the increment feed, all at once;
3. each add whose chunks all hold it is acknowledged.

Two round trips per round whatever the number of adds in it, and no Paxos round: what lets one
process add thousands a second at a few milliseconds each. An add is exactly once: a chunk that
failed is written again (the same key at the same timestamp: idempotent) for ``commit_timeout_s``;
past that :class:`~cstore.errors.PartialCommit` carries the add's ``update_id`` (its op id), and
submitting the same add again with it writes only the same entries again. An add does not move the
chunks' versions (``UpdateResult.versions`` is empty): the commit that folds it does, and its history
row names it (``"increments"``). This process folds the chunks it has added to once they hold
``FOLD_EVERY`` of its adds or the oldest is ``FOLD_AFTER_S`` old, and when it closes, so that rows stay
small without any worker.
"""
from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cstore.backend import ParamTables
from cstore.core import (ChunkChange, ChunkCommit, CommitMeta, Increment, ModelInfo, UpdateResult, encode_sparse,
                         increment_context, uuid_now)
from cstore.errors import CstoreError, PartialCommit
from cstore.store._engine import ChunkEngine
from cstore.store._increments import op_timestamp_us
from cstore.store._increment_commit import store_entries
from cstore.store._stats import Totals

log = logging.getLogger("cstore.commit")

__all__ = ["FOLD_AFTER_S", "FOLD_EVERY", "Adder"]

FOLD_EVERY = 64      # adds of this process waiting on a chunk before it folds them ...
FOLD_AFTER_S = 2.0   # ... or the oldest this old
ROUND_MAX = 512      # adds in one round at most
THREADS = 1          # rounds in flight at once (two measured the same: the client's CPU is the limit)


@dataclass(eq=False)
class _Add:
    info: ModelInfo
    op_id: uuid.UUID
    amounts: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]  # chunk -> param -> (indices, amounts)
    meta: CommitMeta
    future: Future[UpdateResult] = field(default_factory=Future)


class Adder:
    """The adds of one process, written in rounds (see the module docstring)."""

    def __init__(self, engine: ChunkEngine, tables: ParamTables, fold: Callable[[ModelInfo, list[int]], object], *,
                 timeout_s: float) -> None:
        """``fold(info, chunks)``: how a fold is asked for (the store's :meth:`Committer.fold`)."""
        self._engine, self._tables = engine, tables
        self._fold = fold
        self._timeout_s = timeout_s
        self._pending: list[_Add] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._waiting: dict[tuple[uuid.UUID, int], tuple[ModelInfo, int, float]] = {}  # adds since the last fold
        self._refold: queue.SimpleQueue[tuple[ModelInfo, list[int]]] = queue.SimpleQueue()

    def submit(self, info: ModelInfo, changes: Mapping[str, Mapping[int, ChunkChange]], lr: float, meta: CommitMeta,
               update_id: uuid.UUID | None = None) -> Future[UpdateResult]:
        """Queue an add (``changes`` validated: ``split_update``); its future completes once every chunk
        holds it. ``update_id``: the op id of an add submitted before (a :class:`PartialCommit`'s)."""
        step = np.asarray(lr, dtype=info.dtype)
        amounts: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
        for param, per_chunk in changes.items():
            for k, c in per_chunk.items():  # -(lr * v): what `old - lr * v` adds, to the bit
                amounts[k][param] = (c.indices, -(step * c.values.astype(info.dtype)))
        add = _Add(info, update_id or uuid_now(), dict(amounts), meta)
        with self._cond:
            if self._closed:
                raise CstoreError("this store is closed; connect again")
            self._pending.append(add)
            if not self._threads:
                self._threads = [threading.Thread(target=self._run, name=f"cstore-adder-{i}", daemon=True)
                                 for i in range(THREADS)]
                for t in self._threads:
                    t.start()
            self._cond.notify()
        return add.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 5)
        with self._cond:  # what this process added and no commit folded yet: folded on the way out
            self._fold_due(force=True)

    # -- the adder thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait(FOLD_AFTER_S / 2)
                    self._fold_due(force=False)
                if self._closed and not self._pending:
                    return
                work, self._pending = self._pending[:ROUND_MAX], self._pending[ROUND_MAX:]
            by_model: dict[uuid.UUID, list[_Add]] = defaultdict(list)
            for add in work:
                by_model[add.info.model_id].append(add)
            for adds in by_model.values():
                try:
                    self._round(adds)
                except Exception as exc:  # a bug must fail the adds, never hang their callers
                    log.exception("add round failed")
                    for add in adds:
                        if not add.future.done():
                            add.future.set_exception(exc if isinstance(exc, CstoreError) else CstoreError(str(exc)))
            with self._cond:
                self._fold_due(force=False)

    def _round(self, adds: list[_Add]) -> None:
        info, engine = adds[0].info, self._engine
        entries: dict[int, list[tuple[uuid.UUID, int, str, bytes]]] = defaultdict(list)
        history: dict[int, list[tuple[object, ...]]] = defaultdict(list)
        for add in adds:
            ts, bucket = op_timestamp_us(add.op_id), engine.bucket_of(info, add.op_id)
            for k, by_param in add.amounts.items():
                for p, (idx, vals) in by_param.items():
                    sparse = encode_sparse(idx, vals)  # (once: the entry and its history row hold the same)
                    blob = engine.codec.encode_bytes(sparse, context=increment_context(info.model_id, k, p, add.op_id))
                    entries[k].append((add.op_id, ts, p, blob))
                    # (what decoding the entry gives: split_update's indices are unique and increasing)
                    engine.written.add(info.model_id, k, p, add.op_id, Increment(idx, vals, blob))
                    history[bucket].append(engine.increment_history_row(info, k, p, sparse, add.meta, add.op_id,
                                                                        bucket))
        for rows in history.values():  # history first: an add is never stored without its record
            engine.write_history(info, rows, status="increment")
        deadline = time.monotonic() + self._timeout_s
        stored: set[int] = set()
        failed = store_entries(self._tables, info, dict(entries), lambda: time.monotonic() > deadline, stored.add)
        now = time.monotonic()
        for add in adds:
            missing = sorted(set(add.amounts) - stored)
            result = UpdateResult(info.name, [ChunkCommit(k, add.op_id, {}, {}, sum(len(i) for i, _ in bp.values()))
                                              for k, bp in add.amounts.items() if k in stored])
            if not missing:
                add.future.set_result(result)
                continue
            cause = failed[missing[0]]
            add.future.set_exception(cause if not result.commits else PartialCommit(
                f"add {add.op_id} of model {info.name!r}: chunks {missing} not stored ({cause}); submit it again with "
                f"update_id={add.op_id} to store it there", result=result, failed=missing, cause=cause,
                update_id=add.op_id))
        per_chunk: dict[int, int] = defaultdict(int)
        for add in adds:
            for k in add.amounts:
                per_chunk[k] += 1
        with self._cond:
            for k in stored:
                _, n, since = self._waiting.get((info.model_id, k), (info, 0, now))
                self._waiting[(info.model_id, k)] = (info, n + per_chunk[k], since)
        engine.record(info, Totals(updates=len(adds), coords=sum(len(i) for a in adds for bp in a.amounts.values()
                                                                 for i, _ in bp.values())))

    def _fold_done(self, info: ModelInfo, chunks: list[int], fold: Future[Any]) -> None:
        """A fold that failed is asked for again at the next round (its adds are still pending)."""
        exc = fold.exception()
        if exc is None:
            return
        log.warning("folding the adds of model %r failed (%s); trying again", info.name, exc)
        # (called by the committer's thread, holding its lock: handed over without taking this one)
        self._refold.put((info, chunks))

    def _fold_due(self, *, force: bool) -> None:
        """Ask for folds of the chunks whose adds of this process are many or old enough (lock held)."""
        now = time.monotonic()
        while not self._refold.empty():  # folds that failed: due again
            info, chunks = self._refold.get()
            for k in chunks:
                self._waiting[(info.model_id, k)] = (info, FOLD_EVERY, now)
        due: dict[uuid.UUID, tuple[ModelInfo, list[int]]] = {}
        for (mid, k), (info, n, since) in list(self._waiting.items()):
            if force or n >= FOLD_EVERY or now - since >= FOLD_AFTER_S:
                due.setdefault(mid, (info, []))[1].append(k)
                del self._waiting[(mid, k)]
        for info, chunks in due.values():
            try:
                folded = self._fold(info, sorted(chunks))
            except Exception as exc:  # the next commit of those chunks folds them, or a later fold
                log.warning("folding the adds of model %r failed (%s)", info.name, exc)
                continue
            if isinstance(folded, Future):
                folded.add_done_callback(functools.partial(self._fold_done, info, sorted(chunks)))

