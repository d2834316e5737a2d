"""``apply``: coordinate updates per second committed through the worker's commit path (strong
profile, FTRL, micro-batches of sparse logistic regression learned as the worker learns them, per
event by default) vs the brief's naive design. A coordinate update is one distinct coordinate a
batch's commit changed."""
from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cstore.bench._runner import BenchContext, scenario
from cstore.bench._workload import hashed_batch
from cstore.core import ChunkRow, CommitMeta, Transform, UpdateResult, encode_metadata
from cstore.store import Store
from cstore.training import Learner, create_learner, learner_config

N_FEATURES = 1 << 20
CHUNK_SIZE = 1 << 18  # 4 chunks: one committer, so fewer and larger LWTs win (see RESULTS.md)


class RowCache:
    """The chunk rows this process committed last, so that the next micro-batch starts from them
    instead of re-reading every touched chunk.

    Safe under the strong profile: a commit is ``UPDATE … IF version = ?`` against the cached
    version, so if another writer moved a chunk meanwhile the LWT is refused and the engine re-reads
    that chunk and re-applies the transform — the cache can make a commit retry, never lose one.
    """

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, ChunkRow]] = {}
        self._out: dict[int, Mapping[str, tuple[np.ndarray, np.ndarray]]] = {}

    def capture(self, transform: Transform) -> Transform:
        """Wrap ``transform`` to remember its last output per chunk (the one that gets committed:
        a retry calls the transform again on fresh rows)."""
        def captured(chunk: int, rows: Mapping[str, ChunkRow]) -> Mapping[str, tuple[np.ndarray, np.ndarray]]:
            out = transform(chunk, rows)
            self._out[chunk] = out
            return out
        return captured

    def committed(self, result: UpdateResult, chunks: list[int]) -> None:
        done = {c.chunk: c for c in result.commits}
        for k in chunks:
            c = done.get(k)
            if c is None or k not in self.rows:
                self.rows.pop(k, None)  # not committed by us (or unknown): read it next time
                continue
            for p, (new, _) in self._out.get(k, {}).items():
                self.rows[k][p] = ChunkRow(p, new, c.new_versions[p], c.op_id)
        self._out.clear()


def _cstore_apply(ctx: BenchContext, batches: list[Any], seconds: float, *,
                  cache_rows: bool = True) -> dict[str, Any]:
    """Micro-batches through the chunk engine (``store.chunks``), as the worker commits them (strong profile)."""
    store = Store.from_config(ctx.config)
    name = f"bench_apply_{uuid.uuid4().hex[:8]}"
    try:
        create_learner(store, name, n_features=N_FEATURES, chunk_size=CHUNK_SIZE)
        info = store.model_info(name)
        learner = Learner(info, learner_config(info))
        cache = RowCache()
        weights = np.zeros(N_FEATURES, dtype=np.float32)
        ones = np.ones(max(len(b[3]) for b in batches))
        coords = events = 0
        cas_ms: list[float] = []
        read_s = 0.0
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < seconds:
            indptr, indices, values, labels = batches[i % len(batches)]
            i += 1
            # Which chunks the batch touches; one pass over the indices (np.unique sorted 600k of them).
            chunks = learner.chunks_of(np.flatnonzero(np.bincount(indices // info.chunk_size)) * info.chunk_size)
            t_read = time.perf_counter()
            missing = [k for k in chunks if k not in cache.rows] if cache_rows else chunks
            fresh = store.chunks.read(info, missing) if missing else {}
            read_s += time.perf_counter() - t_read
            for k, rows in fresh.items():
                lo = k * info.chunk_size
                weights[lo:lo + len(rows["weights"].data)] = rows["weights"].data
            if cache_rows:
                cache.rows.update(fresh)
                current = {k: cache.rows[k] for k in chunks}
            else:
                current = fresh
            # The learner's default update, as the worker builds it (per event unless the model says summed).
            transform = learner.batch_transform(current, weights, float(current[0]["bias"].data[0]), indptr, indices,
                                                values, labels, ones[:len(labels)], 1.0)
            meta = CommitMeta("gradient", 1.0, "feedback", encode_metadata({"bench": "apply", "batch": i}))
            result = store.chunks.commit(info, chunks, cache.capture(transform) if cache_rows else transform,
                                         meta, current=current)
            if cache_rows:
                cache.committed(result, chunks)
                for k in chunks:  # the weights the next batch's gradient starts from
                    if k in cache.rows:
                        lo = k * info.chunk_size
                        weights[lo:lo + len(cache.rows[k]["weights"].data)] = cache.rows[k]["weights"].data
            coords += int(np.count_nonzero(np.bincount(indices, minlength=N_FEATURES)))
            events += len(labels)
            cas_ms += [c.cas_seconds * 1e3 for c in result.commits]
        elapsed = time.perf_counter() - t0
        return {"apply_coord_updates_per_s": round(coords / elapsed), "apply_events_per_s": round(events / elapsed),
                "lwt_commit_p50_ms": round(float(np.percentile(cas_ms, 50)), 2),
                "lwt_commit_p99_ms": round(float(np.percentile(cas_ms, 99)), 2), "apply_batches": i,
                "apply_chunk_commits": len(cas_ms), "apply_read_s_per_batch": round(read_s / max(i, 1), 3),
                "apply_s_per_batch": round(elapsed / max(i, 1), 3)}
    finally:
        store.drop_model(name, confirm=name)
        store.close()


def _naive_apply(ctx: BenchContext, batches: list[Any], seconds: float) -> dict[str, Any]:
    """The brief's design at its best: per scalar a read, an UPDATE and a history INSERT, all
    prepared and issued concurrently (reads first, then the writes)."""
    model_id = uuid.uuid4()
    coords = 0
    i = 0
    with ctx.baselines() as backend:
        tables = backend.baselines
        t0 = time.perf_counter()  # after the baseline tables exist (creating them is not the baseline's time)
        while i == 0 or time.perf_counter() - t0 < seconds:
            indptr, indices, values, labels = batches[i % len(batches)]
            i += 1
            uniq = np.unique(indices)[:250]  # small slices: a slice takes seconds, and the time budget must hold
            keys = [f"w{j}" for j in uniq.tolist()]
            now = datetime.now(UTC)
            updates = []
            for pid, row in zip(keys, tables.read_scalars(model_id, keys)):
                old, ver = (row["current_value"], row["version"]) if row else (0.0, 0)
                updates.append((pid, old, old - 0.1, ver + 1))
            tables.write_scalars(model_id, updates, 0.1, now)
            coords += len(keys)
        elapsed = time.perf_counter() - t0
    return {"naive_coord_updates_per_s": round(coords / elapsed)}


@scenario("apply")
def apply_scenario(ctx: BenchContext) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    batch_events = 20_000
    batches = [hashed_batch(rng, batch_events, N_FEATURES) for _ in range(3)]
    seconds = 7.0 if ctx.quick else ctx.duration
    ctx.log(f"  cstore: micro-batches of {batch_events} events x 30 features, FTRL, strong profile, {seconds:.0f}s")
    out = _cstore_apply(ctx, batches, seconds)
    ctx.log(f"  cstore: {out['apply_coord_updates_per_s']:,} coordinate updates/s "
            f"({out['apply_events_per_s']:,} events/s), LWT p50 {out['lwt_commit_p50_ms']} ms "
            f"p99 {out['lwt_commit_p99_ms']} ms, {out['apply_s_per_batch']} s per batch "
            f"(reads {out['apply_read_s_per_batch']} s)")
    # The same without the row cache (every batch re-reads its chunks), to show what the cache buys.
    plain = _cstore_apply(ctx, batches, seconds, cache_rows=False)
    out.update({f"apply_uncached_{k[len('apply_'):]}" if k.startswith("apply_") else f"uncached_{k}": v
                for k, v in plain.items()})
    ctx.log(f"  cstore without the row cache: {plain['apply_coord_updates_per_s']:,} coordinate updates/s, "
            f"{plain['apply_s_per_batch']} s per batch (reads {plain['apply_read_s_per_batch']} s)")
    naive_seconds = 5.0 if ctx.quick else min(ctx.duration, 15.0)
    ctx.log(f"  naive:  one row per scalar, read + UPDATE + history INSERT per scalar, {naive_seconds:.0f}s")
    out.update(_naive_apply(ctx, batches, naive_seconds))
    ratio = out["apply_coord_updates_per_s"] / max(out["naive_coord_updates_per_s"], 1)
    out["apply_vs_naive"] = round(ratio, 1)
    ctx.log(f"  naive:  {out['naive_coord_updates_per_s']:,} coordinate updates/s → cstore is {ratio:.0f}x")
    return out
