"""The chunk engine: read chunks, and commit a change to chunks with a version check.

One commit = one chunk partition ``(model_id, k)``, possibly several parameters at once (a
single-partition conditional batch, atomic and isolated). The caller supplies a *transform*,
a pure function from the chunk's current arrays to new ones, so that on a conflict the engine
re-reads the chunk and re-applies the same change to the newer state.

Commit protocol (strong profile):
1. read the chunk rows (or use the rows the caller already read);
2. compute the new arrays; 3. write one history row per parameter, status ``pending``;
4. ``UPDATE … IF version = ?`` (a batch when several parameters change);
5. applied → announce it (``_announcer``: the chunk-version index rows, then the model's head counter,
   coalesced per process); refused → mark the history rows ``aborted``, back off with jitter, go to 1.
   A CAS whose outcome is unknown (a timeout, a connection lost under it) is resolved by a SERIAL
   read, never retried blind.

A change to several chunks commits each chunk on its own (concurrently); when some commit and
others fail, :class:`~cstore.errors.PartialCommit` names both.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from cstore.backend import Backend, Row
from cstore.core import (ChunkCommit, ChunkRow, CodecPipeline, CommitMeta, ModelInfo, Transform, UpdateResult,
                         history_context, metadata_context, seal_text, uuid_now)
from cstore.errors import ConflictError, CorruptData, CstoreError, MissingChunk, PartialCommit, UnknownOutcome
from cstore.store._announcer import Announcer
from cstore.store._history import op_in_chain
from cstore.store._increments import WrittenIncrements
from cstore.store._rows import advance_row, decode_row, plan_write
from cstore.store._stats import StatsRecorder, Totals

log = logging.getLogger("cstore.params")

Chunks = dict[int, dict[str, ChunkRow]]

#: Reads of at least this many moved chunks, or of rows holding at least CATCH_UP_BYTES, catch them up
#: from their delta entries (``advance``).
CATCH_UP_FROM = 8
CATCH_UP_BYTES = 1 << 20


class ChunkEngine:
    """Reads and commits chunks through one backend, with its consistency profile."""

    def __init__(self, backend: Backend, codec: CodecPipeline, stats: StatsRecorder, *, max_retries: int,
                 history_bucket_s: int, history_ttl_s: int) -> None:
        self._tables = backend.params
        self._lwt = backend.profile.lwt
        self.codec = codec
        self.stats = stats
        self.max_retries = max_retries
        self.bucket_s = history_bucket_s
        self.history_ttl_s = history_ttl_s
        self._last_written: dict[tuple[uuid.UUID, int, str], tuple[int, uuid.UUID]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._last_stats_flush = time.monotonic()
        self.announcer = Announcer(self._tables)
        self._buckets_announced: set[tuple[uuid.UUID, int]] = set()
        self.written = WrittenIncrements()  # this process's adds, reused when their rows are read back

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.announcer.close()

    # -- reading -------------------------------------------------------------------------------------------
    def decode(self, info: ModelInfo, chunk: int, rows: Iterable[Row],
               params: Iterable[str] | None = None) -> dict[str, ChunkRow]:
        """Stored rows of one chunk as :class:`ChunkRow` (only ``params`` when given), checked and decrypted."""
        wanted = set(info.params if params is None else params)
        # (a row without a version holds only increments written after it was lost: it is missing)
        return {r["param"]: decode_row(self.codec, info, chunk, r, self.written) for r in rows
                if r["param"] in info.params and r["param"] in wanted and r["version"] is not None}

    def read_chunk(self, info: ModelInfo, chunk: int, *, serial: bool = False) -> dict[str, ChunkRow]:
        return self.decode(info, chunk, self._tables.chunk(info.model_id, chunk, serial=serial))

    def read(self, info: ModelInfo, chunks: Iterable[int], params: Sequence[str] | None = None) -> Chunks:
        """Chunks ``chunks`` of a model, decoded (only ``params`` when given), concurrently."""
        ks = list(chunks)
        per = self._tables.chunks(info.model_id, ks, params)
        return {k: self.decode(info, k, rows, params) for k, rows in zip(ks, per)}

    def advance(self, info: ModelInfo,
                held: Mapping[int, Mapping[str, ChunkRow]]) -> dict[int, dict[str, ChunkRow | None]]:
        """The rows in ``held`` brought to their stored versions from the delta entries above them alone
        (one small read per chunk, concurrently, no chunk data): bit for bit a whole read; None for a
        row that a full write has passed since (or that is gone): read that one whole.

        Fewer than :data:`CATCH_UP_FROM` chunks holding less than :data:`CATCH_UP_BYTES` are all None
        without a read: catching up costs a second round trip after a fold, and a few small chunks (an
        atomic update's) are cheap to read whole in one, which is what their readers wait for. Large
        rows (a learner's 1 MiB ones) are caught up however few: a whole read of each would carry
        megabytes for a label's few coordinates."""
        held_bytes = sum(r.data.nbytes for rows in held.values() for r in rows.values())
        if len(held) < CATCH_UP_FROM and held_bytes < CATCH_UP_BYTES:
            return {k: {p: None for p in rows} for k, rows in held.items()}
        chunks = [k for k, rows in held.items() if rows]
        params = sorted({p for k in chunks for p in held[k]})
        out: dict[int, dict[str, ChunkRow | None]] = {}
        for k, stored in zip(chunks, self._tables.chunk_tails(info.model_id, chunks, params)):
            by_param = {r["param"]: r for r in stored if r["version"] is not None}
            out[k] = {p: advance_row(self.codec, info, k, row, by_param[p], self.written)
                      if p in by_param else None for p, row in held[k].items()}
        return out

    def bucket_of(self, info: ModelInfo, op_id: uuid.UUID) -> int:
        return info.history_bucket_of(op_id, self.bucket_s)

    # -- committing many chunks ------------------------------------------------------------------------------
    def commit(self, info: ModelInfo, chunks: Iterable[int], transform: Transform, meta: CommitMeta, *,
               lr: float | None = None, current: Mapping[int, Mapping[str, ChunkRow]] | None = None) -> UpdateResult:
        """Commit ``transform`` to each chunk (concurrently) and count it in the stats.

        ``current`` may hold rows the caller read already (they are compare-and-set against, so stale
        rows cost a retry, never an update). Raises :class:`PartialCommit` when only some chunks committed.
        """
        ks = list(chunks)
        current = current or {}
        result = UpdateResult(info.name)
        outcomes: list[ChunkCommit | BaseException]
        if len(ks) == 1:
            outcomes = [self._commit_or_error(info, ks[0], transform, meta, current.get(ks[0]))]
        else:
            pool = self._executor()
            futures: list[Future[ChunkCommit | BaseException]] = [
                pool.submit(self._commit_or_error, info, k, transform, meta, current.get(k)) for k in ks]
            outcomes = [f.result() for f in futures]
        result.commits = [o for o in outcomes if isinstance(o, ChunkCommit) and o.new_versions]
        self._record(info, result, lr)
        errors = [(k, o) for k, o in zip(ks, outcomes) if isinstance(o, BaseException)]
        if not errors:
            return result
        first = errors[0][1]
        if not result.commits or not isinstance(first, CstoreError):
            raise first
        failed = [k for k, _ in errors]
        raise PartialCommit(f"{first} (chunks {result.chunks} of this update were committed; chunks {failed} "
                            f"were not: retry those only)", result=result, failed=failed, cause=first)

    def _commit_or_error(self, info: ModelInfo, chunk: int, transform: Transform, meta: CommitMeta,
                         current: Mapping[str, ChunkRow] | None) -> ChunkCommit | BaseException:
        try:
            return self.commit_chunk(info, chunk, transform, meta, current)
        except Exception as exc:  # keep going: other chunks may have committed
            return exc

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cstore-commit")
        return self._pool

    def _record(self, info: ModelInfo, result: UpdateResult, lr: float | None) -> None:
        with_lr = bool(result.commits) and lr is not None
        step = lr if with_lr and lr is not None else 0.0
        self.record(info, Totals(updates=1 if result.commits else 0, chunk_commits=len(result.commits),
                                 coords=result.coords, lr_updates=int(with_lr), lr_sum=step, lr_sq_sum=step * step,
                                 conflicts=result.conflicts, retries=result.retries, overwrites=result.overwrites,
                                 bytes_written=sum(c.bytes_written for c in result.commits)))

    def record(self, info: ModelInfo, totals: Totals) -> None:
        """Count commits in this process's stats bucket (written at most once a second)."""
        self.stats.record(info.model_id, totals)
        if time.monotonic() - self._last_stats_flush > 1.0:
            self._last_stats_flush = time.monotonic()
            self.stats.flush()

    # -- committing one chunk -----------------------------------------------------------------------------
    def commit_chunk(self, info: ModelInfo, chunk: int, transform: Transform, meta: CommitMeta,
                     current: Mapping[str, ChunkRow] | None = None) -> ChunkCommit:
        """Apply ``transform`` to chunk ``chunk`` exactly once (or raise)."""
        retries = conflicts = overwrites = 0
        rows = dict(current) if current is not None else self.read_chunk(info, chunk)
        while True:
            overwrites += self._count_overwrites(info, chunk, rows)
            try:
                changes = transform(chunk, rows)
            except KeyError as exc:  # the transform indexed a parameter whose chunk row is gone
                if not (exc.args and exc.args[0] in info.params and exc.args[0] not in rows):
                    raise
                raise missing_chunk(info, exc.args[0], chunk) from None
            if not changes:
                return ChunkCommit(chunk, uuid_now(), {}, {}, 0)
            missing = [p for p in changes if p not in rows]
            if missing:
                raise missing_chunk(info, missing[0], chunk)
            op_id = uuid_now()
            bucket = self.bucket_of(info, op_id)
            plans = {p: plan_write(self.codec, info, chunk, rows[p], new, touched, conditional=self._lwt)
                     for p, (new, touched) in changes.items()}
            writes = {p: w for p, (w, _) in plans.items()}
            self.write_history(info, [self.history_row(info, chunk, rows[p], sparse, meta, op_id, bucket)
                                        for p, (_, sparse) in plans.items()])  # one (model, bucket): one request
            t_cas = time.perf_counter()
            cas = self._tables.write_chunk(info.model_id, chunk, writes, op_id, datetime.now(UTC),
                                           conditional=self._lwt)
            cas_seconds = time.perf_counter() - t_cas
            resolved = cas.applied is None
            applied = self.resolve(info, chunk, rows, changes, op_id) if resolved else cas.applied
            if applied:
                new_versions = {p: rows[p].version + 1 for p in changes}
                self.announcer.announce(info, [(p, chunk, v, op_id) for p, v in new_versions.items()])
                if not self._lwt:
                    with self._lock:
                        for p, v in new_versions.items():
                            self._last_written[(info.model_id, chunk, p)] = (v, op_id)
                return ChunkCommit(chunk, op_id, {p: rows[p].version for p in changes}, new_versions,
                                   sum(len(t) for _, t in changes.values()), retries, conflicts, overwrites,
                                   sum(w.nbytes for w in writes.values()), resolved, cas_seconds,
                                   {p: t for p, (_, t) in changes.items()})
            self._tables.abort_history(self.history_ttl_s, info.model_id, bucket, op_id, changes)
            conflicts += 1
            if retries >= self.max_retries:
                raise ConflictError(f"model {info.name!r} chunk {chunk}: gave up after {retries} retries "
                                    f"against concurrent writers; lower the write rate on this chunk, use a "
                                    f"smaller chunk_size, or raise max_retries", model=info.name, chunk=chunk,
                                    retries=retries)
            retries += 1
            time.sleep(random.uniform(0, min(0.2, 0.004 * 2 ** retries)))  # full jitter
            rows = self.read_chunk(info, chunk)

    def write_history(self, info: ModelInfo, rows: list[tuple[Any, ...]], *, status: str = "pending") -> None:
        """History rows of one ``(model, bucket)`` partition (one request); for an indexed model the
        bucket is recorded in ``history_buckets`` first, once per bucket and process, so that a reader
        who lists the buckets finds every row."""
        bucket = rows[0][1]
        key = (info.model_id, bucket)
        if info.history_indexed and key not in self._buckets_announced:
            seconds = info.history_bucket_seconds(self.bucket_s)
            self._tables.announce_history_bucket(info.model_id, bucket * seconds // 86400, bucket,
                                                 self.history_ttl_s + 2 * seconds)
            if len(self._buckets_announced) > 10_000:  # re-announcing is idempotent: forgetting is safe
                self._buckets_announced.clear()
            self._buckets_announced.add(key)
        self._tables.write_history(rows, status=status)

    def history_row(self, info: ModelInfo, chunk: int, row: ChunkRow, sparse: bytes, meta: CommitMeta,
                    op_id: uuid.UUID, bucket: int) -> tuple[Any, ...]:
        """The pending history row of one parameter of a commit (written before its compare-and-set).
        A commit that folds increments lists their op ids (``"increments"``) in its metadata: the post-image
        it records holds their amounts."""
        delta = self.codec.encode_bytes(sparse, context=history_context(info.model_id, chunk, row.param, op_id))
        text = meta.metadata
        if row.pending:
            text = json.dumps({**json.loads(text or "{}"), "increments": sorted(str(op) for op in row.pending)})
        sealed_meta = seal_text(self.codec, text, metadata_context(info.model_id, chunk, row.param, op_id))
        return (info.model_id, bucket, op_id, row.param, chunk, row.version, row.version + 1, row.op_id,
                meta.update_type, meta.learning_rate, meta.source, delta, sealed_meta, self.history_ttl_s)

    def increment_history_row(self, info: ModelInfo, chunk: int, param: str, sparse: bytes, meta: CommitMeta,
                              op_id: uuid.UUID, bucket: int) -> tuple[Any, ...]:
        """The history row of an add (written before its increment): the amounts it adds (``sparse``:
        ``encode_sparse(indices, amounts)``), no versions."""
        delta = self.codec.encode_bytes(sparse, context=history_context(info.model_id, chunk, param, op_id))
        sealed_meta = seal_text(self.codec, meta.metadata, metadata_context(info.model_id, chunk, param, op_id))
        return (info.model_id, bucket, op_id, param, chunk, meta.update_type, meta.learning_rate, meta.source, delta,
                sealed_meta, self.history_ttl_s)

    def resolve(self, info: ModelInfo, chunk: int, rows: Mapping[str, ChunkRow],
                 changes: Mapping[str, object], op_id: uuid.UUID) -> bool:
        """After an unknown outcome: did our op become the chunk's next version? Never guess."""
        for attempt in range(5):
            try:
                now_rows = self.read_chunk(info, chunk, serial=self._lwt)
                break
            except CstoreError as exc:  # SERIAL reads run Paxos too
                if isinstance(exc, CorruptData):
                    raise
                log.warning("SERIAL read to resolve %s chunk %d failed (%s); retrying", info.name, chunk, exc)
                time.sleep(0.2 * (attempt + 1))
        else:
            raise UnknownOutcome(f"model {info.name!r} chunk {chunk}: the commit timed out and the cluster "
                                 f"could not be read at SERIAL; op {op_id} is applied once or not at all — "
                                 f"check `cstore history` before re-sending it", op_id=op_id, model=info.name,
                                 chunk=chunk)
        p = next(iter(changes))
        cur = now_rows.get(p)
        if cur is None:
            raise missing_chunk(info, p, chunk)
        if cur.op_id == op_id:
            return True
        expected = rows[p].version
        if cur.version <= expected + 1 or cur.op_id is None:
            return False  # unchanged, or another op holds version expected+1
        found = op_in_chain(self._tables, lambda op: self.bucket_of(info, op), info, p, chunk, cur.op_id,
                            expected + 1, op_id)
        if found is None:
            raise UnknownOutcome(f"model {info.name!r} chunk {chunk}: commit {op_id} timed out and its "
                                 f"history chain could not be followed; it is applied at most once",
                                 op_id=op_id, model=info.name, chunk=chunk)
        return found

    def _count_overwrites(self, info: ModelInfo, chunk: int, rows: Mapping[str, ChunkRow]) -> int:
        """Eventual profile: did a concurrent blind write replace the version we wrote last?"""
        if self._lwt:
            return 0
        n = 0
        with self._lock:
            for p, row in rows.items():
                mine = self._last_written.get((info.model_id, chunk, p))
                if mine and (row.version < mine[0] or (row.version == mine[0] and row.op_id != mine[1])):
                    n += 1
                    self._last_written.pop((info.model_id, chunk, p))
        return n


def missing_chunk(info: ModelInfo, param: str, chunk: int) -> MissingChunk:
    """The error for a chunk row that the model's metadata promises and that is not stored."""
    return MissingChunk(f"model {info.name!r} parameter {param!r} chunk {chunk} is missing; the model is "
                        f"incomplete: restore it from a snapshot", model=info.name, param=param, chunk=chunk)
