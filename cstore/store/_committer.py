"""Group commit: the atomic updates of one process, committed in rounds.

``Store.apply_update(s)`` hands its change to the :class:`Committer`. A committer thread takes every
waiting update of a model whose chunks are free, claims those chunks, and commits them in one round:

1. the updates that touch the same chunk (same kind and metadata) are combined into one change
   (``_combine``), applied in arrival order to the chunk's known rows (``_known``: no read before
   the compare-and-set unless the chunk is unknown or another writer moved it);
2. the history rows of every chunk of the round go in one request (they share a partition);
3. every chunk's compare-and-set is sent at once — a delta entry when the change is small (``_rows``),
   so one float costs a Paxos round on tens of bytes;
4. the updates whose chunks are all committed are acknowledged; the round's index rows and the model's
   head counter follow through the announcer (``_announcer``), coalesced with other rounds.

Several threads run rounds at once on disjoint chunks (a chunk is claimed by one round at a time), so
a round waiting for Paxos does not hold up updates of other chunks. A refused compare-and-set (another
process won) retries the chunk in a later round, after a jittered back-off, on its known rows caught
up from the winner's delta entries (read whole only if the winner folded the row); transient errors
retry too. An update keeps retrying for ``commit_timeout_s`` before it
raises: :class:`~cstore.errors.ConflictError` or the transient error when nothing of it committed,
:class:`~cstore.errors.PartialCommit` when some of its chunks did.

**Exactly once across chunks.** An update that spans chunks has an ``update_id`` (its own, or one it
is given) and commits each chunk alone under an op id derived from it. Submitted again with the same
``update_id`` — the one a ``PartialCommit`` carries — it first looks up which of its chunks that op
already committed and commits only the others.
"""
from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime


from cstore.backend import Cas, ChunkWrite, ParamTables, wait_while
from cstore.core import ChunkCommit, ChunkRow, CommitMeta, ModelInfo, Transform, UpdateResult, uuid_now
from cstore.errors import ConflictError, CstoreError, PartialCommit, TransientError, UnknownOutcome
from cstore.store._announcer import Announcer
from cstore.store._combine import Change, Request, Round, combine, round_writes
from cstore.store._engine import ChunkEngine
from cstore.store._increment_commit import FOLD_META, Amounts, Incrementer, fold_transform
from cstore.store._known import (KnownRows, catch_up, catch_up_moved, chunk_op_id, committed, known_or_read,
                                 pending_since)
from cstore.store._rows import rows_after
from cstore.store._stats import Totals

log = logging.getLogger("cstore.commit")

__all__ = ["Committer"]

CONTENDED_S = 5.0  # after a conflict on a model, check its version index before each of its rounds this long
MAX_PENDING = 8192  # updates queued per process before submit() waits for room (each round scans the queue)
THREADS = 2  # rounds in flight at once (on disjoint chunks): more would split the waiting updates thinner


class Committer:
    """Commits the atomic updates of one process in rounds (see the module docstring)."""

    def __init__(self, engine: ChunkEngine, tables: ParamTables, *, timeout_s: float, urgent: bool = False,
                 share: Committer | None = None) -> None:
        """``urgent``: retry a refused chunk at once instead of after a jittered back-off (a critical
        lane: its commits are small and rare, and the bulk writer it lost to backs off itself), and
        announce on an announcer of its own, never queued behind a bulk batch's index rows.
        ``share``: a committer whose known rows this one uses too (one process's learners of a model)."""
        self._engine, self._tables = engine, tables
        self._announcer = Announcer(tables) if urgent else engine.announcer
        self._timeout_s, self._urgent = timeout_s, urgent
        self._known: KnownRows = KnownRows() if share is None else share._known
        self._pending: list[Request] = []
        self._claimed: set[tuple[uuid.UUID, int]] = set()
        self._not_before: dict[tuple[uuid.UUID, int], float] = {}
        self._streak: dict[tuple[uuid.UUID, int], int] = defaultdict(int)   # failed tries since the last commit
        self._refused: dict[tuple[uuid.UUID, int], int] = defaultdict(int)  # ... of which refused (conflicts)
        self._contended: dict[uuid.UUID, float] = {}  # model -> time of its last refused compare-and-set
        self._stale: set[tuple[uuid.UUID, int]] = set()  # known rows another writer moved (a refused CAS)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._increments = Incrementer(self._known, engine, tables)

    # -- callers --------------------------------------------------------------------------------------------
    def submit(self, info: ModelInfo, chunks: list[int], transform: Transform, meta: CommitMeta, *,
               lr: float | None, update_id: uuid.UUID | None = None,
               current: Mapping[int, Mapping[str, ChunkRow]] | None = None) -> Future[UpdateResult]:
        """Queue ``transform`` for ``chunks``; the future completes once every chunk is committed.

        ``current``: rows the caller has just read (a learner reads them for its gradient), used as the
        known rows of those chunks so that the round does not read them again.
        """
        for k, rows in (current or {}).items():
            if rows:
                self._known.offer((info.model_id, k), dict(rows))
        left = set(chunks)
        if update_id is not None:  # a re-submission, perhaps: skip the chunks this op committed already
            left = {k for k in left if not committed(self._engine, self._tables, info, k, chunk_op_id(update_id, k))}
        elif len(chunks) > 1:
            update_id = uuid_now()
        future: Future[UpdateResult] = Future()
        req = Request(info, transform, meta, lr, update_id, left, time.monotonic() + self._timeout_s, future,
                       UpdateResult(info.name))
        if not left:
            future.set_result(req.result)
            return future
        with self._cond:
            if self._closed:
                raise CstoreError("this store is closed; connect again")
            if len(self._pending) >= MAX_PENDING:
                self._wait_for_room()
                req.deadline = time.monotonic() + self._timeout_s  # its time starts once it is queued
            self._pending.append(req)
            if not self._threads:
                self._threads = [threading.Thread(target=self._run, name=f"cstore-committer-{i}", daemon=True)
                                 for i in range(THREADS)]
                for t in self._threads:
                    t.start()
            self._cond.notify()
        return future

    def _wait_for_room(self) -> None:
        """Back-pressure (lock held): who submits faster than the cluster commits waits here, so the queue
        (every round scans it) stays bounded; if it stays full for ``timeout_s``, nothing is queued."""
        if not wait_while(self._cond, lambda: len(self._pending) >= MAX_PENDING and not self._closed,
                          self._timeout_s, poll_s=0.05):
            raise TransientError(
                f"the commit queue of this process stayed full ({len(self._pending)} updates waiting) for "
                f"{self._timeout_s:.0f} s: the cluster is not keeping up; wait for the futures you hold "
                f"before submitting more, or raise commit_timeout_s (nothing of this update was written)")
        if self._closed:
            raise CstoreError("this store is closed; connect again")

    def close(self) -> None:
        self._increments.close()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 5)
        if self._announcer is not self._engine.announcer:
            self._announcer.close()

    # -- the committer threads ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                work = self._claim()
                while work is None:
                    if self._closed and not self._pending:
                        return
                    self._cond.wait(self._pause())
                    work = self._claim()
            try:
                self._commit_round(work)
            except Exception as exc:  # a bug must fail the updates, never hang their callers
                log.exception("commit round failed")
                with self._cond:
                    for reqs in work.chunks.values():
                        for req in reqs:
                            self._finish(req, exc)
            finally:
                with self._cond:
                    self._claimed.difference_update((work.info.model_id, k) for k in work.chunks)
                    self._cond.notify_all()

    def _pause(self) -> float:
        waits = [t - time.monotonic() for t in self._not_before.values()]
        return max(0.0005, min(waits)) if self._pending and waits else 0.05

    def _claim(self) -> Round | None:
        """The next round (lock held): per free, ready chunk of one model the updates it commits — alike
        updates combined, an update with an ``update_id`` alone. None when nothing can go now."""
        now = time.monotonic()
        for req in [r for r in self._pending if now > r.deadline and not self._in_flight(r)]:
            self._expire(req)  # (one whose chunk a round holds waits for that round: it may commit it)
        work: Round | None = None
        for req in self._pending:
            if work is not None and req.info.model_id != work.info.model_id:
                continue
            for k in sorted(req.left):
                key = (req.info.model_id, k)
                if key in self._claimed or self._not_before.get(key, 0.0) > now:
                    continue
                work = work or Round(req.info)
                group = work.chunks.get(k)
                if group is None:
                    work.chunks[k] = [req]
                elif req.update_id is None and group[0].update_id is None and group[0].meta == req.meta:
                    group.append(req)
        if work is not None:
            self._claimed.update((work.info.model_id, k) for k in work.chunks)
        return work

    def _in_flight(self, req: Request) -> bool:
        return any((req.info.model_id, k) in self._claimed for k in req.left)

    def _finish(self, req: Request, error: BaseException | None = None) -> None:
        """Complete an update (lock held): its result, or ``error`` (a PartialCommit if chunks committed)."""
        if req.future.done():
            return
        if req in self._pending:
            self._pending.remove(req)
        if error is None:
            req.future.set_result(req.result)
            return
        if req.result.commits:
            cause = error if isinstance(error, CstoreError) else CstoreError(str(error))
            error = PartialCommit(f"{error} (chunks {req.result.chunks} of update {req.update_id} were committed; "
                                  f"submit it again with update_id={req.update_id} once the cause is fixed, to "
                                  f"commit only chunks {sorted(req.left)})", result=req.result,
                                  failed=sorted(req.left), cause=cause, update_id=req.update_id)
        req.future.set_exception(error)

    def _expire(self, req: Request) -> None:
        k = min(req.left)
        why = (f"against concurrent writers ({req.conflicts} conflicts); lower the write rate on this chunk, use a "
               f"smaller chunk_size, or raise commit_timeout_s") if req.conflicts else (
               f"behind this process's other queued updates ({len(self._pending)} waiting); submit fewer at once "
               f"or raise commit_timeout_s")
        self._finish(req, req.error or ConflictError(
            f"model {req.info.name!r} chunk {k}: not committed within {self._timeout_s:.0f} s {why}",
            model=req.info.name, chunk=k, retries=req.conflicts))

    # -- one round ----------------------------------------------------------------------------------------------
    def _commit_round(self, work: Round) -> None:
        info, engine = work.info, self._engine
        rows = self._rows(info, work)
        changes: dict[int, Change] = {}
        final: dict[int, dict[str, ChunkRow]] = {}
        todo = [k for k in work.chunks if k in rows]
        while todo:  # an update that fails on one chunk of the round commits none of its others
            for k in todo:
                work.chunks[k] = [r for r in work.chunks[k] if not r.future.done()]
                combined = self._combine(info, k, rows[k], work.chunks[k])
                changes.pop(k, None)
                final.pop(k, None)
                if combined is not None:
                    changes[k], final[k] = combined
            todo = [k for k in changes if any(r.future.done() for r in work.chunks[k])]
        for k in rows:
            if k not in changes:  # nothing to change in this chunk (or every update of it failed)
                with self._cond:
                    for req in work.chunks[k]:
                        self._chunk_done(req, k, None)
        if not changes:
            return
        op_ids = {k: uuid_now() if (u := work.chunks[k][0].update_id) is None else chunk_op_id(u, k) for k in changes}
        writes, history = round_writes(engine, info, rows, changes, op_ids,
                                       {k: work.chunks[k][0].meta for k in changes})
        ready = set(changes)
        for per_chunk in history.values():  # the round's history rows: one request per (model, bucket)
            try:
                self._engine.write_history(info, [r for rs in per_chunk.values() for r in rs])
            except CstoreError as exc:  # nothing of these chunks was written: retry them (or give up) later
                ready.difference_update(per_chunk)
                for k in per_chunk:
                    self._retry_later(info, k, work.chunks[k], exc)
        outcomes: dict[int, Cas | CstoreError] = self._tables.write_chunks(
            info.model_id, {k: writes[k] for k in ready}, op_ids, datetime.now(UTC)) if ready else {}
        done: list[ChunkCommit] = []
        for k, outcome in outcomes.items():
            if isinstance(outcome, Cas) and outcome.applied is None:
                try:
                    outcome = Cas(engine.resolve(info, k, rows[k], changes[k], op_ids[k]))
                except UnknownOutcome as exc:
                    self._known.drop((info.model_id, k))
                    with self._cond:
                        for req in work.chunks[k]:
                            self._finish(req, exc)
                    continue
                except CstoreError as exc:
                    outcome = exc
            if isinstance(outcome, CstoreError):
                self._known.drop((info.model_id, k))
                self._retry_later(info, k, work.chunks[k], outcome)
            elif not outcome.applied:
                self._conflict(info, k, work.chunks[k], op_ids[k], changes[k])
            else:
                commit = self._applied(info, k, rows[k], final[k], writes[k], changes[k], op_ids[k])
                done.append(commit)
                with self._cond:
                    for req in work.chunks[k]:
                        self._chunk_done(req, k, commit)
        if done:  # acknowledged already: the index rows and the doorbell follow without holding the round up
            self._announcer.announce(info, [(p, c.chunk, v, c.op_id) for c in done for p, v in c.new_versions.items()])
            self._record(info, done, work)

    def rows(self, info: ModelInfo, chunks: list[int], *, fresh: bool = False,
             known: bool = False) -> dict[int, dict[str, ChunkRow]]:
        """Current rows of ``chunks``, for a learner's gradient: the known ones caught up with what the
        model's version index (one partition read) shows another writer has moved since, from its delta
        entries; the others read whole. ``fresh``: all of them caught up without asking the index (one
        round trip where the index would say most moved anyway); a few are read whole instead.
        ``known``: the known ones as they are (kept current by :meth:`refresh`), only the others read."""
        self._increments.settle()
        if fresh:
            catch_up(self._known, self._engine, info, chunks)
        elif not known:
            catch_up_moved(self._known, self._engine, self._tables, info)
        rows, errors = known_or_read(self._known, self._engine, info, chunks)
        if errors:
            raise next(iter(errors.values()))
        return rows

    def refresh(self, info: ModelInfo) -> dict[int, int]:
        """Catch the known rows of ``info`` up with what its version index shows moved (one partition read,
        and the moved rows' delta entries). Returns, per chunk whose known rows hold pending increments, the
        time (ticks) of its oldest one."""
        self._increments.settle()
        catch_up_moved(self._known, self._engine, self._tables, info)
        known_or_read(self._known, self._engine, info, list(range(info.max_chunks)))  # (rows a fold passed)
        return pending_since(self._known, info)

    def increment(self, info: ModelInfo, amounts: Amounts, *, op_id: uuid.UUID | None = None,
                  stop: Callable[[], bool] = lambda: False) -> UpdateResult:
        """Add ``amounts`` to the rows as an increment: no compare-and-set, so no wait for a bulk commit of
        the same chunks (:class:`._increment_commit.Incrementer`: it returns once the rows hold it; the rows
        this committer knows take it in the background, before anything here reads them again)."""
        return self._increments.increment(info, amounts, op_id=op_id or uuid_now(), stop=stop)

    def fold(self, info: ModelInfo, chunks: list[int]) -> Future[UpdateResult]:
        """Fold the pending increments of ``chunks`` into a new version (a commit that changes nothing else;
        the rows it knows caught up in its round, so it sees what landed since); chunks without any commit
        nothing."""
        return self.submit(info, chunks, fold_transform, FOLD_META, lr=None)

    def _rows(self, info: ModelInfo, work: Round) -> dict[int, dict[str, ChunkRow]]:
        with self._cond:  # the chunks refused last time: their known rows are behind the winner's commit
            stale = [k for k in work.chunks if (info.model_id, k) in self._stale]
            self._stale.difference_update((info.model_id, k) for k in stale)
        # A fold is for what landed since these rows were known: caught up here, under the chunk's claim (at
        # submit time another round of the chunk could still replace them).
        stale += [k for k, reqs in work.chunks.items() if k not in stale and any(r.meta is FOLD_META for r in reqs)]
        if time.monotonic() - self._contended.get(info.model_id, -math.inf) < CONTENDED_S:
            catch_up_moved(self._known, self._engine, self._tables, info, also=stale)
        elif stale:
            catch_up(self._known, self._engine, info, stale)
        rows, errors = known_or_read(self._known, self._engine, info, list(work.chunks))
        for k, exc in errors.items():
            self._retry_later(info, k, work.chunks[k], exc)
        return rows

    def _combine(self, info: ModelInfo, k: int, rows: dict[str, ChunkRow],
                 reqs: list[Request]) -> tuple[Change, dict[str, ChunkRow]] | None:
        """The updates' combined change of chunk ``k`` and the rows it leads to (``_combine``); the
        updates whose transform failed are finished with their error and leave ``reqs``."""
        arrived = list(reqs)
        change, cur, failed = combine(info, k, rows, [r.transform for r in arrived])
        for i, exc in failed.items():
            self._fail(arrived[i], k, reqs, exc)
        return None if change is None or not reqs else (change, cur)

    def _fail(self, req: Request, k: int, group: list[Request], exc: BaseException) -> None:
        self._known.drop((req.info.model_id, k))
        group.remove(req)
        with self._cond:
            self._finish(req, exc)

    def _applied(self, info: ModelInfo, k: int, before: dict[str, ChunkRow], after: dict[str, ChunkRow],
                 writes: dict[str, ChunkWrite], change: Change, op_id: uuid.UUID) -> ChunkCommit:
        key = (info.model_id, k)
        with self._cond:
            self._streak.pop(key, None)
            self._not_before.pop(key, None)
            refused = self._refused.pop(key, 0)
        self._known.put_committed(key, rows_after(after, writes, op_id), {p: set(before[p].pending) for p in before})
        return ChunkCommit(k, op_id, {p: before[p].version for p in change},
                           {p: before[p].version + 1 for p in change}, sum(len(t) for _, t in change.values()),
                           retries=refused, conflicts=refused, bytes_written=sum(w.nbytes for w in writes.values()),
                           touched={p: t for p, (_, t) in change.items()})

    def _conflict(self, info: ModelInfo, k: int, reqs: list[Request], op_id: uuid.UUID, change: Change) -> None:
        key = (info.model_id, k)  # its known row stays: the retry catches it up (``_rows``), not reads it whole
        self._tables.abort_history(self._engine.history_ttl_s, info.model_id, self._engine.bucket_of(info, op_id),
                                   op_id, change)
        with self._cond:
            self._stale.add(key)
            self._contended[info.model_id] = time.monotonic()
            self._streak[key] += 1
            self._refused[key] += 1
            backoff = 0.0 if self._urgent and self._streak[key] <= 3 else min(0.2, 0.002 * 2 ** self._streak[key])
            self._not_before[key] = time.monotonic() + random.uniform(0, backoff)
            for req in reqs:
                req.conflicts += 1

    def _retry_later(self, info: ModelInfo, k: int, reqs: list[Request], exc: CstoreError) -> None:
        with self._cond:
            if not isinstance(exc, TransientError):
                for req in list(reqs):
                    self._finish(req, exc)
                return
            key = (info.model_id, k)
            self._streak[key] += 1
            self._not_before[key] = time.monotonic() + min(2.0, 0.05 * 2 ** self._streak[key])
            for req in reqs:
                req.error = exc

    def _chunk_done(self, req: Request, k: int, commit: ChunkCommit | None) -> None:
        """Lock held: one chunk of ``req`` is committed (or had nothing to change)."""
        req.left.discard(k)
        if commit is not None:
            req.result.commits.append(commit)
        if not req.left:
            self._finish(req)

    def _record(self, info: ModelInfo, commits: list[ChunkCommit], work: Round) -> None:
        reqs = list({id(r): r for c in commits for r in work.chunks[c.chunk]}.values())
        lrs = [r.lr for r in reqs if r.lr is not None]
        self._engine.record(info, Totals(updates=len(reqs), chunk_commits=len(commits),
                                         coords=sum(c.coords for c in commits), lr_updates=len(lrs),
                                         lr_sum=sum(lrs), lr_sq_sum=sum(x * x for x in lrs),
                                         conflicts=sum(r.conflicts for r in reqs),
                                         bytes_written=sum(c.bytes_written for c in commits)))

