"""``ingest``: feedback events per second through the client's buffered writer, counted once durable,
vs the raw driver's ``ceiling`` (one prepared INSERT per event with ``execute_concurrent``).

Both sides get the same events (entity id, label, kind, ~30 features) from one pre-built pool, and
both must serialise the features (cstore validates and msgpack-encodes each event; the ceiling only
msgpack-encodes), so neither measures request generation. cstore is measured twice: with the
features as columns through ``send_batch`` (the headline figure; a scoring service holds its batch
as arrays) and event by event through ``send``.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from cstore.bench._runner import BenchContext, scenario
from cstore.bench._workload import temp_learner, transactions
from cstore.core import ticks_now, uuid_at
from cstore.feedback import FeedbackWriter
from cstore.store import Store

POOL = 2000
COLUMN_POOL = 20_000  # rows the column-wise producer slices its batches from
BATCH = 5000          # events per send_batch call
SLICE = 2000  # events handed to the driver at once by the ceiling (bounds the time overshoot)
CEILING_ATTEMPTS = 3  # tries per row before the ceiling counts it as failed


def cstore_ingest(ctx: BenchContext, seconds: float, *, max_batch: int = 500,
                  linger_ms: float = 20.0) -> dict[str, Any]:
    """Send events one by one through ``FeedbackWriter.send`` for ``seconds``, flush, count what became
    durable."""
    pool = transactions(POOL)

    def produce(writer: FeedbackWriter, i: int) -> int:
        send = writer.send
        for j in range(i, i + 1000):  # check the clock every 1000 events, not every event
            send(f"tx-{j}", 1.0 if j % 20 == 0 else 0.0, kind="explicit", features=pool[j % POOL])
        return 1000

    return _timed_ingest(ctx, seconds, produce, max_batch=max_batch, linger_ms=linger_ms,
                         concurrency=ctx.concurrency)


def cstore_ingest_columns(ctx: BenchContext, seconds: float, *, batch: int = BATCH, max_batch: int = 4000,
                          linger_ms: float = 20.0, concurrency: int = 8) -> dict[str, Any]:
    """The same events as columns through ``FeedbackWriter.send_batch``, ``batch`` events per call.

    Big column segments fill the socket long before 64 of them are in flight, so the writer keeps
    ``concurrency`` (8) segments in flight, not the bench's ``--concurrency``.
    """
    pool = transactions(COLUMN_POOL)
    columns = {name: np.array([tx[name] for tx in pool], dtype=None if isinstance(value, float) else str)
               for name, value in pool[0].items()}
    labels = (np.arange(COLUMN_POOL) % 20 == 0).astype(np.float64)

    def produce(writer: FeedbackWriter, i: int) -> int:
        lo = i % (COLUMN_POOL - batch + 1)
        writer.send_batch([f"tx-{j}" for j in range(i, i + batch)], labels[lo:lo + batch], kind="explicit",
                          features={name: col[lo:lo + batch] for name, col in columns.items()})
        return batch

    return _timed_ingest(ctx, seconds, produce, max_batch=max_batch, linger_ms=linger_ms, concurrency=concurrency)


def _timed_ingest(ctx: BenchContext, seconds: float, produce: Callable[[FeedbackWriter, int], int],
                  **writer_options: Any) -> dict[str, Any]:
    store = Store.from_config(ctx.config)
    try:
        with temp_learner(store, "bench_ingest", n_features=1 << 16) as name:
            with FeedbackWriter(store, name, **writer_options) as writer:
                t0 = time.perf_counter()
                i = 0
                while time.perf_counter() - t0 < seconds:
                    i += produce(writer, i)
                writer.flush()  # only durable events count
                elapsed = time.perf_counter() - t0
                stats = writer.stats()
            return {"ingest_events_per_s": round(stats["events_written"] / elapsed),
                    "ingest_events": stats["events_written"], "ingest_segments": stats["segments_written"],
                    "ingest_mib_per_s": round(stats["bytes_written"] / elapsed / 2**20, 1),
                    "ingest_bytes_per_event": round(stats["bytes_written"] / max(stats["events_written"], 1)),
                    "ingest_blocked_s": stats["blocked_s"], "ingest_retries": stats["retries"]}
    finally:
        store.close()


def ceiling_ingest(ctx: BenchContext, seconds: float) -> dict[str, Any]:
    """The raw driver at its best for a one-row-per-event design: prepared INSERT, many in flight.

    Failed rows are retried (as cstore's writer retries its segments) so a passing hiccup of the node
    is not a zero; what still fails is counted, and the first error is reported, never hidden."""
    pool = transactions(POOL)
    run = uuid.uuid4()
    packb = msgpack.packb
    written = failed = retries = 0
    first_error: BaseException | None = None
    i = 0
    with ctx.baselines() as backend:
        # the clock starts once the baseline tables exist: on a cold node creating them can take longer
        # than a one-second phase, which once left the loop no time to write a single row
        t0 = time.perf_counter()
        while i == 0 or time.perf_counter() - t0 < seconds:
            ticks = ticks_now()
            rows = [(run, (i + j) % 16, uuid_at(ticks + j), f"tx-{i + j}", 1.0 if (i + j) % 20 == 0 else 0.0,
                     "explicit", packb(pool[(i + j) % POOL], use_bin_type=True)) for j in range(SLICE)]
            i += SLICE
            for attempt in range(CEILING_ATTEMPTS):
                errors = backend.baselines.insert_events(rows)
                rows = [row for row, err in zip(rows, errors) if err is not None]
                written += len(errors) - len(rows)
                if not rows:
                    break
                first_error = first_error or next(e for e in errors if e is not None)
                if attempt + 1 < CEILING_ATTEMPTS:
                    retries += len(rows)
                    time.sleep(0.1 * (attempt + 1))
            failed += len(rows)
        elapsed = time.perf_counter() - t0
    if written == 0 and first_error is not None:
        raise first_error
    out: dict[str, Any] = {"ceiling_events_per_s": round(written / elapsed), "ceiling_failed": failed,
                           "ceiling_retries": retries}
    if first_error is not None:
        out["ceiling_first_error"] = f"{type(first_error).__name__}: {first_error}"
        ctx.log(f"  ceiling: {retries:,} rows retried, {failed:,} never written; first error: "
                f"{out['ceiling_first_error']}")
    return out


@scenario("ingest")
def ingest_scenario(ctx: BenchContext) -> dict[str, Any]:
    seconds = 8.0 if ctx.quick else ctx.duration
    ctx.log(f"  cstore:  buffered writer, send_batch of {BATCH} events as columns (segments of <= 4000 "
            f"events, 8 in flight), {seconds:.0f}s")
    out = cstore_ingest_columns(ctx, seconds)
    ctx.log(f"  cstore:  {out['ingest_events_per_s']:,} events/s durable ({out['ingest_mib_per_s']} MiB/s, "
            f"{out['ingest_bytes_per_event']} bytes/event)")
    send_seconds = 6.0 if ctx.quick else min(ctx.duration, 15.0)
    ctx.log(f"  cstore:  the same writer, one send() per event (segments of <= 500 events, linger 20 ms, "
            f"{ctx.concurrency} in flight), {send_seconds:.0f}s")
    one = cstore_ingest(ctx, send_seconds)
    out.update({f"ingest_send_{k[len('ingest_'):]}": v for k, v in one.items()})
    ctx.log(f"  cstore:  {one['ingest_events_per_s']:,} events/s durable ({one['ingest_mib_per_s']} MiB/s, "
            f"{one['ingest_bytes_per_event']} bytes/event)")
    ceiling_seconds = 6.0 if ctx.quick else min(ctx.duration, 15.0)
    ctx.log(f"  ceiling: one prepared INSERT per event, execute_concurrent({ctx.concurrency}), {ceiling_seconds:.0f}s")
    out.update(ceiling_ingest(ctx, ceiling_seconds))
    ratio = out["ingest_events_per_s"] / max(out["ceiling_events_per_s"], 1)
    out["ingest_vs_ceiling"] = round(ratio, 1)
    out["ingest_send_vs_ceiling"] = round(one["ingest_events_per_s"] / max(out["ceiling_events_per_s"], 1), 1)
    ctx.log(f"  ceiling: {out['ceiling_events_per_s']:,} events/s → cstore is {ratio:.1f}x with send_batch, "
            f"{out['ingest_send_vs_ceiling']:.1f}x with send")
    return out
