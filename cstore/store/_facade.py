"""``Store``: the public face of the parameter store.

>>> import cstore                                          # doctest: +SKIP
>>> store = cstore.connect(keyspace="cstore")              # doctest: +SKIP
>>> store.create_model("fraud", {"weights": (1 << 20,), "bias": (1,)})   # doctest: +SKIP
>>> store.apply_update("fraud", "weights", [0.5, -0.25], indices=[3, 7], lr=0.1)  # doctest: +SKIP

The rooms above (feedback, training, scoring) get what they need from a ``Store`` through three
documented handles and nothing else: :attr:`Store.config`, :attr:`Store.backend` (the storage
boundary's table gateways) and :attr:`Store.chunks` (the chunk engine: read and commit chunks with
the commit protocol, the learners' way in).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cstore.backend import Backend
from cstore.backend import connect as connect_backend
from cstore.config import Config, Profile, codec_from_env, load_config
from cstore.core import (DEFAULT_CHUNK_SIZE, HEAD, Alias, ChunkRow, CodecPipeline, ModelInfo, UpdateResult,
                         encode_metadata, make_transform, validate_name, validate_spec, validated_update)
from cstore.errors import Closed, CstoreError, ValidationError
from cstore.store._catalog import Catalog
from cstore.store._committer import Committer
from cstore.store._engine import ChunkEngine, missing_chunk
from cstore.store._governance import KEEP, KEYSPACE_AUDIT, Governance
from cstore.store._lineage import DEFAULT_GROUPS, collect_lineage
from cstore.store._adder import Adder
from cstore.store._history import HistoryReader, HistoryRow, chain_between, replay_chunk
from cstore.store._increments import with_pending
from cstore.store._snapshots import Snapshots, rollback_meta, rollback_transform
from cstore.store._stats import StatsRecorder, Totals

_LONGEST_TABLE_TTL_S = 30 * 86400  # stats and the prediction-log counters (their tables' default TTL)

log = logging.getLogger("cstore.store")


@dataclass
class ModelState:
    """A read of a model: head version, arrays, and each chunk's version."""

    name: str
    version: int
    params: dict[str, np.ndarray]
    chunk_versions: dict[tuple[str, int], int] = field(default_factory=dict)
    op_ids: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)


class Store:
    """Models, chunked parameters, versioned updates, history, snapshots and stats."""

    def __init__(self, backend: Backend, codec: CodecPipeline | None = None) -> None:
        cfg = backend.config
        self.backend = backend
        self.config: Config = cfg
        self._codec = codec or CodecPipeline()
        self._stats = StatsRecorder(backend.params, cfg.stats_bucket_s)
        self.chunks = ChunkEngine(backend, self._codec, self._stats, max_retries=cfg.max_retries,
                                  history_bucket_s=cfg.history_bucket_s, history_ttl_s=cfg.history_ttl_s)
        # Group commit needs compare-and-set; blind writes (the eventual profile) commit on the caller's thread.
        self._committer = Committer(self.chunks, backend.params, timeout_s=cfg.commit_timeout_s) \
            if backend.profile.lwt else None
        self._adder: Adder | None = None  # additive updates as increments (submit_adds), made on first use
        self._catalog = Catalog(backend.params, backend.purge)
        self._history = HistoryReader(backend.params, cfg.history_bucket_s, cfg.history_ttl_s, self._codec)
        self._snapshots = Snapshots(backend.params, self.chunks)
        self.governance = Governance(backend, self._take_snapshot,
                                     lambda info, v: backend.params.snapshot(info.model_id, v) is not None)
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Config) -> Store:
        """Connect; chunks are encrypted at rest when CSTORE_ENCRYPTION_KEY(_FILE) is set."""
        codec = codec_from_env()  # key errors before connecting: nothing is written with a bad setup
        return cls(connect_backend(cfg, keyspace=cfg.keyspace), codec=codec)

    @property
    def profile(self) -> Profile:
        """The consistency profile in force (levels per operation, LWT or blind commits)."""
        return self.backend.profile

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Flush this process's stats and disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._adder is not None:
            self._adder.close()
        if self._committer is not None:
            self._committer.close()
        try:
            self._stats.flush()
        except Exception:  # closing must not fail because the cluster went away
            pass
        self.chunks.close()
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        if self._closed:
            raise Closed("this Store is closed; connect again with cstore.connect()")

    # -- models ------------------------------------------------------------------------------------
    def create_model(self, name: str, params: Mapping[str, Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     dtype: str = "float32", init: str = "zeros", seed: int | None = None,
                     metadata: Mapping[str, Any] | None = None) -> ModelInfo:
        """Create a model whose parameters map names to shapes (or to initial arrays)."""
        self._open()
        validate_name(name)
        shapes, initial = validate_spec(params, chunk_size, dtype)
        if init not in ("zeros", "normal"):
            raise ValidationError(f"init must be 'zeros' or 'normal', got {init!r}")
        info = self._catalog.create(name, shapes, initial, chunk_size=chunk_size, dtype=dtype, init=init, seed=seed,
                                    meta_json=encode_metadata(metadata), history_bucket_s=self.chunks.bucket_s,
                                    codec=self._codec)
        self.governance.record(name, "create", after=str(info.model_id),
                               details={"params": {p: list(s) for p, s in shapes.items()}, "chunk_size": chunk_size,
                                        "dtype": dtype})
        return info

    def model_info(self, name: str, *, refresh: bool = False) -> ModelInfo:
        """What the ``models`` table says about ``name`` (cached for a few seconds unless ``refresh``)."""
        self._open()
        return self._catalog.info(name, refresh=refresh)

    def list_models(self) -> list[ModelInfo]:
        """Every model, by name (a damaged ``models`` row is left out with a warning)."""
        self._open()
        return self._catalog.all()

    def describe(self, name: str) -> dict[str, Any]:
        info = self.model_info(name, refresh=True)
        heads = self._heads(info)
        return {**info.to_dict(), "head_version": sum(v for v, _ in heads.values()),
                "snapshots": [s.to_dict() for s in self._snapshots.list(info)]}

    def drop_model(self, name: str, *, confirm: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Delete a model and everything it owns in every table; ``confirm`` must repeat its name.

        Parameters, history, snapshots, stats, feedback, checkpoints and leases, learner state, batch
        traces, the prediction log, aliases and online metrics all go (``cstore/backend/_purge.py`` says
        how each is found). It cannot be undone. The audit trail of the name stays (``reason`` is
        recorded in it). Stop the model's workers and scorers first: what they write after the drop is
        theirs. Returns the partitions deleted per table.
        """
        if confirm != name:
            raise ValidationError(f"dropping {name!r} deletes its parameters, history, snapshots, feedback and "
                                  f"prediction log; confirm by repeating its name (confirm={name!r}, or "
                                  f"--confirm {name} on the CLI)")
        self._open()
        cfg = self.config
        report = self._catalog.drop(name, history_bucket_s=cfg.history_bucket_s, history_ttl_s=cfg.history_ttl_s,
                                    max_age_s=max(cfg.history_ttl_s, cfg.feedback_ttl_s, cfg.prediction_log_ttl_s,
                                                  _LONGEST_TABLE_TTL_S))
        for model_id in report["dropped"]:
            self.governance.record(name, "drop", before=model_id, reason=reason,
                                   details={"partitions_deleted": report["partitions"]})
        return report

    # -- reading -----------------------------------------------------------------------------------
    def read_model(self, name: str, *, params: Iterable[str] | None = None) -> ModelState:
        """All (or the named) parameters as numpy arrays, with the head version they add up to."""
        info = self.model_info(name)
        wanted = list(params) if params is not None else list(info.params)
        for p in wanted:
            info.require_param(p)
        chunks = self.chunks.read(info, range(max(info.n_chunks(p) for p in wanted)))
        return assemble(info, chunks, wanted)

    def head_version(self, name: str) -> int:
        """The model's head version (sum of its chunk versions), from one partition read; it includes
        every commit this store made (read-your-writes), and other writers' within milliseconds."""
        return sum(v for v, _ in self._heads(self.model_info(name)).values())

    def chunk_versions(self, name: str) -> dict[tuple[str, int], int]:
        return {k: v for k, (v, _) in self._heads(self.model_info(name)).items()}

    def _heads(self, info: ModelInfo) -> dict[tuple[str, int], tuple[int, Any]]:
        self.chunks.announcer.flush()  # commits are announced after they are acknowledged
        return self._history.heads(info)

    # -- updating ----------------------------------------------------------------------------------
    def apply_update(self, name: str, param: str, values: Any, *, indices: Any = None, lr: float = 1.0,
                     update_type: str = "gradient", source: str = "real_time",
                     metadata: Mapping[str, Any] | None = None, update_id: uuid.UUID | None = None) -> UpdateResult:
        """``new = old - lr * values`` at ``indices`` (or everywhere); ``update_type='direct'`` sets values."""
        return self.apply_updates(name, {param: (values if indices is None else (indices, values))}, lr=lr,
                                  update_type=update_type, source=source, metadata=metadata, update_id=update_id)

    def apply_updates(self, name: str, updates: Mapping[str, Any], *, lr: float = 1.0,
                      update_type: str = "gradient", source: str = "real_time",
                      metadata: Mapping[str, Any] | None = None, update_id: uuid.UUID | None = None) -> UpdateResult:
        """Several parameters at once: ``{param: values}`` (dense) or ``{param: (indices, values)}``.

        Each chunk commits atomically (all its parameters together). An update over several chunks is
        committed exactly once: conflicts and transient errors are retried for ``commit_timeout_s``; if
        some chunks still could not be, :class:`~cstore.errors.PartialCommit` names them and carries
        the update's ``update_id``, and submitting the same update again with that ``update_id``
        commits only the chunks that are missing. Concurrent updates of this process are combined
        into shared commit rounds (see ``cstore/store/_committer.py``).
        """
        return self.submit_updates(name, updates, lr=lr, update_type=update_type, source=source,
                                   metadata=metadata, update_id=update_id).result()

    def submit_updates(self, name: str, updates: Mapping[str, Any], *, lr: float = 1.0,
                       update_type: str = "gradient", source: str = "real_time",
                       metadata: Mapping[str, Any] | None = None,
                       update_id: uuid.UUID | None = None) -> Future[UpdateResult]:
        """:meth:`apply_updates` without waiting: the update is validated now (bad input raises here and
        writes nothing) and queued; the future gives its :class:`UpdateResult`, or raises what
        ``apply_updates`` would. For a service with many updates at once: the more are queued, the more
        share one compare-and-set per chunk, so one thread submitting many outruns many threads waiting
        on one each. Under a blind profile the commit runs on the calling thread, before this returns.
        """
        if update_id is not None and (not isinstance(update_id, uuid.UUID) or update_id.version != 1):
            raise ValidationError(f"update_id must be the time-based UUID a PartialCommit carries, got {update_id!r}")
        if update_id is not None and self._committer is None:
            raise ValidationError(f"update_id needs conditional writes; profile {self.profile.name!r} writes blind "
                                  f"(last writer wins), so it cannot tell which chunks an update committed")
        info = self.model_info(name)
        changes, lr, meta = validated_update(info, updates, lr, update_type, source, metadata,
                                             self.config.max_payload_bytes)
        chunks = sorted({k for per in changes.values() for k in per})
        step = meta.learning_rate
        transform = make_transform(changes, lr, update_type, info.dtype)
        if self._committer is None:
            done: Future[UpdateResult] = Future()
            try:
                done.set_result(self.chunks.commit(info, chunks, transform, meta, lr=step))
            except CstoreError as exc:
                done.set_exception(exc)
            return done
        return self._committer.submit(info, chunks, transform, meta, lr=step, update_id=update_id)

    def add(self, name: str, param: str, values: Any, *, indices: Any = None, lr: float = 1.0,
            update_type: str = "gradient", source: str = "real_time", metadata: Mapping[str, Any] | None = None,
            update_id: uuid.UUID | None = None) -> UpdateResult:
        """``new = old - lr * values`` at ``indices`` as an increment (:meth:`submit_adds`), waiting for it."""
        return self.submit_adds(name, {param: (values if indices is None else (indices, values))}, lr=lr,
                                update_type=update_type, source=source, metadata=metadata, update_id=update_id).result()

    def submit_adds(self, name: str, updates: Mapping[str, Any], *, lr: float = 1.0, update_type: str = "gradient",
                    source: str = "real_time", metadata: Mapping[str, Any] | None = None,
                    update_id: uuid.UUID | None = None) -> Future[UpdateResult]:
        """:meth:`submit_updates` for additive updates, without a compare-and-set: each is stored as an
        increment of its chunks (history row first; readers and scorers see it at once; the next commit
        of a chunk folds it into a version, and this process folds its own after a while). Many at once
        from any threads share rounds of two round trips: the high-rate form of atomic updates. Exactly
        once (``update_id`` as for ``submit_updates``); the future's result names the chunks but no new
        versions (``cstore/store/_adder.py``). ``update_type='direct'`` sets values: not additive, refused."""
        if update_type == "direct":
            raise ValidationError("a direct update sets values, which does not add up with concurrent ones: use "
                                  "apply_update(s) / submit_updates for it (nothing was written)")
        if update_id is not None and (not isinstance(update_id, uuid.UUID) or update_id.version != 1):
            raise ValidationError(f"update_id must be the time-based UUID a PartialCommit carries, got {update_id!r}")
        info, cap = self.model_info(name), self.config.max_payload_bytes
        changes, lr, meta = validated_update(info, updates, lr, update_type, source, metadata, cap)
        if self._adder is None:
            self._adder = Adder(self.chunks, self.backend.params, self._fold, timeout_s=self.config.commit_timeout_s)
        return self._adder.submit(info, changes, lr, meta, update_id)

    def _fold(self, info: ModelInfo, chunks: list[int]) -> object:
        return self._committer.fold(info, chunks) if self._committer is not None else None

    def record_drift(self, name: str, n: int = 1) -> None:
        """Count a detected drift in this bucket's stats."""
        self._stats.record(self.model_info(name).model_id, Totals(drift_events=n))
        self._stats.flush()

    # -- versions ----------------------------------------------------------------------------------
    def snapshot(self, name: str, *, reason: str, groups: Sequence[str] = DEFAULT_GROUPS) -> int:
        """An immutable copy of the current parameters; returns its version (the head it captured). Its
        lineage records the cstore version, the learner configuration and, per consumer group of
        ``groups``, the feedback checkpoints it covers and the workers (see ``_lineage.py``)."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("a snapshot needs a reason (who will read it later wants to know why)")
        if isinstance(groups, str) or not all(isinstance(g, str) and g for g in groups):
            raise ValidationError(f"groups must be a list of consumer group names, got {groups!r}")
        return self._take_snapshot(self.model_info(name), reason, groups)

    def _take_snapshot(self, info: ModelInfo, reason: str, groups: Sequence[str] = DEFAULT_GROUPS) -> int:
        lineage = collect_lineage(self.backend, info, groups)  # before the read: the checkpoints it covers
        version = self._snapshots.create(info, self.chunks.read(info, range(info.max_chunks)), reason, lineage)
        self.governance.record(info.name, "snapshot", after=version, reason=reason)
        return version

    def read_snapshot(self, name: str, version: int, *, params: Iterable[str] | None = None) -> ModelState:
        """The arrays of snapshot ``version`` (as :meth:`read_model` reads the head)."""
        info = self.model_info(name)
        return assemble(info, self._snapshots.load(info, int(version)), params)

    def versions(self, name: str) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self._snapshots.list(self.model_info(name))]

    def rollback(self, name: str, to_version: int, *, reason: str) -> int:
        """Write snapshot ``to_version`` back as a new head version; returns the new head."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("a rollback needs a reason")
        info = self.model_info(name)
        snap = self._snapshots.load(info, int(to_version))
        meta = rollback_meta(int(to_version), reason, encode_metadata)
        self.chunks.commit(info, sorted(snap), rollback_transform(snap), meta)
        head = self.head_version(name)
        self.governance.record(name, "rollback", before=to_version, after=head, reason=reason)
        return head

    # -- governance (see cstore/store/_governance.py) -----------------------------------------------
    def set_alias(self, name: str, alias: str, target: int | str = HEAD, *, reason: str, guard: Any = KEEP,
                  force: bool = False, actor: str | None = None) -> Alias:
        """Point ``name@alias`` at ``"head"`` or a snapshot version (creating the alias); ``guard``: a
        :class:`~cstore.learn.GuardRule` (or its mapping) to watch it, None to remove it, or kept."""
        return self.governance.set_alias(self.model_info(name), alias, target, reason=reason, guard=guard,
                                         force=force, actor=actor)

    def promote(self, name: str, alias: str, target: int | str = HEAD, *, reason: str, force: bool = False,
                actor: str | None = None) -> Alias:
        """Move an existing alias forward after review; :class:`~cstore.errors.GuardFailing` while its
        guard fails, unless ``force`` (the reason is recorded)."""
        return self.governance.promote(self.model_info(name), alias, target, reason=reason, force=force, actor=actor)

    def alias(self, name: str, alias: str) -> Alias:
        return self.governance.alias(self.model_info(name), alias)

    def aliases(self, name: str) -> list[Alias]:
        return self.governance.aliases(self.model_info(name))

    def audit(self, name: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """Who did what to ``name``, newest first (kept after a drop); ``"*"``: keyspace-wide actions."""
        if name != KEYSPACE_AUDIT:
            validate_name(name)
        return self.governance.audit(name, limit)

    # -- history & stats ---------------------------------------------------------------------------
    def history(self, name: str, *, since: float | datetime | None = None, until: float | datetime | None = None,
                param: str | None = None, attempts: bool = False) -> list[HistoryRow]:
        """Committed chunk updates, oldest first; ``attempts=True`` also lists the attempts that lost a
        conflict or whose writer died before its compare-and-set (every row of the history table)."""
        info = self.model_info(name)
        if param is not None:
            info.require_param(param)
        if attempts:
            return [h for h in self._history.rows(info, since=_ts(since), until=_ts(until))
                    if param is None or h.param == param]
        self.chunks.announcer.flush()  # the chain walk starts from the index
        return self._history.committed(info, since=_ts(since), until=_ts(until), param=param)

    def replay(self, name: str, from_version: int) -> dict[str, np.ndarray]:
        """Rebuild the current parameters from snapshot ``from_version`` plus the history after it."""
        info = self.model_info(name)
        snap = self._snapshots.load(info, from_version)
        header = next(s for s in self._snapshots.list(info) if s.version == from_version)
        since = header.created_at.replace(tzinfo=UTC).timestamp() - 3600 if header.created_at else None
        by_op = {(h.op_id, h.param): h for h in self._history.rows(info, since=since)}
        head = self.chunks.read(info, range(info.max_chunks))
        rebuilt: dict[int, dict[str, ChunkRow]] = {}
        for k, snap_rows in snap.items():
            rebuilt[k] = {}
            for p, base in snap_rows.items():
                chain = chain_between(by_op, p, head[k][p].op_id, base.op_id)
                data = replay_chunk(base.data, chain)  # the head's versions; then its pending increments, as a read
                rebuilt[k][p] = ChunkRow(p, with_pending(data, head[k][p].pending), head[k][p].version,
                                         head[k][p].op_id)
        return assemble(info, rebuilt).params

    def stats(self, name: str, *, since: float | datetime | None = None) -> list[dict[str, Any]]:
        self._stats.flush()
        since_ts = _ts(since)
        start = since_ts if since_ts is not None else time.time() - 3600
        return self._stats.read(self.model_info(name).model_id, start)


def assemble(info: ModelInfo, chunks: Mapping[int, Mapping[str, ChunkRow]],
             wanted: Iterable[str] | None = None) -> ModelState:
    """Whole arrays from decoded chunks; a chunk row the metadata promises and that is absent raises."""
    names = list(wanted or info.params)
    arrays, versions, ops = {}, {}, {}
    for p in names:
        flat = np.empty(info.size(p), dtype=info.dtype)
        for k in info.chunks_of(p):
            row = chunks[k].get(p)
            if row is None:
                raise missing_chunk(info, p, k)
            lo, hi = info.chunk_bounds(p, k)
            flat[lo:hi] = row.data
            versions[(p, k)] = row.version
            ops[(p, k)] = row.op_id
        arrays[p] = flat.reshape(info.params[p])
    return ModelState(info.name, sum(versions.values()), arrays, versions, ops)


def _ts(value: float | datetime | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    raise ValidationError(f"expected a datetime or epoch seconds, got {value!r}")


def connect(config_file: str | None = None, **config: Any) -> Store:
    """Connect with configuration from arguments > CSTORE_* environment > config file > defaults."""
    return Store.from_config(load_config(config, config_file=config_file))
