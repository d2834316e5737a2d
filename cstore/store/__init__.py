"""The parameter store: models as chunked arrays with versioned compare-and-set commits.

* :class:`Store` (:func:`connect`) — the public face: create, read, update, snapshot, roll back,
  replay, history and stats of models.
* :class:`ChunkEngine` (``store.chunks``) — the commit protocol: history row first, then
  ``UPDATE … IF version = ?`` per chunk, conflicts re-applied, unknown outcomes resolved at SERIAL.
  Scorers (``cstore.scoring``) read through it.
* :class:`Committer` — commits in rounds on top of the engine: one history request and every chunk's
  compare-and-set at once, delta entries for small changes, known rows instead of a read, alike
  updates combined, exactly once across chunks (``update_id``). ``Store.apply_update(s)`` and the
  learners (``cstore.training``) commit through one. ``Committer.increment`` stores a critical label's
  change as *increments* of its rows instead (no compare-and-set; the next commit of each row folds
  them) and announces them on the increment feed that scorers poll (:func:`with_pending`,
  :func:`decode_increment`, :data:`SCORED_PARAMS`).
* :class:`Governance` (``store.governance``) — aliases (``fraud@champion``) with their guards, the
  guards' online metrics and the audit trail of every governance and admin action.
* the history (:class:`HistoryRow`: each chunk's commit chain, replayable bit for bit), snapshots
  (immutable copies with provenance) and per-writer statistics buckets.
"""
from cstore.store._committer import Committer
from cstore.store._engine import CATCH_UP_BYTES, CATCH_UP_FROM, ChunkEngine, missing_chunk
from cstore.store._facade import ModelState, Store, assemble, connect
from cstore.store._governance import KEEP as KEEP_GUARD
from cstore.store._governance import KEYSPACE_AUDIT, Governance
from cstore.store._history import HistoryRow
from cstore.store._increment_commit import Amounts, amounts_of
from cstore.store._increments import FEED_BUCKET_S, SCORED_PARAMS, decode_increment, with_pending
from cstore.store._snapshots import Snapshot, actor
from cstore.store._stats import Totals

__all__ = ["Amounts", "CATCH_UP_BYTES", "CATCH_UP_FROM", "FEED_BUCKET_S", "KEEP_GUARD", "KEYSPACE_AUDIT",
           "SCORED_PARAMS", "ChunkEngine", "Committer", "Governance", "HistoryRow", "ModelState",
           "Snapshot", "Store", "Totals", "actor", "amounts_of", "assemble", "connect", "decode_increment",
           "missing_chunk", "with_pending"]
