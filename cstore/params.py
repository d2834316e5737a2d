"""The chunk engine: read chunks, and commit a change to one chunk with a version check.

One commit = one chunk partition ``(model_id, k)``, possibly several parameters at once (a
single-partition conditional batch, atomic and isolated). The caller supplies a *transform*,
a pure function from the chunk's current arrays to new ones, so that on a conflict the engine
re-reads the chunk and re-applies the same change to the newer state.

Commit protocol (strong profile):
1. read the chunk rows (or use the rows the caller already read);
2. compute the new arrays; 3. write one history row per parameter, status ``pending``;
4. ``UPDATE … IF version = ?`` (a batch when several parameters change);
5. applied → update the chunk-version index; refused → mark the history rows ``aborted``,
   back off with jitter, go to 1. A CAS timeout is resolved by a SERIAL read, never retried blind.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Mapping

import numpy as np
from cassandra import (ConsistencyLevel, OperationTimedOut, ReadTimeout, Unauthorized, Unavailable, WriteTimeout,
                       WriteType)
from cassandra.cluster import NoHostAvailable
from cassandra.query import BatchStatement, BatchType
from cassandra.util import uuid_from_time

from cstore.codec import CodecPipeline, chunk_context, encode_sparse, history_context
from cstore.errors import ConflictError, ConsistencyUnavailable, CorruptData, PermissionDenied, UnknownOutcome
from cstore.models import ModelInfo
from cstore.session import execute, execute_partition

log = logging.getLogger("cstore.params")

# A transform gets {param: ChunkRow} and returns {param: (new_chunk_array, touched_local_indices)}.
Transform = Callable[[int, Mapping[str, "ChunkRow"]], Mapping[str, tuple[np.ndarray, np.ndarray]]]


@dataclass
class ChunkRow:
    param: str
    data: np.ndarray
    version: int
    op_id: uuid.UUID | None


@dataclass(frozen=True)
class CommitMeta:
    update_type: str
    learning_rate: float | None
    source: str
    metadata: str  # JSON


@dataclass
class ChunkCommit:
    """What happened to one chunk: its versions before and after, and how hard it was."""

    chunk: int
    op_id: uuid.UUID
    old_versions: dict[str, int]
    new_versions: dict[str, int]
    coords: int
    retries: int = 0
    conflicts: int = 0
    overwrites: int = 0
    bytes_written: int = 0
    resolved_after_timeout: bool = False
    cas_seconds: float = 0.0  # time of the successful conditional write itself
    touched: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def chunk_slice(info: ModelInfo, param: str, chunk: int, flat: np.ndarray) -> np.ndarray:
    start, stop = info.chunk_bounds(param, chunk)
    return flat[start:stop]


class ChunkEngine:
    """Reads and commits chunks for one connection and consistency profile."""

    def __init__(self, conn, codec: CodecPipeline, stats, *, max_retries: int, history_bucket_s: int,
                 history_ttl_s: int) -> None:
        self.session = conn.session
        self.profile = conn.profile
        self.codec = codec
        self.stats = stats
        self.max_retries = max_retries
        self.bucket_s = history_bucket_s
        self.history_ttl_s = history_ttl_s
        self._last_written: dict[tuple, tuple[int, uuid.UUID]] = {}
        self._lock = threading.Lock()
        p = self.session.prepare
        self.q_select = p("SELECT param, data, version, op_id FROM chunks WHERE model_id = ? AND chunk = ?")
        self.q_cas = p("UPDATE chunks SET data = ?, version = ?, op_id = ?, updated_at = ? "
                       "WHERE model_id = ? AND chunk = ? AND param = ? IF version = ?")
        self.q_blind = p("UPDATE chunks SET data = ?, version = ?, op_id = ?, updated_at = ? "
                         "WHERE model_id = ? AND chunk = ? AND param = ?")
        self.q_index = p("INSERT INTO chunk_versions (model_id, param, chunk, version, op_id) VALUES (?, ?, ?, ?, ?) "
                         "USING TIMESTAMP ?")
        self.q_history = p("INSERT INTO history (model_id, bucket, op_id, param, chunk, old_version, new_version, "
                           "prev_op_id, update_type, learning_rate, source, delta, metadata, status) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') USING TTL ?")
        self.q_abort = p("UPDATE history USING TTL ? SET status = 'aborted' "
                         "WHERE model_id = ? AND bucket = ? AND op_id = ? AND param = ?")

    # -- reading -----------------------------------------------------------------------------------
    def decode_rows(self, info: ModelInfo, chunk: int, rows, params=None) -> dict[str, ChunkRow]:
        out = {}
        for r in rows:
            if r["param"] not in info.params or (params is not None and r["param"] not in params):
                continue
            start, stop = info.chunk_bounds(r["param"], chunk)
            try:
                data = self.codec.decode(r["data"], expect_dtype=info.dtype, expect_shape=[stop - start],
                                         context=chunk_context(info.model_id, chunk, r["param"]))
            except CorruptData as exc:
                raise CorruptData(f"model {info.name!r} parameter {r['param']!r} chunk {chunk} "
                                  f"(version {r['version']}): {exc}") from None
            out[r["param"]] = ChunkRow(r["param"], data, r["version"], r["op_id"])
        return out

    def read_chunk(self, info: ModelInfo, chunk: int, *, serial: bool = False) -> dict[str, ChunkRow]:
        stmt = self.q_select.bind((info.model_id, chunk))
        if serial:
            stmt.consistency_level = self.profile.serial_level
        with replica_errors("read_model"):
            rows = execute(self.session, stmt, profile="read_model")
        return self.decode_rows(info, chunk, rows)

    def bucket_of(self, info: ModelInfo, op_id: uuid.UUID) -> int:
        return info.history_bucket_of(op_id, self.bucket_s)

    # -- committing --------------------------------------------------------------------------------
    def commit(self, info: ModelInfo, chunk: int, transform: Transform, meta: CommitMeta,
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
                changes = {exc.args[0]: None}
            if not changes:
                return ChunkCommit(chunk, uuid.uuid1(), {}, {}, 0)
            missing = [p for p in changes if p not in rows]
            if missing:
                raise CorruptData(f"model {info.name!r} chunk {chunk} has no row for {missing}; "
                                  f"the model is incomplete: restore it from a snapshot")
            op_id = uuid_from_time(time.time())
            bucket = self.bucket_of(info, op_id)
            blobs = {p: self.codec.encode(new, context=chunk_context(info.model_id, chunk, p))
                     for p, (new, _) in changes.items()}
            self._write_history(info, chunk, rows, changes, meta, op_id, bucket)
            t_cas = time.perf_counter()
            applied = self._write_chunk(info, chunk, rows, blobs, op_id)
            cas_seconds = time.perf_counter() - t_cas
            if applied is None:  # outcome unknown after a timeout: resolve it by a SERIAL read
                applied = self._resolve(info, chunk, rows, changes, op_id)
                resolved = True
            else:
                resolved = False
            if applied:
                new_versions = {p: rows[p].version + 1 for p in changes}
                try:
                    self._write_index(info, chunk, new_versions, op_id)
                except Exception as exc:  # committed already: a lagging index must not turn it into an error
                    log.warning("model %s chunk %d committed at %s but its version index was not updated (%s); "
                                "scorers catch up at their next full check", info.name, chunk, new_versions, exc)
                if not self.profile.lwt:
                    with self._lock:
                        for p, v in new_versions.items():
                            self._last_written[(info.model_id, chunk, p)] = (v, op_id)
                commit = ChunkCommit(chunk, op_id, {p: rows[p].version for p in changes}, new_versions,
                                     sum(len(t) for _, t in changes.values()), retries, conflicts, overwrites,
                                     sum(len(b) for b in blobs.values()), resolved, cas_seconds,
                                     {p: t for p, (_, t) in changes.items()})
                return commit
            self._abort_history(info, changes, op_id, bucket)
            conflicts += 1
            if retries >= self.max_retries:
                raise ConflictError(f"model {info.name!r} chunk {chunk}: gave up after {retries} retries "
                                    f"against concurrent writers; lower the write rate on this chunk, use a "
                                    f"smaller chunk_size, or raise max_retries")
            retries += 1
            time.sleep(random.uniform(0, min(0.2, 0.004 * 2 ** retries)))  # full jitter
            rows = self.read_chunk(info, chunk)

    def _write_history(self, info, chunk, rows, changes, meta: CommitMeta, op_id, bucket) -> None:
        requests = []
        for p, (new, touched) in changes.items():
            touched = np.asarray(touched, dtype=np.int32)
            delta = self.codec.encode_bytes(encode_sparse(touched, new[touched]),
                                            context=history_context(info.model_id, chunk, p, op_id))
            requests.append((self.q_history, (info.model_id, bucket, op_id, p, chunk, rows[p].version,
                                              rows[p].version + 1, rows[p].op_id, meta.update_type,
                                              meta.learning_rate, meta.source, delta, meta.metadata,
                                              self.history_ttl_s)))
        with replica_errors("write_history"):
            execute_partition(self.session, requests, profile="write_history")  # rows of one (model, bucket)

    def _abort_history(self, info, changes, op_id, bucket) -> None:
        for p in changes:  # best effort: the chain walk ignores losers even without the mark
            self.session.execute_async(self.q_abort, (self.history_ttl_s, info.model_id, bucket, op_id, p),
                                       execution_profile="write_history")

    def _write_chunk(self, info, chunk, rows, blobs, op_id) -> bool | None:
        """True applied, False refused (conflict), None unknown (timeout)."""
        now = datetime.now(timezone.utc)
        if self.profile.lwt:
            stmts = [self.q_cas.bind((blob, rows[p].version + 1, op_id, now, info.model_id, chunk, p,
                                      rows[p].version)) for p, blob in blobs.items()]
        else:
            stmts = [self.q_blind.bind((blob, rows[p].version + 1, op_id, now, info.model_id, chunk, p))
                     for p, blob in blobs.items()]
        if len(stmts) == 1:
            stmt = stmts[0]
        else:
            stmt = BatchStatement(batch_type=BatchType.UNLOGGED if not self.profile.lwt else BatchType.LOGGED)
            for s in stmts:
                stmt.add(s)
        try:
            rs = execute(self.session, stmt, profile="commit_chunk")
        except (WriteTimeout, OperationTimedOut) as exc:
            if isinstance(exc, WriteTimeout) and exc.write_type not in (WriteType.CAS, WriteType.SIMPLE,
                                                                        WriteType.BATCH):
                raise
            log.warning("commit of %s chunk %d timed out (%s); resolving with a SERIAL read",
                        info.name, chunk, type(exc).__name__)
            return None
        except Unavailable as exc:
            raise ConsistencyUnavailable(_unavailable_message(exc, "commit_chunk")) from None
        except ReadTimeout as exc:  # the Paxos read phase of an LWT
            with replica_errors("commit_chunk"):
                raise exc
        if self.profile.lwt and not rs.was_applied and len(rs.response_future.attempted_hosts) > 1:
            # The driver re-sent the LWT to another coordinator after a connection error: the first send may
            # have applied it, and then this "not applied" is our own commit. Resolve it, never retry blind.
            return None
        return rs.was_applied if self.profile.lwt else True

    def _resolve(self, info, chunk, rows, changes, op_id) -> bool:
        """After a timeout: did our op become the chunk's next version? Never guess."""
        from cstore.history import op_in_chain  # local import: history depends on this module
        for attempt in range(5):
            try:
                now_rows = self.read_chunk(info, chunk, serial=self.profile.lwt)
                break
            except (OperationTimedOut, Unavailable, WriteTimeout) as exc:  # SERIAL reads run Paxos too
                log.warning("SERIAL read to resolve %s chunk %d failed (%s); retrying", info.name, chunk, exc)
                time.sleep(0.2 * (attempt + 1))
        else:
            raise UnknownOutcome(f"model {info.name!r} chunk {chunk}: the commit timed out and the cluster "
                                 f"could not be read at SERIAL; op {op_id} is applied once or not at all — "
                                 f"check `cstore history` before re-sending it")
        p = next(iter(changes))
        cur = now_rows[p]
        if cur.op_id == op_id:
            return True
        expected = rows[p].version
        if cur.version <= expected + 1:
            return False  # unchanged, or another op holds version expected+1
        found = op_in_chain(self.session, lambda op: self.bucket_of(info, op), info, p, chunk, cur.op_id,
                            expected + 1, op_id)
        if found is None:
            raise UnknownOutcome(f"model {info.name!r} chunk {chunk}: commit {op_id} timed out and its "
                                 f"history chain could not be followed; it is applied at most once")
        return found

    def _write_index(self, info, chunk, new_versions: Mapping[str, int], op_id: uuid.UUID) -> None:
        with replica_errors("commit_chunk"):
            execute_partition(self.session, [(self.q_index, (info.model_id, p, chunk, v, op_id, v))
                                             for p, v in new_versions.items()], profile="commit_chunk")

    def _count_overwrites(self, info, chunk, rows) -> int:
        """Eventual profile: did a concurrent blind write replace the version we wrote last?"""
        if self.profile.lwt:
            return 0
        n = 0
        with self._lock:
            for p, row in rows.items():
                mine = self._last_written.get((info.model_id, chunk, p))
                if mine and (row.version < mine[0] or (row.version == mine[0] and row.op_id != mine[1])):
                    n += 1
                    self._last_written.pop((info.model_id, chunk, p))
        return n


def _server_message(exc: Exception) -> str:
    """The server's sentence without the driver's wrapping ('Error from server: code=2100 …')."""
    text = str(exc)
    return text.split('message="', 1)[-1].rstrip('"') if 'message="' in text else text


def _unavailable_message(exc: Unavailable, operation: str) -> str:
    level = ConsistencyLevel.value_to_name.get(exc.consistency, exc.consistency)
    return (f"{operation} needs {exc.required_replicas} replica(s) at consistency {level} but only "
            f"{exc.alive_replicas} are alive; bring the missing nodes back or use a weaker profile")


def _replica_error(exc: NoHostAvailable) -> Exception | None:
    """The first server-side replica error (auth, unavailable, timeout) among the hosts a request tried."""
    for err in (getattr(exc, "errors", None) or {}).values():
        if isinstance(err, (Unauthorized, Unavailable, ReadTimeout, WriteTimeout)):
            return err
    return None


@contextmanager
def replica_errors(operation: str):
    """Turn the driver's replica errors into cstore errors naming the operation, level and replicas."""
    try:
        try:
            yield
        except NoHostAvailable as exc:
            # The driver's retry policy moves on to the next host after an Unavailable; when that host's
            # connection is gone too it reports both. The replica error is the one that explains the failure.
            inner = _replica_error(exc)
            if inner is None:
                raise
            raise inner from None
    except Unauthorized as exc:
        raise PermissionDenied(f"{operation}: the logged-in role may not do this ({_server_message(exc)}); "
                               f"log in as a role that has the permission (see cql/roles/roles.cql)") from None
    except Unavailable as exc:
        raise ConsistencyUnavailable(_unavailable_message(exc, operation)) from None
    except (ReadTimeout, WriteTimeout) as exc:
        if isinstance(exc, WriteTimeout) and exc.write_type == WriteType.CAS:
            raise  # the caller resolves CAS timeouts; never reported as plain failures
        level = ConsistencyLevel.value_to_name.get(exc.consistency, exc.consistency)
        raise ConsistencyUnavailable(f"{operation} timed out at consistency {level}: {exc.received_responses} "
                                     f"of {exc.required_responses} required replica(s) answered; retry later, "
                                     f"bring nodes back, or use a weaker profile") from None
    except OperationTimedOut as exc:
        # The client gave up on the coordinator (killed, or overloaded). Every operation wrapped here is a
        # read, or a write that commits nothing by itself (history first, then the chunk's compare-and-set).
        raise ConsistencyUnavailable(f"{operation}: the coordinator did not answer in time ({_server_message(exc)}); "
                                     f"retry, or raise request_timeout_s if the cluster is just slow") from None
