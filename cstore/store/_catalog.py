"""The model catalog: a name → :class:`~cstore.core.ModelInfo` lookup with a short cache, creation and drop.

A model is visible only once complete: creation writes every chunk and index row first and the
``models`` row last (a compare-and-set on the name), and ``model_id`` names the incarnation, so
data of a dropped model can never mix with a new one of the same name.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cstore.backend import Cas, DropPlan, ParamTables, PurgeTables
from cstore.core import CodecPipeline, ModelInfo, chunk_context, uuid_now
from cstore.errors import CorruptData, CstoreError, ModelExists, UnknownModel, ValidationError
from cstore.store._snapshots import actor

log = logging.getLogger("cstore.store")
_INFO_TTL_S = 5.0


class Catalog:
    """Models by name, for one backend."""

    def __init__(self, tables: ParamTables, purge: PurgeTables) -> None:
        self._tables = tables
        self._purge = purge
        self._cache: dict[str, tuple[float, ModelInfo]] = {}

    def info(self, name: str, *, refresh: bool = False) -> ModelInfo:
        """The model's metadata (cached for a few seconds unless ``refresh``); UnknownModel says what exists."""
        cached = self._cache.get(name)
        if cached and not refresh and time.monotonic() - cached[0] < _INFO_TTL_S:
            return cached[1]
        if not isinstance(name, str):
            raise ValidationError(f"model name must be a string, got {type(name).__name__}")
        row = self._tables.model(name)
        if row is None:
            self._cache.pop(name, None)
            known = sorted(r["name"] for r in self._tables.models())
            hint = f"known models: {', '.join(known[:20])}" if known else "no models exist yet"
            raise UnknownModel(f"unknown model {name!r}; {hint} (create one with `cstore model create`)", model=name)
        info = ModelInfo.from_row(row)
        self._cache[name] = (time.monotonic(), info)
        return info

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)

    def all(self) -> list[ModelInfo]:
        """Every model, by name. A damaged ``models`` row is left out with a warning saying how to mend it,
        so that one bad row does not hide all the others (:meth:`info` on it raises ``CorruptData``)."""
        out = []
        for r in self._tables.models():
            try:
                out.append(ModelInfo.from_row(r))
            except CorruptData as exc:
                log.warning("skipped in the model list: %s", exc)
        return sorted(out, key=lambda m: m.name)

    def create(self, name: str, shapes: Mapping[str, tuple[int, ...]], initial: Mapping[str, np.ndarray], *,
               chunk_size: int, dtype: str, init: str, seed: int | None, meta_json: str, history_bucket_s: int,
               codec: CodecPipeline) -> ModelInfo:
        """Write a validated model: chunks and index rows first, the models row last."""
        if self._tables.model(name):
            raise ModelExists(f"model {name!r} already exists; pick another name or drop it first", model=name)
        info = ModelInfo(name, uuid.uuid4(), chunk_size, dtype, shapes, json.loads(meta_json),
                         history_bucket_s=history_bucket_s, history_indexed=True)
        rng = np.random.default_rng(seed)
        op_id = uuid_now()
        now = datetime.now(UTC)
        rows, index_rows = [], []
        for p, shape in shapes.items():
            full = initial.get(p)
            if full is None:
                full = (rng.normal(0, 0.01, size=shape) if init == "normal" else np.zeros(shape)).astype(dtype)
            flat = full.reshape(-1)
            for k in info.chunks_of(p):
                lo, hi = info.chunk_bounds(p, k)
                blob = codec.encode(flat[lo:hi], context=chunk_context(info.model_id, k, p))
                rows.append((info.model_id, k, p, blob, op_id, now))
                index_rows.append((info.model_id, p, k, op_id))
        self._tables.init_chunks(rows)
        self._tables.init_index(index_rows)
        cas = self._tables.create_model(name, info.model_id, now, actor(), chunk_size, dtype,
                                        json.dumps({k: list(v) for k, v in shapes.items()}), meta_json,
                                        history_bucket_s)
        # Refused or unknown, the row that is there tells: the driver may have re-sent our LWT after a
        # connection error, and then "not applied" is our own row.
        try:
            got = self.info(name, refresh=True)
        except UnknownModel:
            raise CstoreError(f"the creation of model {name!r} timed out and did not take effect; run it "
                              f"again") from None
        if cas.applied is not True and got.model_id != info.model_id:
            raise ModelExists(f"model {name!r} was created concurrently by someone else", model=name)
        return got

    def drop(self, name: str, *, history_bucket_s: int, history_ttl_s: int, max_age_s: int) -> dict[str, Any]:
        """Delete the models row (a compare-and-set on the incarnation), then everything the model owns.

        The drop is recorded first (``model_drops``) and the record deleted once the purge is complete,
        so a drop cut short is finished by dropping the name again (also once the name is free or taken
        by a new model: the purge only touches the recorded incarnation). Returns what was deleted.
        """
        pending = self._purge.unfinished(name)
        try:
            info = self.info(name, refresh=True)
        except UnknownModel:
            if not pending:
                raise
            info = None
        plans = [p for p in pending if info is None or p.model_id != info.model_id]
        if info is not None:
            plan = DropPlan(name, info.model_id, info.created_at, info.max_chunks,
                            info.history_bucket_seconds(history_bucket_s), info.history_indexed)
            self._purge.begin(plan, datetime.now(UTC), actor())
            self._delete_row(name, plan)
            plans.append(plan)
        tables: dict[str, int] = {}
        for plan in plans:
            report = self._purge.purge(plan, history_ttl_s=history_ttl_s, max_age_s=max_age_s)
            self._purge.finish(plan)
            for t, n in report.partitions.items():
                tables[t] = tables.get(t, 0) + n
        return {"model": name, "dropped": [str(p.model_id) for p in plans], "partitions": sum(tables.values()),
                "tables": tables}

    def _delete_row(self, name: str, plan: DropPlan) -> None:
        cas = self._tables.drop_model(name, plan.model_id)
        if cas.applied is None:  # unknown: look at what is there now
            row = self._tables.model(name)
            if row is not None and row["model_id"] == plan.model_id:
                self._purge.finish(plan)
                raise CstoreError(f"the drop of model {name!r} timed out and did not take effect; run it again")
            cas = Cas(row is None)
        if not cas.applied:
            self._purge.finish(plan)
            raise UnknownModel(f"model {name!r} changed while dropping it; look again with `cstore model list`",
                               model=name)
        self.forget(name)
