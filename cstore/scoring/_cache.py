"""An in-process copy of a model's ``weights`` and ``bias`` that stays fresh (used by the :class:`Client`).

A :class:`ModelCache` holds an immutable :class:`CachedModel`; a background thread polls the
model's head counter (``model_heads``: one tiny row that every commit announcement increments, after
its index rows), and only when it moved reads the ``chunk_versions`` partition, fetches the chunk
partitions whose version moved, builds *new* arrays (copy-on-write) and swaps the reference. A second
thread polls the model's increment feed (critical labels, see :mod:`cstore.scoring._feed`) and adds
them at once, never behind a bulk commit's catch-up. So a scorer can poll every 20 ms and a quiet
model costs two one-partition reads per poll.
A reader takes the reference once and computes with it, so it sees one whole state: never a
half-applied chunk. A periodic full check reads the versions from the chunk rows themselves,
which heals an index row that a writer failed to write after its commit.

>>> cache = ModelCache("fraud", backend_fn, interval_s=0.02, full_check_s=30)   # doctest: +SKIP
>>> cache.refresh()            # load now (the thread does the same in the background)  # doctest: +SKIP
>>> state = cache.current      # CachedModel: .weights (read-only), .bias, .version, .hasher  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from cstore.backend import Backoff
from cstore.core import ChunkRow, Increment, ModelInfo
from cstore.errors import ValidationError
from cstore.learn import FeatureHasher
from cstore.scoring._feed import FeedFollower, added_since, apply_increments
from cstore.store import SCORED_PARAMS, missing_chunk

__all__ = ["INDEX_GRACE_S", "PREDICT_PARAMS", "CachedModel", "ModelCache", "SharedHasher", "hashing_config"]

log = logging.getLogger("cstore.cache")

#: The parameters a scorer needs; optimizer state (``z``, ``n``, ``g2``…) is never fetched.
PREDICT_PARAMS = SCORED_PARAMS
_INDEX_TIMEOUT_S = 2.0  # a poll must not hang for the driver's full request timeout
INDEX_GRACE_S = 5.0     # an index row may trail its chunk this long (a commit in flight) before it is reported


class SharedHasher(FeatureHasher):
    """A :class:`FeatureHasher` safe to share between threads.

    Lookups in the name cache are plain dict reads (atomic under the GIL); only a cache miss
    mutates the cache (and may evict half of it), so misses are serialised with a lock.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._miss_lock = threading.Lock()

    def _miss(self, name: object, value: str | None) -> int:
        with self._miss_lock:
            return super()._miss(name, value)

    def after_fork(self) -> None:
        self._miss_lock = threading.Lock()  # a lock held by a parent thread would stay locked here


def hashing_config(info: ModelInfo) -> tuple[int, int]:
    """``(n_features, seed)`` of a model, from the learner metadata written by ``create_learner``.

    Models created by hand may put ``n_features`` / ``hash_seed`` at the top level of their
    metadata; without either, the hashed space is the size of ``weights`` and the seed is 0.
    """
    meta: Mapping[str, Any] = info.metadata if isinstance(info.metadata, Mapping) else {}
    raw = meta.get("learner")
    learner: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    size = info.size("weights")
    n = learner.get("n_features", meta.get("n_features", size))
    seed = learner.get("hash_seed", meta.get("hash_seed", 0))
    if not isinstance(n, int) or n > size:
        raise ValidationError(f"model {info.name!r}: n_features={n!r} does not fit its {size} weights")
    if not isinstance(seed, int):
        raise ValidationError(f"model {info.name!r}: hash_seed={seed!r} is not an integer")
    return n, seed


@dataclasses.dataclass(frozen=True)
class CachedModel:
    """One immutable state of a cached model. Never mutated: refreshes build a new one."""

    info: ModelInfo
    hasher: SharedHasher
    weights: np.ndarray                       # flat, read-only
    bias: float
    held: Mapping[tuple[str, int], int]       # (param, chunk) -> version of the data held
    version: int                              # head version this copy is at least as new as
    loaded_at: float                          # wall clock of the refresh that built it
    pinned: int | None = None                 # the snapshot version an alias pins it to (None: the head)
    ops: Mapping[tuple[str, int], uuid.UUID | None] = dataclasses.field(default_factory=dict)  # held versions' ops
    # rows holding increments (from their chunk or the feed): the row at its version, and the increments
    bases: Mapping[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)
    pending: Mapping[tuple[str, int], Mapping[uuid.UUID, Increment]] = dataclasses.field(default_factory=dict)


# A backend is anything with ``.store`` (a cstore Store): the client's per-process connection.
BackendFn = Callable[[], Any]


class ModelCache:
    """Keeps :attr:`current` fresh; see the module docstring."""

    def __init__(self, name: str, backend_fn: BackendFn, *, interval_s: float, full_check_s: float,
                 alias: str | None = None) -> None:
        self.name = name
        self.alias = alias
        self.backend_fn = backend_fn
        self.interval_s = interval_s
        self.full_check_s = full_check_s
        self.current: CachedModel | None = None
        self.last_ok: float | None = None        # time.monotonic() of the last successful refresh
        self.counters = {"polls": 0, "index_reads": 0, "full_checks": 0, "chunks_fetched": 0, "chunks_caught_up": 0,
                         "swaps": 0, "stale_index_rows": 0, "alias_reads": 0, "feed_polls": 0, "increments": 0}
        self.feed = FeedFollower(PREDICT_PARAMS)
        self._head: int | None = None             # the head counter the current copy was built from
        self.index_grace_s = INDEX_GRACE_S
        self._behind: dict[tuple[str, int], float] = {}  # index row below the chunk we hold: since when
        self.backoff = Backoff(log, f"refresh of model {name!r}", cap_s=2.0)  # failing polls are cheap
        self._next_full = time.monotonic() + full_check_s
        self._init_sync()

    def _init_sync(self) -> None:
        self._refresh_lock = threading.Lock()  # one head refresh at a time
        self._feed_lock = threading.Lock()     # one feed poll at a time
        self._swap_lock = threading.Lock()     # a new state is built on the latest one
        self._recheck: set[int] = set()        # chunks a feed entry may be folded into: caught up next
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the refresher threads (again, e.g. in a forked child); idempotent."""
        if not any(t.is_alive() for t in self._threads):
            self._stop = threading.Event()
            self._threads = [threading.Thread(target=self._run, args=(self._refresh_head,), daemon=True,
                                              name=f"cstore-refresh-{self.name}"),
                             threading.Thread(target=self._run, args=(self.poll_feed,), daemon=True,
                                              name=f"cstore-feed-{self.name}")]
            for t in self._threads:
                t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def after_fork(self) -> None:
        """In a forked child: fresh locks, no thread (threads do not survive fork); keep the arrays."""
        self._init_sync()
        if self.current is not None:
            self.current.hasher.after_fork()

    @property
    def staleness(self) -> float:
        """Seconds since the last successful refresh (``inf`` if the model was never loaded)."""
        return math.inf if self.last_ok is None else time.monotonic() - self.last_ok

    def _run(self, poll: Callable[[], object]) -> None:
        delay = 0.0 if self.current is None else self.interval_s
        while not self._stop.wait(delay):
            try:
                poll()
                self.backoff.success()
                delay = self.interval_s * random.uniform(0.8, 1.2)  # jitter: scorers do not poll in step
            except Exception as exc:  # keep serving the cached copy; staleness shows the trouble
                delay = self.backoff.failure(exc)

    # -- refreshing --------------------------------------------------------------------------------
    def refresh(self, *, full: bool = False) -> CachedModel:
        """Bring :attr:`current` up to date now (head and feed); returns it. Raises on failure (nothing is
        swapped)."""
        self._refresh_head(full)
        self.poll_feed()
        assert self.current is not None
        return self.current

    def poll_feed(self) -> None:
        """Add the increments the feed shows (one partition read) to the current state, at once."""
        cur = self.current
        if cur is None or cur.pinned is not None:
            return  # nothing to add to yet, or an alias pinned to a snapshot (no increment is in it)
        b = self.backend_fn()
        with self._feed_lock:
            entries = self.feed.poll(b.store, cur.info, timeout=_INDEX_TIMEOUT_S)
            self.counters["feed_polls"] += 1
            if entries:
                self.counters["increments"] += len(entries)
                with self._swap_lock:  # (the same model: it may have been dropped and re-created meanwhile)
                    now = self.current
                    if now is not None and now.pinned is None and now.info.model_id == cur.info.model_id:
                        new, recheck = apply_increments(now, entries)
                        self._recheck |= recheck
                        self._swap(new)

    def _refresh_head(self, full: bool | None = None) -> None:
        full = time.monotonic() >= self._next_full if full is None else full
        with self._refresh_lock:
            b = self.backend_fn()
            cur = self.current
            if cur is None or full:
                info = b.store.model_info(self.name, refresh=True)
                for p in PREDICT_PARAMS:
                    info.require_param(p)
                if cur is not None and info.model_id != cur.info.model_id:
                    log.warning("model %r was dropped and re-created; reloading it", self.name)
                    cur = None
            else:
                info = cur.info
            head = b.store.backend.params.head(info.model_id, timeout=_INDEX_TIMEOUT_S)  # before the index
            self.counters["polls"] += 1
            if self.alias is not None:  # an alias move bumps the head counter too: look only when it moved
                pinned = self._alias_target(b, info) if cur is None or full or head != self._head else \
                    (cur.pinned if cur is not None else None)
                if pinned is not None:
                    self._serve_snapshot(b, info, cur, pinned, head)
                    return
                if cur is not None and cur.pinned is not None:
                    cur = None  # the alias follows the head again: load it whole
            with self._swap_lock:
                recheck, self._recheck = self._recheck, set()
            # Nothing announced since the last poll: nothing to read (unless an index row is known to
            # trail its chunk, which is watched until it catches up or is reported).
            if cur is not None and not full and head == self._head and not self._behind and not recheck:
                self.last_ok = time.monotonic()
                return
            index = self._read_index(b, info)
            if cur is None:
                new = self._load(b, info, index)
            else:
                new = self._update(b, cur, index, full, recheck)
            if full:
                self.counters["full_checks"] += 1
                self._next_full = time.monotonic() + self.full_check_s
            self._head = head
            self._watch_index(new, index)
            with self._swap_lock:  # the increments the feed added meanwhile go on top of the new state
                if cur is not None and self.current is not cur and self.current is not None:
                    new, recheck = apply_increments(new, added_since(cur, self.current))
                    self._recheck |= recheck
                self._swap(new)

    def _swap(self, new: CachedModel) -> None:
        if new is not self.current:
            self.current = new  # the swap: one reference assignment, atomic for readers
            self.counters["swaps"] += 1
        self.last_ok = time.monotonic()

    def _alias_target(self, b: Any, info: ModelInfo) -> int | None:
        a = b.store.governance.alias(info, self.alias)
        self.counters["alias_reads"] += 1
        return a.pinned

    def _serve_snapshot(self, b: Any, info: ModelInfo, cur: CachedModel | None, version: int,
                        head: int) -> CachedModel:
        """The alias is pinned: serve that snapshot (immutable, so it is loaded once per move)."""
        self._head = head
        if cur is None or cur.pinned != version:
            state = b.store.read_snapshot(info.name, version, params=PREDICT_PARAMS)
            weights = state.params["weights"].reshape(-1)
            weights.flags.writeable = False
            hasher = cur.hasher if cur is not None else SharedHasher(*hashing_config(info))
            cur = CachedModel(info, hasher, weights, float(state.params["bias"].reshape(-1)[0]), {}, version,
                              time.time(), pinned=version)
            with self._swap_lock:
                self._swap(cur)
            self.counters["chunks_fetched"] += info.n_chunks("weights")
        self.last_ok = time.monotonic()
        return cur

    def _watch_index(self, state: CachedModel, index: Mapping[tuple[str, int], int]) -> None:
        """Report index rows that stay behind the chunk rows: a writer died between its commit and its
        index write. A row behind for a moment is a commit in flight, not a fault: hence the grace."""
        now = time.monotonic()
        behind = {key for key, v in state.held.items() if index.get(key, 0) < v}
        for key in list(self._behind):
            if key not in behind:
                del self._behind[key]
        for key in behind:
            since = self._behind.setdefault(key, now)
            if math.isfinite(since) and now - since >= self.index_grace_s:
                self._behind[key] = -math.inf  # reported once
                self.counters["stale_index_rows"] += 1
                log.warning("model %r: the chunk_versions row of %s chunk %d stays behind the chunk (a writer "
                            "stopped between commit and index write); the full check serves the chunk, and the "
                            "next commit of that chunk repairs the row", self.name, key[0], key[1])

    def _read_index(self, b: Any, info: ModelInfo) -> dict[tuple[str, int], int]:
        rows = b.store.backend.params.index(info.model_id, timeout=_INDEX_TIMEOUT_S)
        self.counters["index_reads"] += 1
        return {(r["param"], r["chunk"]): r["version"] for r in rows}

    def _fetch(self, b: Any, info: ModelInfo, chunks: list[int]) -> dict[int, dict[str, ChunkRow]]:
        rows = b.store.chunks.read(info, chunks, PREDICT_PARAMS)
        self.counters["chunks_fetched"] += len(chunks)
        return rows

    def _catch_up(self, b: Any, cur: CachedModel, moved: list[int]) -> dict[int, dict[str, ChunkRow]]:
        """The moved chunks: what the cached copy holds of each, caught up from the delta entries above
        it (a micro-batch's or an update's few coordinates, not the chunk); read whole where a full write
        came between."""
        info = cur.info
        held: dict[int, dict[str, ChunkRow]] = {}
        for k in moved:
            held[k] = {}
            for p in PREDICT_PARAMS:
                if (p, k) in cur.held:
                    lo, hi = info.chunk_bounds(p, k)
                    data = cur.weights[lo:hi] if p == "weights" else np.array([cur.bias], info.dtype)
                    held[k][p] = ChunkRow(p, data, cur.held[(p, k)], cur.ops.get((p, k)),
                                          base=cur.bases.get((p, k)), pending=cur.pending.get((p, k), {}))
        got = b.store.chunks.advance(info, held)
        rows = {k: {p: r for p, r in new.items() if r is not None} for k, new in got.items()
                if new and all(r is not None for r in new.values())}
        self.counters["chunks_caught_up"] += len(rows)
        whole = [k for k in moved if k not in rows]
        if whole:
            rows.update(self._fetch(b, info, whole))
        return rows

    def _load(self, b, info: ModelInfo, index: Mapping[tuple[str, int], int]) -> CachedModel:
        n_features, seed = hashing_config(info)
        hasher = SharedHasher(n_features, seed)
        rows = self._fetch(b, info, list(range(info.n_chunks("weights"))))
        weights = np.zeros(info.size("weights"), dtype=info.dtype)
        return self._build(info, hasher, weights, 0.0, None, rows, index, 0)

    def _update(self, b, cur: CachedModel, index: Mapping[tuple[str, int], int], full: bool,
                recheck: Iterable[int] = ()) -> CachedModel:
        info = cur.info
        moved = {k for (p, k), v in index.items() if p in PREDICT_PARAMS and v > cur.held.get((p, k), 0)}
        moved.update(recheck)
        if full:  # versions from the chunk rows themselves: heals a lagging or missing index row
            chunks = list(range(info.n_chunks("weights")))
            results = b.store.backend.params.chunk_versions(info.model_id, chunks, PREDICT_PARAMS)
            truth = {(r["param"], k): r["version"] for k, rows in zip(chunks, results) for r in rows}
            moved |= {k for (p, k), v in truth.items() if v > cur.held.get((p, k), 0)}
        if not moved:
            version = sum(index.values())
            if version <= cur.version:
                return cur
            return dataclasses.replace(cur, version=version, loaded_at=time.time())  # optimizer state moved
        rows = self._catch_up(b, cur, sorted(moved))
        return self._build(info, cur.hasher, cur.weights.copy(), cur.bias, cur, rows, index, cur.version)

    def _build(self, info, hasher, weights: np.ndarray, bias: float, prev: CachedModel | None, rows, index,
               old_version) -> CachedModel:
        """Write fetched chunks into ``weights`` (a private copy) and freeze it into a new state."""
        held = dict(prev.held) if prev else {}
        ops = dict(prev.ops) if prev else {}
        bases = dict(prev.bases) if prev else {}
        pending = dict(prev.pending) if prev else {}
        for k, by_param in rows.items():
            for p, row in by_param.items():
                if row.version < held.get((p, k), 0):
                    continue  # an older copy (a lagging replica at a weak level): keep the newer one
                if p == "weights":
                    lo, hi = info.chunk_bounds(p, k)
                    weights[lo:hi] = row.data
                else:
                    bias = float(row.data[0])
                held[(p, k)], ops[(p, k)] = row.version, row.op_id
                if row.pending:
                    bases[(p, k)], pending[(p, k)] = row.base_data, row.pending
                else:
                    bases.pop((p, k), None)
                    pending.pop((p, k), None)
        missing = [k for k in range(info.n_chunks("weights")) if ("weights", k) not in held]
        if missing:
            raise missing_chunk(info, "weights", missing[0])
        if ("bias", 0) not in held:
            raise missing_chunk(info, "bias", 0)
        weights.flags.writeable = False  # the cache is shared by every thread: nobody may write it
        caught_up = all(held.get(key, 0) >= v for key, v in index.items() if key[0] in PREDICT_PARAMS)
        version = sum(index.values()) if caught_up else old_version
        return CachedModel(info, hasher, weights, bias, held, max(version, old_version), time.time(), ops=ops,
                           bases=bases, pending=pending)

