"""Combining the updates of one chunk in a commit round: their transforms applied in arrival order.

Pure (no I/O): the :class:`~cstore.store._committer.Committer` calls it per chunk of a round and
finishes the updates that failed; the others share the round's one compare-and-set of the chunk.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from cstore.core import ChunkRow, ModelInfo, Transform
from cstore.errors import CstoreError
from cstore.store._engine import missing_chunk

__all__ = ["Change", "combine"]

#: Per parameter: the chunk's new values and the chunk-local coordinates the updates touched.
Change = dict[str, tuple[np.ndarray, np.ndarray]]


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
