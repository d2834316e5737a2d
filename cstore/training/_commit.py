"""How a learned bulk batch is committed: every touched chunk exactly once, by compare-and-set.

(The critical lane stores its batches as increments instead: :meth:`CriticalLane.increment`.)
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from cstore.core import ChunkRow, CommitMeta, ModelInfo, Transform, UpdateResult
from cstore.errors import CstoreError, PartialCommit, TransientError, UnknownOutcome
from cstore.store import Committer, Store

__all__ = ["commit_batch"]

log = logging.getLogger("cstore.worker")


def commit_batch(store: Store, info: ModelInfo, chunks: list[int], transform: Transform, meta_json: str,
                 current: Mapping[int, Mapping[str, ChunkRow]], lr_scale: float, committer: Committer | None,
                 on_commit: Callable[[UpdateResult, float], None] | None = None) -> None:
    """Commit every touched chunk exactly once: in rounds through ``committer`` (one history request,
    every compare-and-set at once, conflicts re-applied), a partial commit finished with its
    ``update_id`` (only the missing chunks). Blind-write profiles commit through the engine."""
    meta = CommitMeta("gradient", lr_scale, "feedback", meta_json)
    remaining, attempt, update_id = list(chunks), 0, None
    while remaining:
        cause: CstoreError
        try:
            t0 = time.perf_counter()
            if committer is None:
                result = store.chunks.commit(info, remaining, transform, meta, lr=lr_scale,
                                             current={k: current[k] for k in remaining} if attempt == 0 else None)
            else:
                result = committer.submit(info, chunks, transform, meta, lr=lr_scale, update_id=update_id,
                                          current=current if attempt == 0 else None).result()
            if on_commit is not None:
                on_commit(result, time.perf_counter() - t0)
            return
        except PartialCommit as exc:
            remaining, cause, update_id = exc.failed, exc.cause, exc.update_id
        except (TransientError, UnknownOutcome) as exc:
            cause = exc
        if isinstance(cause, UnknownOutcome):
            # Applied once or not at all; retrying could apply it twice. Count it and move on.
            log.error("commit outcome unknown for a chunk of batch; it is learned at most once")
            return
        if not isinstance(cause, TransientError):
            raise cause
        attempt += 1
        if attempt > 8:
            raise cause
        log.warning("commit of chunks %s failed (%s); retrying them", remaining, cause)
        time.sleep(min(2.0, 0.05 * 2 ** attempt))
