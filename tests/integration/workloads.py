"""Workloads run in separate processes by the concurrency tests (importable by spawn), and the
read-back every bad-input test compares before and after a refused call."""
from __future__ import annotations

import numpy as np


def planned_updates(worker: int, n_updates: int, size: int, seed: int = 7) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic sparse updates with integer values, so that a lost update cannot hide in rounding."""
    rng = np.random.default_rng(seed * 1000 + worker)
    out = []
    for _ in range(n_updates):
        idx = rng.choice(size, size=6, replace=False)
        vals = rng.integers(1, 5, size=6).astype(np.float32)
        out.append((idx, vals))
    return out


def run_updates(config: dict, model: str, worker: int, n_updates: int, size: int) -> dict:
    """Apply this worker's planned updates; return counters (runs in a child process)."""
    from cstore.config import load_config
    from cstore.store import Store
    store = Store.from_config(load_config(config, env={}))
    retries = conflicts = overwrites = 0
    try:
        for idx, vals in planned_updates(worker, n_updates, size):
            r = store.apply_update(model, "w", vals, indices=idx, lr=1.0, metadata={"worker": worker})
            retries += r.retries
            conflicts += r.conflicts
            overwrites += r.overwrites
    finally:
        store.close()
    return {"retries": retries, "conflicts": conflicts, "overwrites": overwrites}


def fingerprint(session, store, name: str) -> tuple:
    """Everything an update could have touched, read back from Cassandra: chunk rows (copy, delta
    entries and pending increments), the version index and head counter, history, models, snapshots."""
    info = store.model_info(name, refresh=True)
    store.head_version(name)  # waits for this store's commits to be announced (index rows, head counter)
    chunks = sorted((r["chunk"], r["param"], r["version"], r["base_version"], bytes(r["data"]),
                     tuple(sorted((v, bytes(b)) for v, b in (r["deltas"] or {}).items())),
                     tuple(sorted((str(op), bytes(b)) for op, b in (r["pending"] or {}).items())))
                    for k in range(info.max_chunks)
                    for r in session.execute("SELECT chunk, param, version, base_version, data, deltas, pending FROM "
                                             "chunks WHERE model_id = %s AND chunk = %s", (info.model_id, k)))
    index = sorted((r["param"], r["chunk"], r["version"])
                   for r in session.execute("SELECT * FROM chunk_versions WHERE model_id = %s", (info.model_id,)))
    head = [r["commits"] for r in session.execute("SELECT commits FROM model_heads WHERE model_id = %s",
                                                  (info.model_id,))]
    history = len(store.history(name, attempts=True))
    models = sorted(r["name"] for r in session.execute("SELECT name FROM models"))
    snapshots = len(list(session.execute("SELECT version FROM snapshots WHERE model_id = %s", (info.model_id,))))
    return chunks, index, history, models, snapshots, head


def chunk_pair_updates(worker: int, n_updates: int, seed: int = 11) -> list[tuple[np.ndarray, np.ndarray]]:
    """Updates of 8 coordinates, 4 in each of two 128-wide chunks every worker shares."""
    rng = np.random.default_rng(seed * 1000 + worker)
    return [(np.r_[rng.choice(128, 4, replace=False), 128 + rng.choice(128, 4, replace=False)],
             rng.integers(1, 5, size=8).astype(np.float32)) for _ in range(n_updates)]


def run_chunk_pair_updates(config: dict, model: str, worker: int, n_updates: int, adds: bool = False) -> dict:
    """Apply :func:`chunk_pair_updates` one by one (``adds``: as increments, ``Store.add``); count conflicts
    and collect errors (child process)."""
    from cstore.config import load_config
    from cstore.store import Store
    store = Store.from_config(load_config(config, env={}))
    conflicts, errors = 0, []
    try:
        for idx, vals in chunk_pair_updates(worker, n_updates):
            try:
                apply = store.add if adds else store.apply_update
                conflicts += apply(model, "w", vals, indices=idx, lr=1.0).conflicts
            except Exception as exc:  # the test asserts there are none, and shows them if there are
                errors.append(repr(exc))
    finally:
        store.close()
    return {"conflicts": conflicts, "errors": errors}
