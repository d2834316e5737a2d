"""A scorer's side of the increment feed: critical labels in the cached model within one poll.

The critical lane stores what it learns as increments of the chunk rows (no compare-and-set; see
:mod:`cstore.store`), then writes the scored parameters' entries to the model's increment feed. A
:class:`FeedFollower` reads the feed in the same round trip as the head counter (every poll), and
:func:`apply_increments` adds the new entries to a copy of the cached model — no chunk is read.

Each cached row keeps its ``base`` (the row at the version it holds) and the increments added to it,
so a later catch-up of that chunk (:meth:`cstore.store.ChunkEngine.advance`) recomputes it exactly, as
a whole read would: increments still pending stay added, folded ones are in the new version's values.

Whether an entry is already in what the scorer holds: an increment the held version has folded was
written before that version's commit began, so an entry newer than the held version's op
(:func:`cstore.core.ticks_of`) is added at once; an older one that is not among the increments held is
ambiguous (folded, or it landed after the chunk was read) and its chunk is caught up instead, which
settles it from the row itself. Entries are re-read for :data:`FEED_OVERLAP_S` after their time (a
feed write may land late) and each is considered once.
"""
from __future__ import annotations

import dataclasses
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cstore.core import TICKS_PER_S, Increment, ModelInfo, min_uuid_at, ticks_of
from cstore.store import FEED_BUCKET_S, decode_increment, with_pending

__all__ = ["FEED_OVERLAP_S", "FeedEntry", "FeedFollower", "added_since", "apply_increments"]

#: How far back each poll re-reads the feed (a feed write that lands later than this is not missed for
#: good: its chunk's next move, or the periodic full check, brings it from the row).
FEED_OVERLAP_S = 1.0


@dataclasses.dataclass(frozen=True)
class FeedEntry:
    param: str
    chunk: int
    op_id: uuid.UUID
    increment: Increment


class FeedFollower:
    """The feed window of one cached model: which buckets to read, and which entries were seen."""

    def __init__(self, params: Iterable[str]) -> None:
        self.params = tuple(params)
        self._since = time.time() - FEED_OVERLAP_S
        self._seen: dict[tuple[uuid.UUID, int, str], float] = {}

    def window(self) -> list[tuple[int, uuid.UUID]]:
        """``(bucket, after)`` per feed partition to read now: the last :data:`FEED_OVERLAP_S` seconds
        before the previous poll, to now."""
        now = time.time()
        since, self._since = self._since, now - FEED_OVERLAP_S
        after = min_uuid_at(int(since * TICKS_PER_S))
        first, last = int(since // FEED_BUCKET_S), int(now // FEED_BUCKET_S)
        return [(b, after) for b in range(first, last + 1)]

    def poll(self, store: Any, info: ModelInfo, *, timeout: float | None = None) -> list[FeedEntry]:
        """The entries of the feed not seen before (one read per feed partition of the window)."""
        rows = store.backend.params.feed(info.model_id, self.window(), timeout=timeout)
        return self.new(info, store.chunks.codec, rows)

    def new(self, info: ModelInfo, codec: Any, rows: Iterable[Mapping[str, Any]]) -> list[FeedEntry]:
        """The rows not seen before, decoded (each (op, chunk, param) is considered once)."""
        now = time.monotonic()
        for op in [op for op, t in self._seen.items() if now - t > 4 * FEED_OVERLAP_S]:
            del self._seen[op]
        out = []
        for r in rows:
            op, k, p = r["op_id"], r["chunk"], r["param"]
            key = (op, k, p)
            if p not in self.params or key in self._seen or k >= info.n_chunks(p):
                continue
            self._seen[key] = now
            out.append(FeedEntry(p, k, op, decode_increment(codec, info, k, p, op, r["delta"])))
        return out


def added_since(old: Any, now: Any) -> list[FeedEntry]:
    """The increments the cached state ``now`` holds and ``old`` does not (added by the feed while a
    refresh built a new state from ``old``: they go on top of it)."""
    return [FeedEntry(p, k, op, inc) for (p, k), pend in now.pending.items() for op, inc in pend.items()
            if op not in old.pending.get((p, k), {})]


def apply_increments(cur: Any, entries: list[FeedEntry]) -> tuple[Any, set[int]]:
    """``cur`` (a :class:`~cstore.scoring.CachedModel`) with ``entries`` added where they are certainly
    new, and the chunks to catch up for those that may be folded already (see the module docstring).
    Returns ``cur`` itself when nothing was added."""
    recheck: set[int] = set()
    todo: dict[tuple[str, int], dict[uuid.UUID, Increment]] = defaultdict(dict)
    for e in entries:
        key = (e.param, e.chunk)
        if key not in cur.held or e.op_id in cur.pending.get(key, {}):
            continue
        held_op = cur.ops.get(key)
        if held_op is None or ticks_of(e.op_id) > ticks_of(held_op):
            todo[key][e.op_id] = e.increment
        else:
            recheck.add(e.chunk)
    if not todo:
        return cur, recheck
    info = cur.info
    weights, bias = cur.weights.copy(), cur.bias
    bases, pending = dict(cur.bases), dict(cur.pending)
    for (p, k), incs in todo.items():
        lo, hi = info.chunk_bounds(p, k)
        held = weights[lo:hi] if p == "weights" else np.array([bias], info.dtype)
        base = bases.get((p, k), held.copy())
        pend = {**pending.get((p, k), {}), **incs}
        data = with_pending(base, pend)
        if p == "weights":
            weights[lo:hi] = data
        else:
            bias = float(data[0])
        bases[(p, k)], pending[(p, k)] = base, pend
    weights.flags.writeable = False
    return dataclasses.replace(cur, weights=weights, bias=bias, bases=bases, pending=pending,
                               loaded_at=time.time()), recheck
