"""``cstore bench latency``: freshness under mixed load, and atomic updates beside their peers.

Freshness (this module). Everything at default settings, in separate processes as in production:

* ``--workers`` (2) ``cstore worker`` processes (``Worker`` with its default options) learning one FTRL
  model of 2^20 hashed features;
* one bulk producer process sending feedback as columns (``FeedbackWriter.send_batch``) at
  ``BULK_RATE`` events/s, and every ``PROBE_EVERY_S`` one *bulk probe*: an ordinary (not critical)
  label, through the same writer;
* in this process, a *critical prober* sending one ``critical=True`` label every ``PROBE_EVERY_S``
  (``send_feedback``: durable on return), and a scorer (``Client().model()``) whose cached copy is
  sampled every millisecond for the probes' features.

A probe label is a real one: a transaction of the workload's pool (its ~30 features, so it touches
~13 of the model's 16 chunks at the learner's default chunk size, like a chargeback on a scored
payment), plus one feature no other event has, which is what the watcher looks at.
``probe_features="one"`` sends the probe feature alone (two chunks: the earlier form of this bench,
kept to compare with).

The run begins with a warm-up (``--warmup``, 60 s; 5 s with ``--quick``): the same load and probes, not
measured. A node started a minute before is still compiling its hot paths: on this 2-core machine it
used 125 %, then 101 %, then 67 % of a core in three 20-second runs of the same load right after a
start, and the freshness of the first run was twice that of the third. A production node has long been
warm; the figures describe that steady state, and ``--warmup 0`` measures a cold one.

A probe's freshness is the time from the call that sent it to the first sample in which the scorer's
prediction for its feature moved (its term in the logit, ``ModelHandle.contributions``, which equals
``logit(p(feature)) - logit(p({}))``: the weight the label gave it). Probe features hash to indices
no bulk feature touches, so only the probe's own label moves them.
The atomic-update half (``_atomic``) runs after it; both go in one result.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from typing import Any

import numpy as np

from cstore.bench._atomic import atomic_section
from cstore.bench._runner import BenchContext, scenario
from cstore.bench._workload import run_worker_until, temp_learner, transactions
from cstore.config import Config
from cstore.feedback import FeedbackWriter, send_feedback
from cstore.learn import FeatureHasher
from cstore.ops import fleet_status
from cstore.scoring import Client, hashing_config
from cstore.store import Store
from cstore.training import Worker

BULK_RATE = 5000          # events/s, the floor for "bulk flowing"
WARMUP_S, QUICK_WARMUP_S = 60.0, 5.0  # the mixed load runs this long before anything is measured
TICK_S = 0.02             # the producer sends a column batch this often
PROBE_EVERY_S = 0.25      # one critical and one bulk probe this often (jittered)
CRITICAL_GOAL_MS, BULK_GOAL_MS = 100.0, 1000.0


def _probe_names(n_features: int, seed: int, pool: list[dict[str, Any]], kind: str, count: int) -> list[str]:
    """``count`` feature names whose hashed index no pool feature (nor another probe) uses."""
    hasher = FeatureHasher(n_features, seed)
    taken = {int(i) for row in pool for i in hasher.transform_one(row)[0]}
    out: list[str] = []
    i = 0
    while len(out) < count:
        name = f"{kind}_probe_{i}"
        i += 1
        idx = int(hasher.transform_one({name: 1.0})[0][0])
        if idx not in taken:
            taken.add(idx)
            out.append(name)
    return out


def _columns(pool: list[dict[str, Any]], lo: int, n: int) -> dict[str, np.ndarray]:
    rows = [pool[(lo + j) % len(pool)] for j in range(n)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def probe_features(pool: list[dict[str, Any]], i: int, probe: str, kind: str) -> dict[str, Any]:
    """The features of probe label ``i``: a pool transaction's and the probe's own (``kind="full"``),
    or the probe's alone (``"one"``)."""
    if kind == "one":
        return {probe: 1.0}
    return {**pool[(7 * i) % len(pool)], probe: 1.0}


def producer_main(cfg: Config, model: str, rate: int, probes: list[str], out: Any, stop: Any,
                  kind: str = "full") -> None:
    """The bulk producer process: column batches at ``rate`` events/s, and the bulk probes."""
    store = Store.from_config(cfg)
    pool = transactions(2000)
    per_tick = max(1, round(rate * TICK_S))
    blocks = [_columns(pool, b * per_tick, per_tick) for b in range(20)]
    labels = (np.arange(per_tick) % 20 == 0).astype(np.float64)
    try:
        with FeedbackWriter(store, model) as writer:
            out.put(("ready", time.monotonic()))
            t0 = next_probe = time.monotonic()
            sent, tick, p = 0, 0, 0
            while not stop.is_set():
                ids = [f"bulk-{tick}-{j}" for j in range(per_tick)]
                sent += writer.send_batch(ids, labels, kind="explicit", features=blocks[tick % len(blocks)])
                tick += 1
                now = time.monotonic()
                if now >= next_probe and p < len(probes):
                    t = time.monotonic()
                    writer.send(f"bprobe-{p}", 1, kind="explicit", features=probe_features(pool, p, probes[p], kind))
                    out.put(("probe", p, t))
                    p += 1
                    next_probe = now + PROBE_EVERY_S * np.random.uniform(0.6, 1.4)
                delay = t0 + tick * TICK_S - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            elapsed = time.monotonic() - t0
            out.put(("done", sent, elapsed, writer.stats()["blocked_s"]))
    finally:
        store.close()


def worker_main(cfg: Config, model: str, ready: Any, stop: Any, out: Any) -> None:
    store = Store.from_config(cfg)
    try:
        worker = Worker(store, model)  # the defaults: that is what a user runs
        ready.set()
        out.put(run_worker_until(worker, stop))
    finally:
        store.close()


class ProbeWatcher(threading.Thread):
    """Samples the scorer's cached model every millisecond; records when each probe's feature moved."""

    def __init__(self, handle: Any) -> None:
        super().__init__(daemon=True, name="bench-probe-watcher")
        self.handle = handle
        self.pending: dict[str, float] = {}   # feature -> time the label was sent
        self.seen: dict[str, tuple[float, float]] = {}  # feature -> (sent, visible)
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def expect(self, feature: str, sent: float) -> None:
        with self.lock:
            self.pending[feature] = sent

    def run(self) -> None:
        while not self.halt.is_set():
            with self.lock:
                names = list(self.pending)
            if names:  # a probe feature's term in the logit: what the label moved (cheap: no scoring per ms)
                terms = self.handle.contributions({n: 1.0 for n in names})
                now = time.monotonic()
                with self.lock:
                    for n in names:
                        if abs(terms[n]) > 1e-4:
                            self.seen[n] = (self.pending.pop(n), now)
            time.sleep(0.001)


def _stats(ms: list[float], prefix: str) -> dict[str, Any]:
    if not ms:
        return {f"{prefix}_probes": 0}
    return {f"{prefix}_p50_ms": round(float(np.percentile(ms, 50)), 1),
            f"{prefix}_p99_ms": round(float(np.percentile(ms, 99)), 1),
            f"{prefix}_max_ms": round(max(ms), 1), f"{prefix}_probes": len(ms)}


PROBE_KINDS = ("full", "one")  # see probe_features
PROBE_HELP = "probe labels with a transaction's ~30 features and the probe feature (full), or the probe feature alone"


def run_freshness(ctx: BenchContext, seconds: float, rate: int = BULK_RATE,
                  probes: str = PROBE_KINDS[0], chunk_size: int | None = None,
                  warmup_s: float = 0.0) -> dict[str, Any]:
    """The freshness run: ``warmup_s`` of the load not measured, then ``seconds`` measured."""
    if probes not in PROBE_KINDS:
        raise ValueError(f"probes must be one of {', '.join(PROBE_KINDS)}, got {probes!r}")
    spawn = mp.get_context("spawn")  # the driver's threads and sockets must not be forked
    store = Store.from_config(ctx.config)
    n_probes = int((seconds + warmup_s) / PROBE_EVERY_S * 2) + 20
    try:
        # chunk_size None: the learners' default (what users get); a size: for comparisons of layouts
        layout = {} if chunk_size is None else {"chunk_size": chunk_size}
        with temp_learner(store, "bench_latency", **layout) as name:
            info = store.model_info(name)
            n_features, seed = hashing_config(info)
            pool = transactions(2000)
            crit_names = _probe_names(n_features, seed, pool, "crit", n_probes + 1)
            bulk_names = _probe_names(n_features, seed, pool + [{n: 1.0} for n in crit_names], "bulk", n_probes)
            stop = spawn.Event()
            readies = [spawn.Event() for _ in range(ctx.workers)]
            wout = spawn.Queue()
            workers = [spawn.Process(target=worker_main, args=(ctx.config, name, r, stop, wout), daemon=True,
                                     name=f"cstore-bench-worker-{i}") for i, r in enumerate(readies)]
            for w in workers:
                w.start()
            client = Client(config=ctx.config)
            prod_out = spawn.Queue()
            pstop = spawn.Event()
            producer = spawn.Process(target=producer_main,
                                     args=(ctx.config, name, rate, bulk_names, prod_out, pstop, probes),
                                     daemon=True, name="cstore-bench-producer")
            try:
                out = _measure(ctx, store, client, name, (warmup_s, seconds), rate, readies, producer, prod_out,
                               crit_names, bulk_names, pstop, [probe_features(pool, i, n, probes)
                                                               for i, n in enumerate(crit_names)])
                out.update(probe_features=probes, latency_warmup_s=warmup_s)
                stop.set()
                out.update(_worker_figures([wout.get(timeout=60) for _ in workers], store.stats(name)))
                return out
            finally:
                stop.set()
                pstop.set()
                for p in [producer, *workers]:
                    p.join(timeout=30)
                    if p.is_alive():
                        p.terminate()
                client.close()
    finally:
        store.close()


def _measure(ctx: BenchContext, store: Store, client: Client, name: str, phases: tuple[float, float], rate: int,
             readies: list[Any], producer: Any, prod_out: Any, crit_names: list[str], bulk_names: list[str],
             stop: Any, crit_features: list[dict[str, Any]]) -> dict[str, Any]:
    for r in readies:
        if not r.wait(60):
            raise RuntimeError("a bench worker process did not start within 60 s")
    handle = client.model(name)
    watcher = ProbeWatcher(handle)
    watcher.start()
    # Warm-up (not measured): the critical lane is leased and learns one label end to end.
    t = time.monotonic()
    send_feedback(store, name, "warmup", 1, features=crit_features[-1], critical=True)
    watcher.expect(crit_names[-1], t)
    while crit_names[-1] not in watcher.seen:
        if time.monotonic() - t > 60:
            raise RuntimeError("the critical warm-up label was not visible to the scorer within 60 s")
        time.sleep(0.01)
    ctx.log(f"  warm-up done: {len(readies)} workers, critical lane held, first label visible after "
            f"{(watcher.seen[crit_names[-1]][1] - t) * 1e3:.0f} ms")
    warmup_s, seconds = phases
    producer.start()
    bulk_sent: dict[str, float] = {}
    prod_out.get(timeout=60)  # ("ready", t): the producer's writer is open
    t0 = time.monotonic() + warmup_s  # measuring starts here; before it the same load and probes warm up
    learned0, status0 = None, {}
    crit_sent: dict[str, float] = {}
    send_ms: list[float] = []
    rng = np.random.default_rng(5)
    i = 0
    if warmup_s:
        ctx.log(f"  warming up under the load for {warmup_s:.0f} s (not measured)")
    while time.monotonic() - t0 < seconds:
        t = time.monotonic()
        if learned0 is None and t >= t0:
            learned0, status0 = fleet_status(store, name)["learned_events"], handle.status()
        send_feedback(store, name, f"crit-{i}", 1, kind="explicit", features=crit_features[i], critical=True)
        watcher.expect(crit_names[i], t)
        if t >= t0:
            send_ms.append((time.monotonic() - t) * 1e3)
            crit_sent[crit_names[i]] = t
        i += 1
        _drain(prod_out, watcher, bulk_names, bulk_sent)
        time.sleep(max(0.0, PROBE_EVERY_S * rng.uniform(0.6, 1.4) - (time.monotonic() - t)))
    stop.set()  # the producer stops (the workers once the probes are in)
    elapsed = time.monotonic() - t0
    if learned0 is None:  # one round of probes outlasted the measured phase: nothing was measured
        raise RuntimeError(f"the bench could not send a probe within its {seconds:.0f} s: the machine is overloaded")
    learned = fleet_status(store, name)["learned_events"] - learned0
    status1 = handle.status()
    done = None
    while done is None:
        done = _drain(prod_out, watcher, bulk_names, bulk_sent, block_s=30)
    deadline = time.monotonic() + 15
    while watcher.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    watcher.halt.set()
    bulk_sent = {n: s for n, s in bulk_sent.items() if s >= t0}  # the warm-up's probes are not measured
    crit = [(watcher.seen[n][1] - s) * 1e3 for n, s in crit_sent.items() if n in watcher.seen]
    bulk = [(watcher.seen[n][1] - s) * 1e3 for n, s in bulk_sent.items() if n in watcher.seen]
    _, sent, prod_s, blocked = done
    polls = (status1["polls"] - status0["polls"]) / elapsed
    index_reads = (status1["index_reads"] - status0["index_reads"]) / elapsed
    feed_polls = (status1["feed_polls"] - status0["feed_polls"]) / elapsed
    return {"bulk_rate_target": rate, "bulk_events_per_s": round(sent / prod_s), "bulk_producer_blocked_s": blocked,
            "learned_events_per_s": round(learned / elapsed), **_stats(crit, "critical_fresh"),
            "critical_lost": len(crit_sent) - len(crit), **_stats(bulk, "bulk_fresh"),
            "bulk_lost": len(bulk_sent) - len(bulk), **_stats(send_ms, "critical_send"),
            "scorer_polls_per_s": round(polls, 1), "scorer_feed_polls_per_s": round(feed_polls, 1),
            "scorer_index_reads_per_s": round(index_reads, 1),
            "cluster_reads_per_s_per_100_scorers": round(100 * (polls + feed_polls + index_reads)),
            "critical_fresh_ms": [round(x, 1) for x in crit], "bulk_fresh_ms": [round(x, 1) for x in bulk]}


def _worker_figures(stats: list[dict[str, Any]], buckets: list[dict[str, Any]]) -> dict[str, Any]:
    """What the workers did over the whole run (warm-up and tail included): batches, sizes, conflicts."""
    batches = sum(s["batches"] for s in stats)
    crit = [s["critical"] for s in stats if "critical" in s]
    return {"worker_batches": batches, "worker_events_per_batch": round(sum(s["events"] for s in stats) /
                                                                        max(batches, 1)),
            "worker_ms_per_batch": round(1e3 * sum(s["batch_s_total"] for s in stats) / max(batches, 1), 1),
            "critical_batches": sum(c["batches"] for c in crit),
            "critical_ms_per_batch": round(1e3 * sum(c["batch_s_total"] for c in crit) /
                                           max(sum(c["batches"] for c in crit), 1), 1),
            "chunk_commits": sum(b["chunk_commits"] for b in buckets),
            "chunk_conflicts": sum(b["conflicts"] for b in buckets)}


def _drain(out: Any, watcher: ProbeWatcher, names: list[str], bulk_sent: dict[str, float],
           block_s: float = 0.0) -> Any:
    """Move the producer's probe reports to the watcher; the final report when it arrives."""
    while True:
        try:
            msg = out.get(timeout=block_s) if block_s else out.get_nowait()
        except queue.Empty:
            return None
        if msg[0] == "done":
            return msg
        if msg[0] == "probe":
            _, p, t = msg
            bulk_sent[names[p]] = t
            watcher.expect(names[p], t)


@scenario("latency")
def latency_scenario(ctx: BenchContext) -> dict[str, Any]:
    seconds = 10.0 if ctx.quick else ctx.duration
    warmup_s = min(ctx.warmup_s, QUICK_WARMUP_S) if ctx.quick else ctx.warmup_s
    ctx.log(f"  freshness: {ctx.workers} worker processes (default options), bulk producer at {BULK_RATE:,} events/s "
            f"(send_batch), one critical and one bulk probe label every ~{PROBE_EVERY_S * 1000:.0f} ms, one scorer "
            f"(refresh every {ctx.config.refresh_interval_s * 1000:.0f} ms), {seconds:.0f}s after "
            f"{warmup_s:.0f}s of warm-up")
    out = {"latency_workers": ctx.workers, **run_freshness(ctx, seconds, warmup_s=warmup_s)}
    for lane, goal in (("critical", CRITICAL_GOAL_MS), ("bulk", BULK_GOAL_MS)):
        ctx.log(f"  {lane} label -> scorer: p50 {out.get(f'{lane}_fresh_p50_ms')} ms, p99 "
                f"{out.get(f'{lane}_fresh_p99_ms')} ms, max {out.get(f'{lane}_fresh_max_ms')} ms over "
                f"{out[f'{lane}_fresh_probes']} labels ({out[f'{lane}_lost']} not seen); goal p99 < {goal:.0f} ms")
    ctx.log(f"  bulk: {out['bulk_events_per_s']:,} events/s sent, {out['learned_events_per_s']:,} learned/s; "
            f"scorer: {out['scorer_polls_per_s']} head polls/s + {out['scorer_feed_polls_per_s']} feed polls/s + "
            f"{out['scorer_index_reads_per_s']} index reads/s "
            f"= {out['cluster_reads_per_s_per_100_scorers']:,} reads/s per 100 scorers")
    out.update(atomic_section(ctx))
    return out

