"""A model's feedback layout, and the per-store state every producer and consumer of feedback shares.

Storage (``cql/002_feedback.cql``): the entity id hashes to one of P partitions (a *critical* event
goes to partition P, the critical partition, whatever its entity), the kind picks a priority *lane*,
the producer's clock stamps each segment with a timeuuid whose time picks the bucket. A segment
is one CQL row holding many msgpack-encoded events. The layout (P, bucket width, TTL, lateness
window, kind → lane) is fixed when a model's feedback is first written, so that every producer and
consumer agrees on it for the model's whole life.

Lateness contract (what lets consumers checkpoint by time without missing late segments, see
``_reader``): a segment counts as written only if its write was acknowledged within ``lateness_s / 2``
of its stamp; a slower acknowledgement makes the writer re-send the same events under a fresh stamp
(a possible duplicate, never a loss). The other half of the window absorbs clock skew between
producers and consumers.
"""
from __future__ import annotations

import threading
import uuid
import weakref
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cstore.backend import FeedbackTables, Row
from cstore.core import TICKS_PER_S, ModelInfo
from cstore.errors import ValidationError
from cstore.feedback._events import DEFAULT_PRIORITIES, KINDS
from cstore.store import Store

__all__ = ["FeedbackContext", "FeedbackLayout", "check_layout", "context"]


# -- the per-model layout ----------------------------------------------------------------------------
def _entity_key(entity_id: str | int) -> bytes:
    """The bytes an entity id is partitioned by."""
    return str(entity_id).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class FeedbackLayout:
    """How a model's feedback is laid out; fixed when first written."""

    model_id: uuid.UUID
    partitions: int
    bucket_s: int
    ttl_s: int
    lateness_s: int
    priorities: Mapping[str, int]
    created_at: float

    @property
    def lanes(self) -> tuple[int, ...]:
        """Lane numbers, highest priority (lowest number) first."""
        return tuple(sorted(set(self.priorities.values())))

    @property
    def critical_part(self) -> int:
        """The feedback partition of critical events (numbered after the P bulk partitions): one worker
        of each group leases it and polls it every few milliseconds, beside its bulk partitions."""
        return self.partitions

    def part_of(self, entity_id: str | int) -> int:
        # CRC-32: stable across processes and versions, and ~8x cheaper than a keyed hash, which matters
        # at 100k events/s. Only the write side uses it (readers list every partition), so the choice
        # affects balance and per-entity order, never what is read.
        return zlib.crc32(_entity_key(entity_id)) % self.partitions

    def parts_of(self, entity_ids: list[Any]) -> np.ndarray:
        """:meth:`part_of` of many ids at once."""
        crcs = map(zlib.crc32, map(_entity_key, entity_ids))
        return np.fromiter(crcs, dtype=np.int64, count=len(entity_ids)) % self.partitions

    def lane_of(self, kind: str) -> int:
        return self.priorities[kind]

    def bucket_of(self, ticks: int) -> int:
        return ticks // (self.bucket_s * TICKS_PER_S)

    def to_dict(self) -> dict[str, Any]:
        return {"partitions": self.partitions, "bucket_s": self.bucket_s, "ttl_s": self.ttl_s,
                "lateness_s": self.lateness_s, "priorities": dict(self.priorities), "created_at": self.created_at}


def check_layout(partitions: int, bucket_s: int, ttl_s: int, lateness_s: int,
                 priorities: Mapping[str, int]) -> None:
    """Reject a feedback layout that would not work, with the reason."""
    for name, v, lo, hi in (("partitions", partitions, 1, 1024), ("bucket_s", bucket_s, 1, 86400),
                            ("ttl_s", ttl_s, 60, 10 * 365 * 86400), ("lateness_s", lateness_s, 1, 3600)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValidationError(f"feedback {name} must be an integer in [{lo}, {hi}], got {v!r}")
    if lateness_s * 2 >= ttl_s:
        raise ValidationError(f"feedback lateness_s ({lateness_s}) must be well below ttl_s ({ttl_s})")
    if not isinstance(priorities, Mapping) or set(priorities) != set(KINDS):
        raise ValidationError(f"feedback priorities must map every kind ({', '.join(KINDS)}) to a lane 0-9")
    if any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9 for p in priorities.values()):
        raise ValidationError(f"feedback priorities must be integers 0-9 (0 = learned first), got {dict(priorities)}")


def _layout_from_row(row: Row) -> FeedbackLayout:
    created = row["created_at"]
    return FeedbackLayout(row["model_id"], row["partitions"], row["bucket_s"], row["ttl_s"], row["lateness_s"],
                          dict(row["priorities"] or DEFAULT_PRIORITIES),
                          created.replace(tzinfo=UTC).timestamp() if created else 0.0)


def ensure_layout(tables: FeedbackTables, model_id: uuid.UUID, *, partitions: int, bucket_s: int, ttl_s: int,
                  lateness_s: int, priorities: Mapping[str, int] | None = None,
                  create: bool = True) -> FeedbackLayout | None:
    """The model's layout, creating it with these values if none exists yet (first writer wins).

    ``create=False`` only reads: None when the model has never had feedback nor a learner.
    """
    row = tables.layout(model_id)
    if row is not None:
        return _layout_from_row(row)
    if not create:
        return None
    prios = dict(priorities or DEFAULT_PRIORITIES)
    check_layout(partitions, bucket_s, ttl_s, lateness_s, prios)
    cas = tables.create_layout(model_id, partitions, bucket_s, ttl_s, lateness_s, prios, datetime.now(UTC))
    if cas.applied is False and cas.row is not None:  # somebody else created it first: theirs is the layout
        return _layout_from_row(cas.row)
    row = tables.layout(model_id)
    if row is None:
        raise ValidationError(f"the feedback layout of model {model_id} could not be created (the write timed "
                              f"out and did not take effect); try again")
    return _layout_from_row(row)


class FeedbackContext:
    """Per-``Store`` feedback state: the tables, layouts, and which buckets this process announced."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tables = store.backend.feedback
        self.codec = store.chunks.codec  # the key ring of the chunks seals segments too
        self.writer_id = uuid.uuid4().hex[:16]
        self._configs: dict[uuid.UUID, FeedbackLayout] = {}
        self._announced: set[tuple[uuid.UUID, int, int, int]] = set()
        self._lock = threading.Lock()

    def layout(self, model: str, *, create: bool = True, **layout: Any) -> tuple[ModelInfo, FeedbackLayout]:
        """``(ModelInfo, FeedbackLayout)`` for ``model``; unknown models raise UnknownModel.

        ``create=False`` never writes: a model without a feedback layout raises ValidationError.
        """
        info = self.store.model_info(model)
        cfg = self._configs.get(info.model_id)
        if cfg is None:
            c = self.store.config
            opts = {"partitions": c.feedback_partitions, "bucket_s": c.feedback_bucket_s,
                    "ttl_s": c.feedback_ttl_s, "lateness_s": c.feedback_lateness_s, **layout}
            cfg = ensure_layout(self.tables, info.model_id, create=create, **opts)
            if cfg is None:
                raise ValidationError(f"model {model!r} has no feedback yet and is not a learner; create one "
                                      f"with `cstore model create-learner` or send feedback first")
            self._configs[info.model_id] = cfg
        return info, cfg

    def unannounced(self, cfg: FeedbackLayout, keys: set[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        with self._lock:
            return [k for k in keys if (cfg.model_id, *k) not in self._announced]

    def mark_announced(self, cfg: FeedbackLayout, keys: list[tuple[int, int, int]]) -> None:
        with self._lock:
            self._announced.update((cfg.model_id, *k) for k in keys)
            if len(self._announced) > 100_000:  # old buckets are never written again
                self._announced.clear()


_CONTEXTS: weakref.WeakKeyDictionary[Store, FeedbackContext] = weakref.WeakKeyDictionary()
_CONTEXTS_LOCK = threading.Lock()


def context(store: Store) -> FeedbackContext:
    """The feedback state of ``store`` (one per store, shared by its writers and readers)."""
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(store)
        if ctx is None:
            ctx = _CONTEXTS[store] = FeedbackContext(store)
        return ctx
