"""Synthetic fraud-like micro-batches: sparse hashed features with a skewed (Zipf-like) popularity,
as real transaction features are (a few merchants and devices are everywhere, most are rare)."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from cstore.store import Store
from cstore.training import create_learner


def hashed_batch(rng: np.random.Generator, n_events: int, n_features: int, per_event: int = 30,
                 skew: float = 1.1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, values, labels) of ``n_events`` events with ``per_event`` features each."""
    ranks = rng.zipf(skew, size=n_events * per_event) % n_features
    # Scatter ranks over the hash space so that popular features are not all in chunk 0.
    indices = (ranks * 2654435761) % n_features
    values = np.ones(n_events * per_event, dtype=np.float32)
    indptr = np.arange(0, n_events * per_event + 1, per_event, dtype=np.int64)
    labels = (rng.random(n_events) < 0.05).astype(np.float32)
    return indptr, indices.astype(np.int64), values, labels


def transaction(rng: np.random.Generator, n: int = 30) -> dict[str, float | str]:
    """One scoring request: ~30 features, numeric and categorical."""
    feats: dict[str, float | str] = {f"num_{i}": float(rng.normal()) for i in range(n // 2)}
    feats.update({f"cat_{i}": f"v{int(rng.integers(0, 1000))}" for i in range(n - n // 2)})
    return feats


def transactions(n: int, seed: int = 7, per_event: int = 30) -> list[dict[str, float | str]]:
    """A pool of ``n`` scoring requests; scenarios cycle through it so that generating
    requests is not what they measure."""
    rng = np.random.default_rng(seed)
    return [transaction(rng, per_event) for _ in range(n)]


@contextmanager
def temp_learner(store: Store, prefix: str, **options: Any) -> Iterator[str]:
    """A throw-away FTRL learner model named ``<prefix>_<random>``, dropped on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    create_learner(store, name, **{"n_features": 1 << 20, **options})  # the default chunk size: what users get
    try:
        yield name
    finally:
        try:
            store.drop_model(name, confirm=name)
        except Exception:  # a failed drop must not hide the scenario's own error; bench models are small
            pass


def run_worker_until(worker: Any, stop: Any) -> dict[str, Any]:
    """``worker.run()`` in a bench's worker process, stopped (cleanly) when ``stop`` (an Event) is set."""
    def stop_when_asked() -> None:
        stop.wait()
        worker.stop()
    threading.Thread(target=stop_when_asked, daemon=True, name="bench-stop").start()
    result: dict[str, Any] = worker.run()
    return result
