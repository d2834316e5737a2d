"""What the group committer knows without asking Cassandra, and how it proves an op committed.

* :class:`KnownRows` — the chunk rows this process committed or read last. A compare-and-set against
  them needs no read first; if another writer moved the chunk meanwhile, the compare-and-set is refused
  and the entry is caught up (:func:`catch_up`), so a stale entry costs a retry, never an update.
* :func:`chunk_op_id` / :func:`committed` — an update spanning chunks commits chunk ``k`` under an op id
  derived from its ``update_id``; whether that op is on the chunk's commit chain tells, exactly, whether
  a re-submitted update already committed that chunk.
"""
from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from cstore.backend import ParamTables
from cstore.core import ChunkRow, ModelInfo, ticks_of, uuid_at
from cstore.errors import CorruptData, CstoreError
from cstore.store._engine import ChunkEngine, missing_chunk
from cstore.store._history import op_in_chain
from cstore.store._increments import with_pending

__all__ = ["KnownRows", "catch_up", "catch_up_moved", "chunk_op_id", "committed", "known_or_read", "pending_since"]

KNOWN_BUDGET = 256 << 20  # bytes of known rows per process (a 2^20-float model is 4 MiB per parameter)


class KnownRows:
    """The last committed or read rows per (model, chunk), least recently used dropped beyond a budget."""

    def __init__(self, budget: int = KNOWN_BUDGET) -> None:
        self._rows: OrderedDict[tuple[uuid.UUID, int], dict[str, ChunkRow]] = OrderedDict()
        self._bytes = 0
        self._budget = budget
        self._lock = threading.Lock()

    def get(self, key: tuple[uuid.UUID, int]) -> dict[str, ChunkRow] | None:
        with self._lock:
            rows = self._rows.get(key)
            if rows is not None:
                self._rows.move_to_end(key)
            return rows

    def put(self, key: tuple[uuid.UUID, int], rows: dict[str, ChunkRow]) -> None:
        self.replace(key, None, rows)

    def put_committed(self, key: tuple[uuid.UUID, int], rows: dict[str, ChunkRow],
                      folded: Mapping[str, set[uuid.UUID]]) -> None:
        """``put`` the rows a commit left, keeping on them the increments the held entry had that the
        commit did not fold (another thread of this process added them meanwhile: they stay pending)."""
        while True:
            held = self.get(key)
            out = dict(rows)
            for p, row in rows.items():
                extra = {op: inc for op, inc in (held[p].pending.items() if held and p in held else ())
                         if op not in folded.get(p, ()) and op not in row.pending}
                if extra:
                    pending = {**row.pending, **extra}
                    out[p] = ChunkRow(p, with_pending(row.base_data, pending), row.version, row.op_id, row.deltas,
                                      row.delta_bytes, base=row.base_data, pending=pending)
            if held is None or self.replace(key, held, out):  # (else the entry moved meanwhile: again)
                if held is None:
                    self.put(key, out)
                return

    def offer(self, key: tuple[uuid.UUID, int], rows: dict[str, ChunkRow]) -> None:
        """``put`` unless the entry held is as new and holds more: the same versions and every pending
        increment of ``rows`` and more (another thread of this process added its increment since)."""
        with self._lock:
            held = self._rows.get(key)
        if held is not None and held.keys() == rows.keys() and all(
                held[p].version == r.version and set(r.pending) < set(held[p].pending) for p, r in rows.items()):
            return
        self.put(key, rows)

    def replace(self, key: tuple[uuid.UUID, int], old: dict[str, ChunkRow] | None, rows: dict[str, ChunkRow]) -> bool:
        """``put`` unless the entry is no longer ``old`` (a commit of this process moved it meanwhile);
        ``old`` None: in any case. Whether it was put."""
        for r in rows.values():
            r.data.flags.writeable = False  # shared by every later transform: nobody may write it
            if r.base is not None:
                r.base.flags.writeable = False
        with self._lock:
            if old is not None and self._rows.get(key) is not old:
                return False
            self._drop(key)
            self._rows[key] = rows
            self._bytes += _nbytes(rows)
            while self._bytes > self._budget and len(self._rows) > 1:
                _, evicted = self._rows.popitem(last=False)
                self._bytes -= _nbytes(evicted)
            return True

    def drop(self, key: tuple[uuid.UUID, int]) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: tuple[uuid.UUID, int]) -> None:
        old = self._rows.pop(key, None)
        if old is not None:
            self._bytes -= _nbytes(old)


def _nbytes(rows: dict[str, ChunkRow]) -> int:
    return sum(r.data.nbytes + (0 if r.base is None else r.base.nbytes) for r in rows.values())


def known_or_read(known: KnownRows, engine: ChunkEngine, info: ModelInfo,
                  chunks: list[int]) -> tuple[dict[int, dict[str, ChunkRow]], dict[int, CstoreError]]:
    """The rows of ``chunks``: known ones, else read (one read for all; one per chunk if that fails,
    so that an unreadable chunk fails or delays only its own updates), and the chunks that failed."""
    rows = {k: got for k in chunks if (got := known.get((info.model_id, k))) is not None}
    missing = [k for k in chunks if k not in rows]
    errors: dict[int, CstoreError] = {}
    try:
        fresh = engine.read(info, missing) if missing else {}
    except CstoreError:
        fresh = {}
        for k in missing:
            try:
                fresh[k] = engine.read_chunk(info, k)
            except CstoreError as exc:
                errors[k] = exc
    for k, got in fresh.items():
        rows[k] = got
        if got:  # a missing row is never remembered: it may be restored
            known.put((info.model_id, k), got)
    return rows, errors


def catch_up(known: KnownRows, engine: ChunkEngine, info: ModelInfo, chunks: Iterable[int]) -> None:
    """Bring the known rows of ``chunks`` to their stored versions from the delta entries above them
    (no chunk data crosses the wire); a row that a full write has passed since is read whole and
    replaces the old one (so a reader in another thread never finds a gap), or is forgotten if that read
    fails (the next :func:`known_or_read` reads it again, and reports the error to its own chunk).

    Another writer's small commits (a second worker of the model: a micro-batch of hashed features
    touches a few hundred coordinates per chunk) then cost a reader their entries, not the chunk.
    """
    held = {k: got for k in chunks if (got := known.get((info.model_id, k))) is not None}
    if not held:
        return
    behind = []
    for k, new in engine.advance(info, held).items():
        key = (info.model_id, k)
        caught = {p: r for p, r in new.items() if r is not None}
        if len(caught) < len(new):
            behind.append(k)
        elif any(r is not held[k][p] for p, r in caught.items()):
            known.replace(key, held[k], caught)
    if behind:
        try:
            whole = engine.read(info, behind)
        except CstoreError:
            whole = {}
        for k in behind:
            if whole.get(k):
                known.replace((info.model_id, k), held[k], whole[k])
            else:
                known.drop((info.model_id, k))


def catch_up_moved(known: KnownRows, engine: ChunkEngine, tables: ParamTables, info: ModelInfo,
                   also: Iterable[int] = ()) -> None:
    """:func:`catch_up` the known rows of ``info`` that its version index (one partition read) shows
    another writer has moved, and those of ``also`` (known to have moved: the index trails commits).

    A model another process writes too (a second worker of the same model) would otherwise find the
    known rows stale at the compare-and-set: each a refused Paxos round, an aborted history row and a
    back-off before the read. The committer checks before every round of a model that had a conflict
    recently; alone on a model, it never pays the extra read.
    """
    moved = set(also)
    for r in tables.index(info.model_id):
        rows = known.get((info.model_id, r["chunk"]))
        if rows is not None and r["param"] in rows and rows[r["param"]].version < r["version"]:
            moved.add(r["chunk"])
    catch_up(known, engine, info, sorted(moved))


def pending_since(known: KnownRows, info: ModelInfo) -> dict[int, int]:
    """Per chunk of ``info`` whose known rows hold pending increments, the time (ticks) of the oldest."""
    out: dict[int, int] = {}
    for k in range(info.max_chunks):
        ops = [op for r in (known.get((info.model_id, k)) or {}).values() for op in r.pending]
        if ops:
            out[k] = min(ticks_of(op) for op in ops)
    return out


def chunk_op_id(update_id: uuid.UUID, chunk: int) -> uuid.UUID:
    """The op id of an update's commit of ``chunk``: a timeuuid at the update's time, unique per chunk.

    >>> u = uuid.UUID("7f3c1a2e-cf2b-11f0-8000-0123456789ab")
    >>> chunk_op_id(u, 3) == chunk_op_id(u, 3) != chunk_op_id(u, 4)
    True
    >>> ticks_of(chunk_op_id(u, 3)) == ticks_of(u)
    True
    """
    node = (update_id.node ^ ((chunk + 1) * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFF
    return uuid_at(ticks_of(update_id), node=node, clock_seq=update_id.clock_seq)


def committed(engine: ChunkEngine, tables: ParamTables, info: ModelInfo, chunk: int, op: uuid.UUID) -> bool:
    """Is ``op`` on ``chunk``'s commit chain? (Its history row says which version it would have made;
    the chain from the head, read at SERIAL, says whether it did.)"""
    bucket = engine.bucket_of(info, op)
    for p in info.params_in_chunk(chunk):
        row = tables.history_row(info.model_id, bucket, op, p)
        if row is None:
            continue
        head = engine.read_chunk(info, chunk, serial=True).get(p)
        if head is None:
            raise missing_chunk(info, p, chunk)
        if head.op_id == op:
            return True
        if head.op_id is None or head.version < row["new_version"]:
            return False
        found = op_in_chain(tables, lambda o: engine.bucket_of(info, o), info, p, chunk, head.op_id,
                            row["new_version"], op)
        if found is None:
            raise CorruptData(f"model {info.name!r} chunk {chunk}: cannot tell whether op {op} committed (its "
                              f"history chain is incomplete)", model=info.name, chunk=chunk)
        return found
    return False
