"""Run a stream test-then-train through the whole cstore system on a real Cassandra.

Per block of ``block`` events (in stream order):

1. the :class:`~cstore.Client` scores each event from its cached model (``model.score``);
2. the labels are sent as explicit feedback (a buffered :class:`FeedbackWriter`, flushed: durable);
3. K workers (threads in this process, or ``cstore worker`` processes) lease the feedback partitions,
   learn micro-batches and commit them; we wait until the partitions' checkpoints count every event
   sent so far (learned and committed), read the head version and wait for the client's refresher
   to reach it;
4. the shared learner state (``learner_state``: the drift detector of the whole consumer group) is
   read; a new detection is attributed to this block's last event (block resolution).

So every event is scored by a model that has learned everything up to the previous block: the
micro-batch delay is real (the model lags by up to one block) but bounded, and the comparison with an
in-memory learner measures the system's learning, not a backlog that depends on the machine's speed.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cstore.feedback import FeedbackReader, FeedbackWriter, context
from cstore_dev.evaluation.datasets import Stream

log = logging.getLogger("cstore.eval")

#: Events scored between two feedback round trips by default. A block stands for the events a model scores
#: while its latest labels are on their way (sent, learned, committed, refreshed): about 70 ms on one idle
#: local node here, so 20 is a stream of ~300 labelled events/s per model at that freshness. At 100 a short
#: stream pays for it: Phishing's 1,250 events scored 8% of the stream before any label was learned
#: (-0.009 AUC, +0.030 log loss against the per-event references; 0.0001 / +0.0009 at 20). Every stream
#: of the eval scores at least as well at 20 as at 100 (benchmarks/QUALITY.md); ``--block`` sets another.
DEFAULT_BLOCK = 20


@dataclass
class SystemSettings:
    """How the system run is set up (the learner settings go to :func:`create_learner`)."""

    workers: int = 1
    processes: bool = False          # workers as `cstore worker` processes instead of threads
    block: int = DEFAULT_BLOCK       # events scored before their labels are sent and learned
    learner: Mapping[str, Any] = field(default_factory=dict)
    step_timeout_s: float = 60.0     # a block not learned by then is an error, not a silent backlog
    keep_model: bool = False


@dataclass
class SystemResult:
    model: str
    proba: np.ndarray
    detections: list[int]
    learner_config: dict[str, Any]
    seconds: float
    blocks: int
    stale_blocks: int                # blocks scored by a model older than the previous block's head
    head_version: int
    worker_stats: list[dict[str, Any]]


class _ThreadFleet:
    def __init__(self, store, model: str, k: int, opts: Mapping[str, Any]) -> None:
        from cstore.training import Worker
        self.workers = [Worker(store, model, **opts) for _ in range(k)]
        self.threads = [threading.Thread(target=w.run, name=f"eval-worker-{i}", daemon=True)
                        for i, w in enumerate(self.workers)]
        for t in self.threads:
            t.start()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def stop(self) -> list[dict[str, Any]]:
        for w in self.workers:
            w.stop()
        for t in self.threads:
            t.join(timeout=30)
        return [dict(w.stats) for w in self.workers]


class _ProcessFleet:
    """``cstore worker`` processes, connected to the same cluster and keyspace through CSTORE_* variables."""

    def __init__(self, cfg, model: str, k: int, opts: Mapping[str, Any]) -> None:
        env = dict(os.environ)
        env.update({"CSTORE_CONTACT_POINTS": ",".join(cfg.contact_points), "CSTORE_PORT": str(cfg.port),
                    "CSTORE_KEYSPACE": cfg.keyspace})
        args = [sys.executable, "-c", "from cstore.cli import main; main()", "worker", "--model", model,
                "--batch-size", str(opts["batch_size"]), "--max-wait-ms", str(opts["max_wait_ms"]),
                "--poll-ms", str(opts["poll_ms"]), "--lease-ttl", str(opts["lease_ttl_s"])]
        self.procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                      for _ in range(k)]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> list[dict[str, Any]]:
        import json
        out = []
        for p in self.procs:
            if p.poll() is None:
                p.terminate()  # SIGTERM: the worker finishes its batch and releases its leases
        for p in self.procs:
            try:
                stdout, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, _ = p.communicate()
            lines = [ln for ln in (stdout or "").splitlines() if ln.startswith("{")]
            out.append(json.loads(lines[-1]) if lines else {"exit": p.returncode})
        return out


def run_system(cfg, stream: Stream, settings: SystemSettings) -> SystemResult:
    """Create a fresh learner, run the stream through client, feedback and workers; drop the model after."""
    from cstore.scoring import Client
    from cstore.store import Store
    from cstore.training import create_learner, learner_config

    admin = Store.from_config(cfg)
    name = f"eval-{stream.name}-{uuid.uuid4().hex[:8]}"
    k = settings.workers
    # One partition per worker, and (below) one segment per block: a worker lists a block whole or not at
    # all, so one worker learns each block as one batch in event order, as its in-memory replica does.
    info = create_learner(admin, name, partitions=k, **settings.learner)
    lcfg = learner_config(info).to_dict()
    _, fcfg = context(admin).layout(name)
    reader = FeedbackReader(admin.backend.feedback, fcfg, "default")
    # A block is one batch for a single worker; with K workers each sees its partitions' share at once.
    opts = {"batch_size": settings.block, "max_wait_ms": 20.0, "poll_ms": 5.0, "lease_ttl_s": 10.0}
    # The refresher polls the chunk-version index every 20 ms (the shortest setting) so a block's wait for
    # the new head is dominated by the system, not by a poll interval chosen for production.
    client = Client(config=dataclasses.replace(cfg, refresh_interval_s=0.02))
    fleet: _ThreadFleet | _ProcessFleet | None = None
    stats: list[dict[str, Any]] = []
    try:
        model = client.model(name)
        worker_store = None
        if settings.processes:
            fleet = _ProcessFleet(cfg, name, k, opts)
        else:
            worker_store = Store.from_config(cfg)
            fleet = _ThreadFleet(worker_store, name, k, opts)
        # Segments are sealed when a block is complete (max_batch) or flushed, never by the linger mid-block.
        writer = FeedbackWriter(admin, name, linger_ms=60_000.0, max_batch=max(settings.block, 1))
        proba = np.empty(stream.n)
        detections: list[int] = []
        seen_drifts, stale, version = 0, 0, 0
        t0 = time.monotonic()
        for lo in range(0, stream.n, settings.block):
            hi = min(lo + settings.block, stream.n)
            if (model.version or 0) < version:
                stale += 1
            for i in range(lo, hi):
                proba[i] = model.score(i, stream.features[i], log=False)
            for i in range(lo, hi):
                writer.send(i, float(stream.labels[i]), features=stream.features[i])
            writer.flush(timeout=settings.step_timeout_s)
            _wait_learned(reader, fcfg.partitions, hi, settings.step_timeout_s, fleet)
            version = _committed_version(admin, info)
            if not model.wait_for_version(version, timeout=settings.step_timeout_s):
                raise TimeoutError(f"the client did not refresh to version {version} in {settings.step_timeout_s} s")
            drifts = _drifts(admin, info.model_id)
            if drifts > seen_drifts:
                detections.extend([hi] * (drifts - seen_drifts))
                seen_drifts = drifts
        seconds = time.monotonic() - t0
        writer.close()
        stats = fleet.stop()
        fleet = None
        if worker_store is not None:
            worker_store.close()
        return SystemResult(name, proba, detections, lcfg, seconds, -(-stream.n // settings.block), stale,
                            version, stats)
    finally:
        if fleet is not None:
            fleet.stop()
        client.close()
        if not settings.keep_model:
            try:
                admin.drop_model(name, confirm=name)
            except Exception as exc:  # cleanup must not hide the result or the real error
                log.warning("could not drop evaluation model %s: %s", name, exc)
        admin.close()


def _wait_learned(reader: FeedbackReader, partitions: int, target: int, timeout: float, fleet) -> None:
    """Until the partitions' checkpoints count ``target`` learned events (checkpoints follow commits)."""
    deadline = time.monotonic() + timeout
    while True:
        learned = sum(c.events for _, lanes in reader.load(range(partitions), serial=False).values()
                      for c in lanes.values())
        if learned >= target:
            return
        if not fleet.alive():
            raise RuntimeError("a worker of the evaluation stopped unexpectedly")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers learned {learned} of {target} events within {timeout} s")
        time.sleep(0.003)


def _committed_version(store, info) -> int:
    """The model's head version from its chunk rows themselves. Not the chunk-version index
    (``head_version``): a worker announces its commits there after they are acknowledged, from its own
    thread, so a block read from the index under load could be scored by the model one batch behind and
    never be counted stale (CI: 1 in 3 runs on a loaded machine scored one block of 63 that way)."""
    rows = store.backend.params.chunk_versions(info.model_id, list(range(info.max_chunks)), list(info.params))
    return sum(int(r["version"]) for per_chunk in rows for r in per_chunk)


def _drifts(store, model_id: uuid.UUID) -> int:
    """Detections so far of the group's shared drift detector (the counter every worker advances)."""
    row = store.backend.fleet.learner_state(model_id, "default", serial=False)
    return int(row["drifts"] or 0) if row else 0
