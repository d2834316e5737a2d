"""``Store``: the public face of the parameter store.

>>> import cstore                                          # doctest: +SKIP
>>> store = cstore.connect(keyspace="cstore")              # doctest: +SKIP
>>> store.create_model("fraud", {"weights": (1 << 20,), "bias": (1,)})   # doctest: +SKIP
>>> store.apply_update("fraud", "weights", [0.5, -0.25], indices=[3, 7], lr=0.1)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import numpy as np
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.util import uuid_from_time

from cstore import history as hist
from cstore.codec import CodecPipeline, chunk_context
from cstore.config import Config, load_config
from cstore.errors import CorruptData, CstoreError, ModelExists, UnknownModel, ValidationError
from cstore.models import DEFAULT_CHUNK_SIZE, ModelInfo, encode_metadata, validate_name, validate_spec
from cstore.params import ChunkEngine, ChunkRow, CommitMeta, Transform, replica_errors
from cstore.session import Connection, connect as connect_session
from cstore.stats import StatsRecorder, Totals
from cstore.updates import UpdateResult, check_kind, check_learning_rate, make_transform, split_update
from cstore.versions import Versions, actor, rollback_meta, rollback_transform

log = logging.getLogger("cstore.store")
_INFO_TTL_S = 5.0


@dataclass
class ModelState:
    """A read of a model: head version, arrays, and each chunk's version."""

    name: str
    version: int
    params: dict[str, np.ndarray]
    chunk_versions: dict[tuple[str, int], int] = field(default_factory=dict)
    op_ids: dict[tuple[str, int], uuid.UUID] = field(default_factory=dict, repr=False)


class Store:
    """Models, chunked parameters, versioned updates, history, snapshots and stats."""

    def __init__(self, conn: Connection, codec: CodecPipeline | None = None) -> None:
        cfg = conn.config
        self.conn = conn
        self.config = cfg
        self.session = conn.session
        self.profile = conn.profile
        self.codec = codec or CodecPipeline()
        self.stats_recorder = StatsRecorder(self.session, cfg.stats_bucket_s)
        self.engine = ChunkEngine(conn, self.codec, self.stats_recorder, max_retries=cfg.max_retries,
                                  history_bucket_s=cfg.history_bucket_s, history_ttl_s=cfg.history_ttl_s)
        self.history_reader = hist.HistoryReader(self.session, cfg.history_bucket_s, cfg.history_ttl_s, self.codec)
        self.versions_mgr = Versions(self.session, self.engine)
        self._pool: ThreadPoolExecutor | None = None
        self._info_cache: dict[str, tuple[float, ModelInfo]] = {}
        self._last_stats_flush = time.monotonic()
        p = self.session.prepare
        self.q_model = p("SELECT * FROM models WHERE name = ?")
        self.q_models = p("SELECT * FROM models")
        self.q_create = p("INSERT INTO models (name, model_id, created_at, created_by, chunk_size, dtype, params, "
                          "metadata, history_bucket_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self.q_drop = p("DELETE FROM models WHERE name = ? IF model_id = ?")
        self.q_init = p("INSERT INTO chunks (model_id, chunk, param, data, version, op_id, updated_at) "
                        "VALUES (?, ?, ?, ?, 1, ?, ?)")
        self.q_init_index = p("INSERT INTO chunk_versions (model_id, param, chunk, version, op_id) "
                              "VALUES (?, ?, ?, 1, ?) USING TIMESTAMP 1")
        self.q_drop_chunks = p("DELETE FROM chunks WHERE model_id = ? AND chunk = ?")
        self.q_drop_index = p("DELETE FROM chunk_versions WHERE model_id = ?")
        self.q_drop_snapshots = p("DELETE FROM snapshots WHERE model_id = ?")

    @classmethod
    def from_config(cls, cfg: Config) -> "Store":
        """Connect; chunks are encrypted at rest when CSTORE_ENCRYPTION_KEY(_FILE) is set (cstore/crypto.py)."""
        from cstore.crypto import pipeline_from_env
        codec = pipeline_from_env()  # key errors before connecting: nothing is written with a bad setup
        return cls(connect_session(cfg, keyspace=cfg.keyspace), codec=codec)

    def close(self) -> None:
        try:
            self.stats_recorder.flush()
        except Exception:  # closing must not fail because the cluster went away
            pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models ------------------------------------------------------------------------------------
    def create_model(self, name: str, params: Mapping[str, Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     dtype: str = "float32", init: str = "zeros", seed: int | None = None,
                     metadata: Mapping[str, Any] | None = None) -> ModelInfo:
        """Create a model whose parameters map names to shapes (or to initial arrays)."""
        validate_name(name)
        shapes, initial = validate_spec(params, chunk_size, dtype)
        if init not in ("zeros", "normal"):
            raise ValidationError(f"init must be 'zeros' or 'normal', got {init!r}")
        meta_json = encode_metadata(metadata)
        if self.session.execute(self.q_model, (name,), execution_profile="read_model").one():
            raise ModelExists(f"model {name!r} already exists; pick another name or drop it first")
        info = ModelInfo(name, uuid.uuid4(), chunk_size, dtype, shapes, json.loads(meta_json),
                         history_bucket_s=self.engine.bucket_s)
        rng = np.random.default_rng(seed)
        op_id = uuid_from_time(time.time())
        now = datetime.now(timezone.utc)
        args, index_args = [], []
        for p, shape in shapes.items():
            full = initial.get(p)
            if full is None:
                full = (rng.normal(0, 0.01, size=shape) if init == "normal" else np.zeros(shape)).astype(dtype)
            flat = full.reshape(-1)
            for k in info.chunks_of(p):
                lo, hi = info.chunk_bounds(p, k)
                blob = self.codec.encode(flat[lo:hi], context=chunk_context(info.model_id, k, p))
                args.append((info.model_id, k, p, blob, op_id, now))
                index_args.append((info.model_id, p, k, op_id))
        # Chunks first, the models row last: a model is visible only once complete.
        execute_concurrent_with_args(self.session, self.q_init, args, concurrency=32, raise_on_first_error=True,
                                     execution_profile="commit_chunk")
        execute_concurrent_with_args(self.session, self.q_init_index, index_args, concurrency=32,
                                     raise_on_first_error=True, execution_profile="commit_chunk")
        rs = self.session.execute(self.q_create, (name, info.model_id, now, actor(), chunk_size, dtype,
                                                  json.dumps({k: list(v) for k, v in shapes.items()}), meta_json,
                                                  info.history_bucket_s),
                                  execution_profile="coordination")
        # "Not applied" can be our own row: the driver re-sends an LWT to another node after a connection error.
        if not rs.was_applied and rs.one().get("model_id") != info.model_id:
            raise ModelExists(f"model {name!r} was created concurrently by someone else")
        return self.model_info(name, refresh=True)

    def model_info(self, name: str, *, refresh: bool = False) -> ModelInfo:
        cached = self._info_cache.get(name)
        if cached and not refresh and time.monotonic() - cached[0] < _INFO_TTL_S:
            return cached[1]
        if not isinstance(name, str):
            raise ValidationError(f"model name must be a string, got {type(name).__name__}")
        with replica_errors("read_model"):
            row = self.session.execute(self.q_model, (name,), execution_profile="read_model").one()
        if row is None:
            self._info_cache.pop(name, None)
            known = sorted(r["name"] for r in self.session.execute(self.q_models))
            hint = f"known models: {', '.join(known[:20])}" if known else "no models exist yet"
            raise UnknownModel(f"unknown model {name!r}; {hint} (create one with `cstore model create`)")
        info = ModelInfo.from_row(row)
        self._info_cache[name] = (time.monotonic(), info)
        return info

    def list_models(self) -> list[ModelInfo]:
        """Every model, by name. A damaged ``models`` row is left out with a warning saying how to mend it,
        so that one bad row does not hide all the others (``model_info`` on it raises ``CorruptData``)."""
        out = []
        for r in self.session.execute(self.q_models, execution_profile="read_model"):
            try:
                out.append(ModelInfo.from_row(r))
            except CorruptData as exc:
                log.warning("skipped in the model list: %s", exc)
        return sorted(out, key=lambda m: m.name)

    def describe(self, name: str) -> dict[str, Any]:
        info = self.model_info(name, refresh=True)
        heads = self.history_reader.heads(info)
        return {**info.to_dict(), "head_version": sum(v for v, _ in heads.values()),
                "snapshots": [s.to_dict() for s in self.versions_mgr.list(info)]}

    def drop_model(self, name: str, *, confirm: str | None = None) -> None:
        """Delete a model; ``confirm`` must repeat its name (it cannot be undone)."""
        if confirm != name:
            raise ValidationError(f"dropping {name!r} deletes its parameters and snapshots; confirm by "
                                  f"repeating its name (confirm={name!r}, or --confirm {name} on the CLI)")
        info = self.model_info(name, refresh=True)
        rs = self.session.execute(self.q_drop, (name, info.model_id), execution_profile="coordination")
        if not rs.was_applied:
            raise UnknownModel(f"model {name!r} changed while dropping it; look again with `cstore model list`")
        self._info_cache.pop(name, None)
        execute_concurrent_with_args(self.session, self.q_drop_chunks,
                                     [(info.model_id, k) for k in range(info.max_chunks)], concurrency=32)
        self.session.execute(self.q_drop_index, (info.model_id,))
        self.session.execute(self.q_drop_snapshots, (info.model_id,))

    # -- reading -----------------------------------------------------------------------------------
    def read_chunks(self, info: ModelInfo, chunks: Iterable[int]) -> dict[int, dict[str, ChunkRow]]:
        ks = list(chunks)
        with replica_errors("read_model"):
            results = execute_concurrent_with_args(self.session, self.engine.q_select,
                                                   [(info.model_id, k) for k in ks], concurrency=64,
                                                   raise_on_first_error=True, execution_profile="read_model")
        return {k: self.engine.decode_rows(info, k, rows) for k, (ok, rows) in zip(ks, results)}

    def read_model(self, name: str, *, params: Iterable[str] | None = None) -> ModelState:
        """All (or the named) parameters as numpy arrays, with the head version they add up to."""
        info = self.model_info(name)
        wanted = list(params) if params is not None else list(info.params)
        for p in wanted:
            info.require_param(p)
        chunks = self.read_chunks(info, range(max(info.n_chunks(p) for p in wanted)))
        return self.assemble(info, chunks, wanted)

    @staticmethod
    def assemble(info: ModelInfo, chunks: Mapping[int, Mapping[str, ChunkRow]],
                 wanted: Iterable[str] | None = None) -> ModelState:
        wanted = list(wanted or info.params)
        arrays, versions, ops = {}, {}, {}
        for p in wanted:
            flat = np.empty(info.size(p), dtype=info.dtype)
            for k in info.chunks_of(p):
                row = chunks[k].get(p)
                if row is None:
                    raise CstoreError(f"model {info.name!r} parameter {p!r} chunk {k} is missing")
                lo, hi = info.chunk_bounds(p, k)
                flat[lo:hi] = row.data
                versions[(p, k)] = row.version
                ops[(p, k)] = row.op_id
            arrays[p] = flat.reshape(info.params[p])
        return ModelState(info.name, sum(versions.values()), arrays, versions, ops)

    def head_version(self, name: str) -> int:
        """The model's head version (sum of its chunk versions), from one partition read."""
        return sum(v for v, _ in self.history_reader.heads(self.model_info(name)).values())

    def chunk_versions(self, name: str) -> dict[tuple[str, int], int]:
        return {k: v for k, (v, _) in self.history_reader.heads(self.model_info(name)).items()}

    # -- updating ----------------------------------------------------------------------------------
    def apply_update(self, name: str, param: str, values: Any, *, indices: Any = None, lr: float = 1.0,
                     update_type: str = "gradient", source: str = "real_time",
                     metadata: Mapping[str, Any] | None = None) -> UpdateResult:
        """``new = old - lr * values`` at ``indices`` (or everywhere); ``update_type='direct'`` sets values."""
        return self.apply_updates(name, {param: (values if indices is None else (indices, values))}, lr=lr,
                                  update_type=update_type, source=source, metadata=metadata)

    def apply_updates(self, name: str, updates: Mapping[str, Any], *, lr: float = 1.0,
                      update_type: str = "gradient", source: str = "real_time",
                      metadata: Mapping[str, Any] | None = None) -> UpdateResult:
        """Several parameters at once: ``{param: values}`` (dense) or ``{param: (indices, values)}``.

        Each chunk commits atomically (all its parameters together); chunks commit independently.
        """
        info = self.model_info(name)
        check_kind(update_type, source)
        lr = check_learning_rate(lr)
        if not isinstance(updates, Mapping) or not updates:
            raise ValidationError("updates must be a non-empty mapping of parameter name to values "
                                  "or to (indices, values)")
        meta_json = encode_metadata(metadata)
        changes = {}
        for param, spec in updates.items():
            indices, values = spec if isinstance(spec, tuple) else (None, spec)
            changes[param] = split_update(info, param, values, indices, update_type, self.config.max_payload_bytes)
        chunks = sorted({k for per in changes.values() for k in per})
        step = None if update_type == "direct" else lr  # a direct write has no learning rate
        meta = CommitMeta(update_type, step, source, meta_json)
        return self.commit_transform(name, chunks, make_transform(changes, lr, update_type, info.dtype), meta,
                                     lr=step)

    def commit_transform(self, name: str, chunks: Iterable[int], transform: Transform, meta: CommitMeta, *,
                         lr: float | None = None,
                         current: Mapping[int, Mapping[str, ChunkRow]] | None = None) -> UpdateResult:
        """Commit ``transform`` to each chunk (concurrently); the worker's path for optimizers."""
        info = self.model_info(name)
        chunks = list(chunks)
        result = UpdateResult(name)
        current = current or {}
        if len(chunks) == 1:
            futures = None
            outcomes = [self._commit_one(info, chunks[0], transform, meta, current.get(chunks[0]))]
        else:
            pool = self._executor()
            futures = [pool.submit(self._commit_one, info, k, transform, meta, current.get(k)) for k in chunks]
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result())
                except Exception as exc:  # keep going: other chunks may have committed
                    outcomes.append(exc)
        errors = [o for o in outcomes if isinstance(o, Exception)]
        result.commits = [o for o in outcomes if not isinstance(o, Exception) and o.new_versions]
        self._record(info, result, lr)
        if errors:
            err = errors[0]
            if result.commits:
                err.args = (f"{err.args[0] if err.args else err} (chunks {result.chunks} of this update were "
                            f"committed; the others were not)",)
            err.partial = result  # type: ignore[attr-defined]
            raise err
        return result

    def _commit_one(self, info, k, transform, meta, current):
        return self.engine.commit(info, k, transform, meta, current)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cstore-commit")
        return self._pool

    def _record(self, info: ModelInfo, result: UpdateResult, lr: float | None, drift_events: int = 0) -> None:
        with_lr = bool(result.commits) and lr is not None
        t = Totals(updates=1 if result.commits else 0, chunk_commits=len(result.commits), coords=result.coords,
                   lr_updates=int(with_lr), lr_sum=lr if with_lr else 0.0, lr_sq_sum=lr * lr if with_lr else 0.0,
                   conflicts=result.conflicts,
                   retries=result.retries, overwrites=result.overwrites,
                   bytes_written=sum(c.bytes_written for c in result.commits), drift_events=drift_events)
        self.stats_recorder.record(info.model_id, t)
        if time.monotonic() - self._last_stats_flush > 1.0:
            self._last_stats_flush = time.monotonic()
            self.stats_recorder.flush()

    def record_drift(self, name: str, n: int = 1) -> None:
        """Count a detected drift in this bucket's stats."""
        self.stats_recorder.record(self.model_info(name).model_id, Totals(drift_events=n))
        self.stats_recorder.flush()

    # -- feedback (logic in cstore/feedback.py and cstore/feedback_writer.py) ----------------------
    def feedback(self, model: str, entity_id: str | int, label: float, *, kind: str = "explicit",
                 confidence: float | None = None, event_time: float | datetime | str | None = None,
                 features: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Write one feedback event; returns once it is durable (validated first, nothing written if bad)."""
        from cstore.feedback import send_one
        send_one(self, model, entity_id, label, kind=kind, confidence=confidence, event_time=event_time,
                 features=features, metadata=metadata)

    def feedback_writer(self, model: str, **opts: Any):
        """A buffered :class:`cstore.feedback_writer.FeedbackWriter` (linger_ms, max_batch, max_buffer_bytes…)."""
        from cstore.feedback_writer import FeedbackWriter
        return FeedbackWriter(self, model, **opts)

    # -- versions ----------------------------------------------------------------------------------
    def snapshot(self, name: str, *, reason: str) -> int:
        """An immutable copy of the current parameters; returns its version (the head it captured)."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("a snapshot needs a reason (who will read it later wants to know why)")
        info = self.model_info(name)
        return self.versions_mgr.create(info, self.read_chunks(info, range(info.max_chunks)), reason)

    def versions(self, name: str) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.versions_mgr.list(self.model_info(name))]

    def rollback(self, name: str, to_version: int, *, reason: str) -> int:
        """Write snapshot ``to_version`` back as a new head version; returns the new head."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("a rollback needs a reason")
        info = self.model_info(name)
        snap = self.versions_mgr.load(info, int(to_version))
        meta = rollback_meta(int(to_version), reason, encode_metadata)
        self.commit_transform(name, sorted(snap), rollback_transform(snap), meta)
        return self.head_version(name)

    # -- history & stats ---------------------------------------------------------------------------
    def history(self, name: str, *, since: float | datetime | None = None, until: float | datetime | None = None,
                param: str | None = None) -> list[hist.HistoryRow]:
        """Committed chunk updates, oldest first (attempts that lost a conflict are left out)."""
        info = self.model_info(name)
        if param is not None:
            info.require_param(param)
        return self.history_reader.committed(info, since=_ts(since), until=_ts(until), param=param)

    def replay(self, name: str, from_version: int) -> dict[str, np.ndarray]:
        """Rebuild the current parameters from snapshot ``from_version`` plus the history after it."""
        info = self.model_info(name)
        snap = self.versions_mgr.load(info, from_version)
        header = next(s for s in self.versions_mgr.list(info) if s.version == from_version)
        since = header.created_at.replace(tzinfo=timezone.utc).timestamp() - 3600 if header.created_at else None
        rows = self.history_reader.rows(info, since=since)
        by_op = {(h.op_id, h.param): h for h in rows}
        head = self.read_chunks(info, range(info.max_chunks))
        rebuilt = {}
        for k, snap_rows in snap.items():
            rebuilt[k] = {}
            for p, base in snap_rows.items():
                chain = hist.chain_between(by_op, p, head[k][p].op_id, base.op_id)
                rebuilt[k][p] = ChunkRow(p, hist.replay_chunk(base.data, chain), head[k][p].version,
                                         head[k][p].op_id)
        return self.assemble(info, rebuilt).params

    def stats(self, name: str, *, since: float | datetime | None = None) -> list[dict[str, Any]]:
        self.stats_recorder.flush()
        since_ts = _ts(since) if since is not None else time.time() - 3600
        return self.stats_recorder.read(self.model_info(name).model_id, since_ts)


def _ts(value: float | datetime | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    raise ValidationError(f"expected a datetime or epoch seconds, got {value!r}")


def connect(config_file: str | None = None, **config: Any) -> Store:
    """Connect with configuration from arguments > CSTORE_* environment > config file > defaults."""
    return Store.from_config(load_config(config, config_file=config_file))
