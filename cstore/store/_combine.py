"""Combining the updates of one chunk in a commit round: their transforms applied in arrival order.

Pure (no I/O): the :class:`~cstore.store._committer.Committer` calls :func:`combine` per chunk of a
round and finishes the updates that failed; the others share the round's one compare-and-set of the
chunk, which :func:`round_writes` plans with the round's history rows.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from cstore.backend import ChunkWrite
from cstore.core import ChunkRow, CommitMeta, ModelInfo, Transform, UpdateResult
from cstore.errors import CstoreError
from cstore.store._engine import ChunkEngine, missing_chunk
from cstore.store._rows import plan_write

__all__ = ["Change", "Request", "Round", "combine", "round_writes"]

#: Per parameter: the chunk's new values and the chunk-local coordinates the updates touched.
Change = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(eq=False)
class Request:
    """One update waiting in a committer: its transform, what it has left to commit, its future."""

    info: ModelInfo
    transform: Transform
    meta: CommitMeta
    lr: float | None
    update_id: uuid.UUID | None          # updates spanning chunks: each chunk committed alone, exactly once
    left: set[int]
    deadline: float
    future: Future[UpdateResult]
    result: UpdateResult
    error: CstoreError | None = None     # the last transient error met (raised if time runs out)
    conflicts: int = 0


@dataclass
class Round:
    """The chunks one thread commits together, and the updates each carries."""

    info: ModelInfo
    chunks: dict[int, list[Request]] = field(default_factory=dict)


def combine(info: ModelInfo, k: int, rows: Mapping[str, ChunkRow], transforms: Sequence[Transform]
            ) -> tuple[Change | None, dict[str, ChunkRow], dict[int, CstoreError]]:
    """Apply ``transforms`` in order to chunk ``k``'s ``rows``: the combined change (None when no
    transform changed anything), the rows it leads to, and per failed transform (by position) its
    error — a failed one changes nothing and the others still apply."""
    cur = dict(rows)
    touched: dict[str, list[np.ndarray]] = defaultdict(list)
    failed: dict[int, CstoreError] = {}
    for i, transform in enumerate(transforms):
        try:
            out = transform(k, cur)
            missing = [p for p in out if p not in cur]
            if missing:
                raise missing_chunk(info, missing[0], k)
        except KeyError as exc:
            failed[i] = missing_chunk(info, str(exc.args[0]) if exc.args else "?", k)
            continue
        except CstoreError as exc:
            failed[i] = exc
            continue
        for p, (new, t) in out.items():
            cur[p] = ChunkRow(p, new, rows[p].version, rows[p].op_id, rows[p].deltas, rows[p].delta_bytes)
            touched[p].append(np.asarray(t, dtype=np.int32))
    if not touched:
        return None, cur, failed
    return {p: (cur[p].data, ts[0] if len(ts) == 1 else np.unique(np.concatenate(ts)))
            for p, ts in touched.items()}, cur, failed


def round_writes(engine: ChunkEngine, info: ModelInfo, rows: Mapping[int, Mapping[str, ChunkRow]],
                 changes: Mapping[int, Change], op_ids: Mapping[int, uuid.UUID], metas: Mapping[int, CommitMeta]
                 ) -> tuple[dict[int, dict[str, ChunkWrite]], dict[int, dict[int, list[tuple[object, ...]]]]]:
    """A round's writes per chunk and parameter (:func:`plan_write`: a delta entry or the whole chunk,
    folding the rows' increments), and its history rows per bucket and chunk (one request per bucket)."""
    writes: dict[int, dict[str, ChunkWrite]] = {}
    history: dict[int, dict[int, list[tuple[object, ...]]]] = defaultdict(dict)  # bucket -> chunk -> rows
    for k, change in changes.items():
        bucket = engine.bucket_of(info, op_ids[k])
        writes[k], history[bucket][k] = {}, []
        for p, (new, touched) in change.items():
            writes[k][p], sparse = plan_write(engine.codec, info, k, rows[k][p], new, touched, conditional=True)
            history[bucket][k].append(engine.history_row(info, k, rows[k][p], sparse, metas[k], op_ids[k], bucket))
    return writes, history
