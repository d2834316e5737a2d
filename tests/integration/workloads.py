"""Workloads run in separate processes by the concurrency tests (importable by spawn)."""
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
