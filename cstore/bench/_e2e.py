"""``e2e``: feedback acknowledged → the change visible in a scorer's cached model.

Three parties, as in production: a producer (this process, a ``FeedbackWriter``), a worker in
its own process (``Worker.run``, spawned so that it has its own interpreter, GIL and resident memory),
and a scorer (a :class:`~cstore.Client` in this process whose cached model refreshes in the
background, exactly as a scoring service's does).

Per producer batch ``i`` (``BATCH`` events, entity ids ``b<i>-<j>``):

* ``t_ack``: :meth:`FeedbackWriter.flush` returned (every event of the batch is durable);
* the worker reports, after each commit, which producer batches its micro-batch held and the model's
  head version after the commit (read from the chunk-version index; the worker is the only writer);
* ``t_visible``: the first time the scorer's ``model.version`` reached the head version of the commit
  that completed batch ``i`` (a watcher samples ``model.version`` every millisecond).

Freshness is ``t_visible - t_ack``. The producer keeps at most ``WINDOW`` batches acknowledged and not
yet visible, so the pipeline stays busy without queueing without bound; ``e2e_events_per_s`` is the
events that became visible per second over the run.
"""
from __future__ import annotations

import bisect
import multiprocessing as mp
import queue
import threading
import time
from typing import Any

import numpy as np

from cstore.bench._runner import BenchContext, scenario
from cstore.bench._workload import run_worker_until, temp_learner, transactions
from cstore.config import Config
from cstore.feedback import FeedbackWriter
from cstore.scoring import Client
from cstore.store import Store
from cstore.training import Worker

BATCH = 500            # events per producer batch (one flush each)
WINDOW = 3             # producer batches acknowledged and not yet visible, at most
N_FEATURES = 1 << 18    # ~15k distinct features in the workload: 2^18 keeps hash collisions rare, 16 chunks
CHUNK_SIZE = 1 << 16
FRESHNESS_GOAL_MS = 1000.0
WORKER_OPTIONS = {"batch_size": 1000, "max_wait_ms": 50.0, "poll_ms": 20.0, "lease_ttl_s": 15.0}


def _batch_of(entity_id: Any) -> int | None:
    text = str(entity_id)
    if not text.startswith("b"):
        return None
    head, _, _ = text.partition("-")
    return int(head[1:]) if head[1:].isdigit() else None


class TracedWorker(Worker):
    """A :class:`Worker` that reports, after each committed micro-batch, the producer batches it held
    (events per batch) and the head version that commit produced."""

    def __init__(self, store: Store, model: str, *, out: Any, **options: Any) -> None:
        super().__init__(store, model, **options)
        self._out = out
        self._seen: dict[int, int] = {}
        fetch = self.reader.fetch

        def traced_fetch(refs):  # the events of the batch being learned, before the learner sees them
            payloads = fetch(refs)
            for events in payloads.values():
                for ev in events:
                    b = _batch_of(ev.entity_id)
                    if b is not None:
                        self._seen[b] = self._seen.get(b, 0) + 1
            return payloads
        setattr(self.reader, "fetch", traced_fetch)  # noqa: B010 - a traced instance, not the class
        # Where a batch's time goes: wall time of each stage, per batch (the stages run one after another).
        self._stages: dict[str, float] = {}
        for label, obj, attr in (("fetch", self.reader, "fetch"), ("read_chunks", self.store.chunks, "read"),
                                 ("shared_state", self.shared, "apply_batch"), ("trace", self, "_trace"),
                                 ("commit", self, "_commit"), ("checkpoint", self, "_checkpoint")):
            setattr(obj, attr, self._timed(label, getattr(obj, attr)))

    def _timed(self, label: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self._stages[label] = self._stages.get(label, 0.0) + time.monotonic() - t
        return timed

    def _learn(self, cursors, listings, chosen, **kwargs: Any) -> int:
        self._seen, self._stages = {}, {}
        t = time.monotonic()
        n = super()._learn(cursors, listings, chosen, **kwargs)
        if n and self._seen:
            # CLOCK_MONOTONIC is system-wide on Linux, so these times compare with the producer's.
            self._out.put((self._seen, self.store.head_version(self.model), t, time.monotonic(), self._stages))
        return n


def worker_main(cfg: Config, model: str, options: dict[str, Any], out: Any, stop: Any) -> None:
    """Entry point of the spawned worker process."""
    store = Store.from_config(cfg)
    try:
        worker = TracedWorker(store, model, out=out, **options)
        out.put(("ready", None))
        run_worker_until(worker, stop)
    finally:
        store.close()


class VersionWatcher(threading.Thread):
    """Samples ``handle.version`` every millisecond; keeps the first time each version was seen."""

    def __init__(self, handle: Any) -> None:
        super().__init__(daemon=True, name="bench-version-watcher")
        self.handle = handle
        self.times: list[float] = []
        self.versions: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        last = -1
        while not self.halt.is_set():
            v = self.handle.version or 0
            if v > last:
                self.times.append(time.monotonic())
                self.versions.append(v)
                last = v
            time.sleep(0.001)

    def first_at_least(self, version: int) -> float | None:
        i = bisect.bisect_left(self.versions, version)
        return self.times[i] if i < len(self.versions) else None


def run_e2e(ctx: BenchContext, seconds: float, *, n_features: int = N_FEATURES,
            chunk_size: int = CHUNK_SIZE) -> dict[str, Any]:
    pool = transactions(2000)
    store = Store.from_config(ctx.config)
    spawn = mp.get_context("spawn")  # the driver's threads and sockets must not be forked
    out, stop = spawn.Queue(), spawn.Event()
    try:
        with temp_learner(store, "bench_e2e", n_features=n_features, chunk_size=chunk_size) as name:
            proc = spawn.Process(target=worker_main, args=(ctx.config, name, WORKER_OPTIONS, out, stop),
                                 name="cstore-bench-worker", daemon=True)
            proc.start()
            if proc.pid is not None:
                ctx.memory.watch("worker", proc.pid)
            client = Client(config=ctx.config)
            try:
                handle = client.model(name)
                watcher = VersionWatcher(handle)
                watcher.start()
                with FeedbackWriter(store, name) as writer:
                    res = _drive(ctx, seconds, writer, out, watcher, pool, proc)
                watcher.halt.set()
            finally:
                client.close()
                stop.set()
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.terminate()
    finally:
        store.close()
    return res


def _drive(ctx: BenchContext, seconds: float, writer: Any, out: Any, watcher: VersionWatcher, pool: list,
           proc: Any) -> dict:
    """Produce batches, collect the worker's reports, and turn them into freshness figures."""
    learned: dict[int, int] = {}
    covered: dict[int, int] = {}          # producer batch -> head version of the commit that completed it
    acked: dict[int, float] = {}
    learn_span: dict[int, tuple[float, float]] = {}   # the completing micro-batch: learn start, commit end
    worker_batches: list[dict[str, float]] = []

    def drain(block_s: float) -> None:
        try:
            msg = out.get(timeout=block_s)
        except queue.Empty:
            return
        while True:
            if msg[0] != "ready":
                seen, version, started, ended, stages = msg
                worker_batches.append(stages)
                for b, n in seen.items():
                    learned[b] = learned.get(b, 0) + n
                    if learned[b] >= BATCH and b not in covered:
                        covered[b] = version
                        learn_span[b] = (started, ended)
            try:
                msg = out.get_nowait()
            except queue.Empty:
                return

    def send(b: int) -> None:
        for j in range(BATCH):
            writer.send(f"b{b}-{j}", 1.0 if j % 20 == 0 else 0.0, kind="explicit",
                        features=pool[(b * BATCH + j) % 2000])
        writer.flush()
        acked[b] = time.monotonic()

    # Warm-up (not measured): the worker process starts, takes its leases and learns one batch.
    send(0)
    deadline = time.monotonic() + 60
    while 0 not in covered and time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError("the bench worker process died during warm-up")
        drain(0.1)
    if 0 not in covered:
        raise RuntimeError("the bench worker learned nothing within 60 s")
    ctx.log(f"  warm-up done (worker pid {proc.pid})")
    t0 = time.monotonic()
    b = 1
    while time.monotonic() - t0 < seconds:
        outstanding = [x for x in acked if x >= 1 and (x not in covered or
                                                       watcher.first_at_least(covered[x]) is None)]
        if len(outstanding) < WINDOW:
            send(b)
            b += 1
        drain(0.002 if len(outstanding) < WINDOW else 0.02)
    # Let the last batches become visible (bounded), then score what we have.
    end = time.monotonic() + 15
    while time.monotonic() < end and any(x not in covered or watcher.first_at_least(covered[x]) is None
                                         for x in range(1, b)):
        drain(0.05)
    fresh_ms, wait_ms, learn_ms, refresh_ms = [], [], [], []
    last_visible = t0
    for x in range(1, b):
        if x in covered and (tv := watcher.first_at_least(covered[x])) is not None:
            fresh_ms.append(max(0.0, tv - acked[x]) * 1e3)
            started, ended = learn_span[x]
            wait_ms.append(max(0.0, started - acked[x]) * 1e3)   # queued behind earlier micro-batches
            learn_ms.append((ended - started) * 1e3)              # fetch, learn, commit, checkpoint
            refresh_ms.append(max(0.0, tv - ended) * 1e3)          # the scorer's refresher picks it up
            last_visible = max(last_visible, tv)
    if not fresh_ms:
        raise RuntimeError("no batch became visible in the scorer's cache")
    elapsed = last_visible - t0
    return {"e2e_events_per_s": round(len(fresh_ms) * BATCH / max(elapsed, 1e-9)),
            "e2e_freshness_p50_ms": round(float(np.percentile(fresh_ms, 50)), 1),
            "e2e_freshness_p99_ms": round(float(np.percentile(fresh_ms, 99)), 1),
            "e2e_freshness_max_ms": round(max(fresh_ms), 1), "e2e_batches": len(fresh_ms),
            "e2e_batches_lost": b - 1 - len(fresh_ms), "e2e_freshness_ms": [round(f, 1) for f in fresh_ms],
            "e2e_wait_p50_ms": _p50(wait_ms), "e2e_learn_p50_ms": _p50(learn_ms),
            "e2e_refresh_p50_ms": _p50(refresh_ms), "e2e_worker_batches": len(worker_batches),
            **{f"e2e_stage_{k}_mean_ms": round(1e3 * sum(st.get(k, 0.0) for st in worker_batches)
                                                / max(len(worker_batches), 1), 1)
               for k in ("fetch", "read_chunks", "shared_state", "trace", "commit", "checkpoint")}}


def _p50(values: list[float]) -> float:
    return round(float(np.percentile(values, 50)), 1) if values else 0.0


@scenario("e2e")
def e2e_scenario(ctx: BenchContext) -> dict:
    seconds = 20.0 if ctx.quick else ctx.duration
    ctx.log(f"  cstore: producer batches of {BATCH} events (flush each, <= {WINDOW} unseen), one worker process "
            f"(batch {WORKER_OPTIONS['batch_size']}, FTRL, 2^{N_FEATURES.bit_length() - 1} features), one scorer cache "
            f"(refresh every {ctx.config.refresh_interval_s * 1000:.0f} ms), {seconds:.0f}s")
    out = run_e2e(ctx, seconds)
    ratio = out["e2e_freshness_p99_ms"] / FRESHNESS_GOAL_MS
    out["e2e_p99_vs_goal"] = round(ratio, 2)
    ctx.log(f"  cstore: {out['e2e_events_per_s']:,} events/s, freshness p50 {out['e2e_freshness_p50_ms']} ms "
            f"p99 {out['e2e_freshness_p99_ms']} ms over {out['e2e_batches']} batches")
    ctx.log(f"  goal:   p99 < {FRESHNESS_GOAL_MS:.0f} ms → p99 is {ratio:.2f}x the goal")
    return out
