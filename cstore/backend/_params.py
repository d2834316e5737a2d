"""The parameter store's tables (``cql/001_parameters.cql``): models, chunks, the chunk-version index,
history, snapshots and stats. Rows come back as plain dicts named by their columns.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cstore.backend._statements import Cas, Row, Runner
from cstore.errors import CstoreError

# -- models ---------------------------------------------------------------------------------------------
_MODEL = "SELECT * FROM models WHERE name = ?"
_MODELS = "SELECT * FROM models"
_MODEL_CREATE = ("INSERT INTO models (name, model_id, created_at, created_by, chunk_size, dtype, params, metadata, "
                 "history_bucket_s, history_indexed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, true) IF NOT EXISTS")
_HISTORY_BUCKET_ADD = "INSERT INTO history_buckets (model_id, day, bucket) VALUES (?, ?, ?) USING TTL ?"
_HISTORY_BUCKETS = "SELECT bucket FROM history_buckets WHERE model_id = ? AND day = ?"
_MODEL_DROP = "DELETE FROM models WHERE name = ? IF model_id = ?"
# -- chunks (a row is `data` at `base_version`, plus the delta entries above it: migration 005; and the
#    increments waiting to be folded: migration 010) ------------------------------------------------------
_ROW_HEADER = "param, version, op_id, base_version, deltas, pending"  # a chunk row without its `data`
_CHUNK_COLUMNS = f"data, {_ROW_HEADER}"
_CHUNK = f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE model_id = ? AND chunk = ?"
_CHUNK_PARAMS = f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE model_id = ? AND chunk = ? AND param IN ?"
_CHUNK_VERSIONS = "SELECT param, version FROM chunks WHERE model_id = ? AND chunk = ? AND param IN ?"
# A reader that holds a chunk at some version needs only the entries above it (no `data`), unless a
# full write came between: the row's base_version then says so. The whole map is read (at most a
# quarter of a chunk): a map slice (`deltas[?..]`) works on one node, but Cassandra 5.0.9 answers it
# with a server error (UnsupportedOperationException) on a replicated keyspace.
_CHUNK_TAIL = f"SELECT {_ROW_HEADER} FROM chunks WHERE model_id = ? AND chunk = ? AND param IN ?"
_CHUNK_INIT = ("INSERT INTO chunks (model_id, chunk, param, data, version, op_id, updated_at) "
               "VALUES (?, ?, ?, ?, 1, ?, ?)")
_WHERE_ROW = " WHERE model_id = ? AND chunk = ? AND param = ?"
# The three shapes of a chunk write; each also exists without its condition (blind writes, eventual).
# Every write folds the increments it saw (`pending - keys`: their amounts are in its values); one that
# lands meanwhile stays pending, on top of the new values (increments add, they do not set).
_FOLD_PENDING = ", pending = pending - ?"
_SET_FULL = "UPDATE chunks SET data = ?, version = ?, base_version = ?, op_id = ?, updated_at = ?" + _FOLD_PENDING
_SET_FOLD = _SET_FULL + ", deltas = null"  # a full write that also drops the entries it folds in
_SET_DELTA = ("UPDATE chunks SET version = ?, base_version = ?, op_id = ?, updated_at = ?, deltas[?] = ?"
              + _FOLD_PENDING)
_CHUNK_WRITES = {(shape, cond): set_clause + _WHERE_ROW + (" IF version = ?" if cond else "")
                 for shape, set_clause in (("full", _SET_FULL), ("fold", _SET_FOLD), ("delta", _SET_DELTA))
                 for cond in (True, False)}
# An increment: written blind, at the op's own time, so that the fold's deletion (later) always wins.
_INCREMENT = "UPDATE chunks USING TIMESTAMP ? SET pending[?] = ?" + _WHERE_ROW
# -- the increment feed (migration 010): what scorers poll to see an increment within one poll ----------
FEED_BUCKET_S = 60  # the width of a feed partition
_FEED_WRITE = "INSERT INTO increment_feed (model_id, bucket, op_id, chunk, param, delta) VALUES (?, ?, ?, ?, ?, ?)"
_FEED = "SELECT op_id, chunk, param, delta FROM increment_feed WHERE model_id = ? AND bucket = ? AND op_id > ?"
# -- the chunk-version index: written with USING TIMESTAMP = version, so a late write of an older
#    version can never overwrite a newer one ----------------------------------------------------------
_INDEX = "SELECT param, chunk, version, op_id FROM chunk_versions WHERE model_id = ?"
_INDEX_WRITE = ("INSERT INTO chunk_versions (model_id, param, chunk, version, op_id) VALUES (?, ?, ?, ?, ?) "
                "USING TIMESTAMP ?")
_INDEX_INIT = ("INSERT INTO chunk_versions (model_id, param, chunk, version, op_id) "
               "VALUES (?, ?, ?, 1, ?) USING TIMESTAMP 1")
# -- the doorbell scorers poll (a counter: increments never overwrite each other) -------------------------
_HEAD_BUMP = "UPDATE model_heads SET commits = commits + 1 WHERE model_id = ?"
_HEAD = "SELECT commits FROM model_heads WHERE model_id = ?"
# -- history --------------------------------------------------------------------------------------------
# A history row is 'pending' until its compare-and-set decides (the chain from the head says which won),
# or 'increment': the record of an add (amounts in `delta`, no versions), written before its increment.
# (An add's row names no versions: its columns are left out, not written null, which would be tombstones.)
_HISTORY_WRITES = {
    "pending": ("INSERT INTO history (model_id, bucket, op_id, param, chunk, old_version, new_version, prev_op_id, "
                "update_type, learning_rate, source, delta, metadata, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') USING TTL ?"),
    "increment": ("INSERT INTO history (model_id, bucket, op_id, param, chunk, update_type, learning_rate, source, "
                  "delta, metadata, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'increment') USING TTL ?")}
_HISTORY_ABORT = ("UPDATE history USING TTL ? SET status = 'aborted' "
                  "WHERE model_id = ? AND bucket = ? AND op_id = ? AND param = ?")
_HISTORY_RANGE = "SELECT * FROM history WHERE model_id = ? AND bucket = ? AND op_id >= ? AND op_id <= ?"
_HISTORY_ONE = "SELECT * FROM history WHERE model_id = ? AND bucket = ? AND op_id = ? AND param = ?"
_HISTORY_LINK = ("SELECT new_version, prev_op_id FROM history "
                 "WHERE model_id = ? AND bucket = ? AND op_id = ? AND param = ?")
# -- snapshots ------------------------------------------------------------------------------------------
_SNAP_CHUNK_PUT = ("INSERT INTO snapshot_chunks (model_id, version, chunk, param, data, chunk_version, op_id) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)")
_SNAP_PUT = ("INSERT INTO snapshots (model_id, version, created_at, created_by, reason, n_chunks, lineage) "
             "VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
_SNAPS = "SELECT * FROM snapshots WHERE model_id = ?"
_SNAP = "SELECT * FROM snapshots WHERE model_id = ? AND version = ?"
_SNAP_CHUNK = ("SELECT param, data, chunk_version, op_id FROM snapshot_chunks "
               "WHERE model_id = ? AND version = ? AND chunk = ?")
# -- stats ----------------------------------------------------------------------------------------------
STATS_COLUMNS = ("updates", "chunk_commits", "coords", "lr_updates", "lr_sum", "lr_sq_sum", "conflicts", "retries",
                 "overwrites", "bytes_written", "drift_events")
_STATS_WRITE = (f"INSERT INTO stats (model_id, day, bucket, writer, {', '.join(STATS_COLUMNS)}) "
                f"VALUES (?, ?, ?, ?, {', '.join('?' * len(STATS_COLUMNS))})")
_STATS = "SELECT * FROM stats WHERE model_id = ? AND day = ? AND bucket >= ?"


#: An increment of one parameter row: ``(op_id, write timestamp in µs, param, stored entry)``.
IncrementEntry = tuple[uuid.UUID, int, str, bytes]


def _by_feed_bucket(feed: Mapping[int, Sequence[IncrementEntry]]) -> dict[int, list[tuple[uuid.UUID, int, str, bytes]]]:
    """Feed rows per feed partition: ``{chunk: [(op, ts, param, entry)]}`` -> ``{bucket: [(op, chunk, param,
    entry)]}`` (the bucket of an op is its time's minute, as ``cstore.store`` reckons it)."""
    out: dict[int, list[tuple[uuid.UUID, int, str, bytes]]] = {}
    for k, rows in feed.items():
        for op, ts, p, blob in rows:
            out.setdefault(ts // (FEED_BUCKET_S * 1_000_000), []).append((op, k, p, blob))
    return out


# Chunks whose increments share one request: at most this many partitions and about this many bytes, under
# Cassandra's default warning thresholds for an unlogged batch (unlogged_batch_across_partitions_warn_threshold
# 10, batch_size_warn_threshold 5 KiB), so that a stock cluster neither logs nor returns a warning for them.
_GROUP_PARTITIONS = 10
_GROUP_BYTES = 4096
_ENTRY_OVERHEAD = 64  # an entry's key, op id, timestamp and cell overhead beside its blob (bytes, roughly)


def _groups(sizes: Mapping[int, int]) -> list[list[int]]:
    """Chunks (``{chunk: bytes of its entries}``) packed in order into groups of at most ``_GROUP_PARTITIONS``
    and ``_GROUP_BYTES`` (a chunk bigger than that alone).

    >>> _groups({0: 100, 1: 100, 2: 5000, 3: 4000, 4: 50})
    [[0, 1], [2], [3, 4]]
    >>> [len(g) for g in _groups(dict.fromkeys(range(25), 10))]
    [10, 10, 5]
    """
    out: list[list[int]] = []
    size = 0
    for k, n in sizes.items():
        if not out or len(out[-1]) >= _GROUP_PARTITIONS or size + n > _GROUP_BYTES:
            out.append([])
            size = 0
        out[-1].append(k)
        size += n
    return out


@dataclass(frozen=True)
class ChunkWrite:
    """What one compare-and-set writes to one parameter row of a chunk, expecting it at ``expected``.

    ``data`` (the whole chunk, encoded) makes a full write, which also drops the row's delta entries
    when ``fold``; otherwise ``delta`` (the touched coordinates' new values, encoded) is added as the
    entry of version ``expected + 1`` above the row's unchanged ``data`` at ``base``.
    ``pending``: the increments the row held when it was read (op id -> stored entry), which the new
    values include: the write deletes them (others that landed since stay pending).
    """

    expected: int
    base: int
    data: bytes | None = None
    delta: bytes | None = None
    fold: bool = False
    pending: Mapping[uuid.UUID, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.data if self.data is not None else self.delta or b"")


class ParamTables:
    """Every statement the parameter store runs."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    # -- models -------------------------------------------------------------------------------------------
    def model(self, name: str) -> Row | None:
        return self._r.one(_MODEL, (name,), op="read_model")

    def models(self) -> list[Row]:
        return self._r.rows(_MODELS, op="read_model")

    def create_model(self, name: str, model_id: uuid.UUID, created_at: datetime, created_by: str, chunk_size: int,
                     dtype: str, params_json: str, metadata_json: str, history_bucket_s: int) -> Cas:
        """Insert the models row unless the name is taken (``row`` then holds the existing one)."""
        return self._r.lwt_cql(_MODEL_CREATE, (name, model_id, created_at, created_by, chunk_size, dtype, params_json,
                                               metadata_json, history_bucket_s), op="coordination")

    def drop_model(self, name: str, model_id: uuid.UUID) -> Cas:
        """Delete the models row iff it still names incarnation ``model_id``."""
        return self._r.lwt_cql(_MODEL_DROP, (name, model_id), op="coordination")

    # -- chunks -------------------------------------------------------------------------------------------
    def chunk(self, model_id: uuid.UUID, chunk: int, *, serial: bool = False) -> list[Row]:
        """Every parameter row of one chunk (``serial``: a linearizable read, after an unknown commit)."""
        return self._r.rows(_CHUNK, (model_id, chunk), op="read_model", serial=serial)

    def chunks(self, model_id: uuid.UUID, chunks: Sequence[int],
               params: Sequence[str] | None = None) -> list[list[Row]]:
        """The rows of many chunks (only ``params`` when given), in the order of ``chunks``."""
        if params is None:
            return self._r.many(_CHUNK, [(model_id, k) for k in chunks], op="read_model", concurrency=64)
        return self._r.many(_CHUNK_PARAMS, [(model_id, k, list(params)) for k in chunks], op="read_model",
                            concurrency=64)

    def chunk_versions(self, model_id: uuid.UUID, chunks: Sequence[int], params: Sequence[str]) -> list[list[Row]]:
        """``param`` and ``version`` of many chunks, from the chunk rows themselves (not the index)."""
        return self._r.many(_CHUNK_VERSIONS, [(model_id, k, list(params)) for k in chunks], op="read_model")

    def chunk_tails(self, model_id: uuid.UUID, chunks: Sequence[int], params: Sequence[str]) -> list[list[Row]]:
        """Of each chunk: ``param``, ``version``, ``op_id``, ``base_version`` and the delta entries, without
        the chunk's data (in the order of ``chunks``)."""
        return self._r.many(_CHUNK_TAIL, [(model_id, k, list(params)) for k in chunks], op="read_model",
                            concurrency=64)

    def init_chunks(self, rows: Iterable[tuple[uuid.UUID, int, str, bytes, uuid.UUID, datetime]]) -> None:
        """Version-1 rows of a new model: ``(model_id, chunk, param, blob, op_id, now)`` each."""
        self._r.many(_CHUNK_INIT, list(rows), op="commit_chunk")

    def _chunk_write(self, model_id: uuid.UUID, chunk: int, param: str, w: ChunkWrite, op_id: uuid.UUID,
                     now: datetime, conditional: bool) -> Any:
        new = w.expected + 1
        folds = set(w.pending)
        where: tuple[Any, ...] = (model_id, chunk, param) + ((w.expected,) if conditional else ())
        if w.data is not None:
            shape = "fold" if w.fold else "full"
            return self._r.bind(_CHUNK_WRITES[(shape, conditional)], (w.data, new, new, op_id, now, folds, *where))
        return self._r.bind(_CHUNK_WRITES[("delta", conditional)],
                            (new, w.base, op_id, now, new, w.delta, folds, *where))

    def write_chunk(self, model_id: uuid.UUID, chunk: int, writes: Mapping[str, ChunkWrite],
                    op_id: uuid.UUID, now: datetime, *, conditional: bool) -> Cas:
        """Write version ``expected + 1`` of each parameter row of a chunk, in one request.

        ``conditional``: a compare-and-set on every row's version (one conditional batch of the chunk's
        partition: atomic and isolated); otherwise blind writes, last writer wins (always "applied").
        """
        stmts = [self._chunk_write(model_id, chunk, p, w, op_id, now, conditional) for p, w in writes.items()]
        stmt = stmts[0] if len(stmts) == 1 else self._r.batch(stmts, logged=conditional)
        if conditional:
            return self._r.lwt(stmt, op="commit_chunk")
        return Cas(self._r.blind(stmt, op="commit_chunk"))  # a blind write's timeout is as unknown as a CAS's

    def write_chunks(self, model_id: uuid.UUID, writes: Mapping[int, Mapping[str, ChunkWrite]],
                     op_ids: Mapping[int, uuid.UUID], now: datetime) -> dict[int, Cas | CstoreError]:
        """Compare-and-sets of several chunks, all in flight at once (one request per chunk partition)."""
        chunks = list(writes)
        stmts = []
        for k in chunks:
            rows = [self._chunk_write(model_id, k, p, w, op_ids[k], now, True) for p, w in writes[k].items()]
            stmts.append(rows[0] if len(rows) == 1 else self._r.batch(rows, logged=True))
        return dict(zip(chunks, self._r.lwt_many(stmts, op="commit_chunk")))

    def write_increments(self, model_id: uuid.UUID, entries: Mapping[int, Sequence[IncrementEntry]], *,
                         feed: Mapping[int, Sequence[IncrementEntry]] | None = None
                         ) -> tuple[dict[int, CstoreError | None], CstoreError | None]:
        """Increments into the rows of several chunks (``{chunk: [(op_id, timestamp_us, param, entry)]}``, any
        number of ops): blind writes, all in flight at once, with the ``feed`` entries (``{feed bucket:
        [...]}``, a request per bucket). Per chunk None (stored) or the error, and the first of the feed's.
        Idempotent: writing the same entry again (after a timeout) changes nothing, and after a fold has
        deleted it, the write (at the same timestamp) stays deleted.

        Small chunks' entries share requests (:func:`_groups`): a round of adds spread over many chunks
        costs a request per ten chunks, not per chunk (the client's CPU per request was a third of an
        add's). A group is an unlogged batch: not atomic across its partitions, which is fine for
        idempotent entries: a group that failed is reported failed for each of its chunks and written again.
        """
        groups = _groups({k: sum(len(b) + _ENTRY_OVERHEAD for _, _, _, b in rows) for k, rows in entries.items()})
        stmts = [[self._r.bind(_INCREMENT, (ts, op, blob, model_id, k, p)) for k in group
                  for op, ts, p, blob in entries[k]] for group in groups]
        stmts += [[self._r.bind(_FEED_WRITE, (model_id, b, op, k, p, blob)) for op, k, p, blob in rows]
                  for b, rows in _by_feed_bucket(feed or {}).items()]
        outcomes = [o if o is None or isinstance(o, CstoreError) else CstoreError(str(o)) for o in
                    self._r.run_outcomes([(rows[0] if len(rows) == 1 else self._r.batch(rows), None) for rows in stmts],
                                         op="commit_chunk", concurrency=64)]
        fed = next((o for o in outcomes[len(groups):] if o is not None), None)
        return {k: outcome for group, outcome in zip(groups, outcomes) for k in group}, fed

    # -- the chunk-version index ---------------------------------------------------------------------------
    def index(self, model_id: uuid.UUID, *, timeout: float | None = None) -> list[Row]:
        """``param, chunk, version, op_id`` of every chunk: what a scorer polls."""
        return self._r.rows(_INDEX, (model_id,), op="read_model", timeout=timeout)

    def write_index(self, model_id: uuid.UUID, entries: Sequence[tuple[str, int, int, uuid.UUID]]) -> None:
        """Index rows ``(param, chunk, version, op_id)`` of one model: its one partition, one request."""
        self._r.write_partition([(_INDEX_WRITE, (model_id, p, k, v, op, v)) for p, k, v, op in entries],
                                op="commit_chunk")

    def bump_head(self, model_id: uuid.UUID) -> None:
        """Ring the model's doorbell: call after the index rows of a commit are written."""
        self._r.write(_HEAD_BUMP, (model_id,), op="commit_chunk")

    def head(self, model_id: uuid.UUID, *, timeout: float | None = None) -> int:
        """The model's doorbell counter (0 before its first commit since migration 005)."""
        row = self._r.one(_HEAD, (model_id,), op="read_model", timeout=timeout)
        return int(row["commits"]) if row and row["commits"] is not None else 0

    def feed(self, model_id: uuid.UUID, windows: Sequence[tuple[int, uuid.UUID]], *,
             timeout: float | None = None) -> list[Row]:
        """``op_id, chunk, param, delta`` of the increment feed, per ``(bucket, after)``: its rows with
        ``op_id > after`` (one request per bucket, all at once)."""
        got = self._r.read_together([(_FEED, (model_id, b, a)) for b, a in windows], op="read_model",
                                    timeout=timeout)
        return [r for rows in got for r in rows]

    def init_index(self, rows: Iterable[tuple[uuid.UUID, str, int, uuid.UUID]]) -> None:
        self._r.many(_INDEX_INIT, list(rows), op="commit_chunk")

    # -- history ----------------------------------------------------------------------------------------------
    def write_history(self, rows: Sequence[tuple[Any, ...]], *, status: str = "pending") -> None:
        """History rows of one ``(model, bucket)`` partition, a single request: a commit's (``pending``) or
        adds' (``increment``)."""
        self._r.write_partition([(_HISTORY_WRITES[status], r) for r in rows], op="write_history")

    def announce_history_bucket(self, model_id: uuid.UUID, day: int, bucket: int, ttl_s: int) -> None:
        """Record that ``bucket`` holds history of the model (before its first row is written)."""
        self._r.write(_HISTORY_BUCKET_ADD, (model_id, day, bucket, ttl_s), op="write_history")

    def history_buckets(self, model_id: uuid.UUID, days: Iterable[int]) -> list[int]:
        """The buckets recorded for the given days, in order."""
        per = self._r.many(_HISTORY_BUCKETS, [(model_id, d) for d in days], op="read_history")
        return sorted(r["bucket"] for rows in per for r in rows)

    def abort_history(self, ttl_s: int, model_id: uuid.UUID, bucket: int, op_id: uuid.UUID,
                      params: Iterable[str]) -> None:
        """Mark a lost attempt's rows aborted, best effort: the chain walk ignores losers even without it."""
        for p in params:
            self._r.fire(_HISTORY_ABORT, (ttl_s, model_id, bucket, op_id, p), op="write_history")

    def history(self, model_id: uuid.UUID, buckets: Iterable[int], lo: uuid.UUID, hi: uuid.UUID) -> list[Row]:
        """History rows of the given buckets with ``lo <= op_id <= hi``."""
        per = self._r.many(_HISTORY_RANGE, [(model_id, b, lo, hi) for b in buckets], op="read_history")
        return [r for rows in per for r in rows]

    def history_row(self, model_id: uuid.UUID, bucket: int, op_id: uuid.UUID, param: str) -> Row | None:
        return self._r.one(_HISTORY_ONE, (model_id, bucket, op_id, param), op="read_history")

    def history_link(self, model_id: uuid.UUID, bucket: int, op_id: uuid.UUID, param: str) -> Row | None:
        """``new_version`` and ``prev_op_id`` of one commit: one step of a chain walk."""
        return self._r.one(_HISTORY_LINK, (model_id, bucket, op_id, param), op="read_history")

    # -- snapshots --------------------------------------------------------------------------------------------
    def snapshot(self, model_id: uuid.UUID, version: int) -> Row | None:
        return self._r.one(_SNAP, (model_id, version), op="read_model")

    def snapshots(self, model_id: uuid.UUID) -> list[Row]:
        return self._r.rows(_SNAPS, (model_id,), op="read_model")

    def put_snapshot_chunks(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """``(model_id, version, chunk, param, blob, chunk_version, op_id)`` each."""
        self._r.many(_SNAP_CHUNK_PUT, rows, op="commit_chunk")

    def put_snapshot(self, model_id: uuid.UUID, version: int, created_at: datetime, created_by: str, reason: str,
                     n_chunks: int, lineage_json: str | None = None) -> Cas:
        """The header, written last: a snapshot exists once all its chunks do."""
        return self._r.lwt_cql(_SNAP_PUT, (model_id, version, created_at, created_by, reason, n_chunks, lineage_json),
                               op="coordination")

    def snapshot_chunks(self, model_id: uuid.UUID, version: int, chunks: Sequence[int]) -> list[list[Row]]:
        return self._r.many(_SNAP_CHUNK, [(model_id, version, k) for k in chunks], op="read_model")

    # -- stats ------------------------------------------------------------------------------------------------
    def write_stats(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """``(model_id, day, bucket, writer, *STATS_COLUMNS)`` each; each writer overwrites its own rows."""
        self._r.many(_STATS_WRITE, rows, op="write_history")

    def stats(self, model_id: uuid.UUID, days: Iterable[int], first_bucket: int) -> list[Row]:
        per = self._r.many(_STATS, [(model_id, d, first_bucket) for d in days], op="read_history", concurrency=16)
        return [r for rows in per for r in rows]
