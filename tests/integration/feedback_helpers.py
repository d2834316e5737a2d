"""Helpers shared by the feedback and worker tests: read the tables back, run the CLI."""
from __future__ import annotations

import base64
import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid

from cstore.backend import connect
from cstore.config import codec_from_env
from cstore.feedback import FeedbackLayout, decode_payload
from cstore.store import Store

KEY1 = "k1:" + base64.b64encode(b"1" * 32).decode()
KEY2 = "k2:" + base64.b64encode(b"2" * 32).decode()


def keyed_store(cfg, keys: str | None) -> Store:
    """A Store on ``cfg`` with the key ring ``keys`` (encryption at rest), or none."""
    return Store(connect(cfg, keyspace=cfg.keyspace),
                 codec=codec_from_env({"CSTORE_ENCRYPTION_KEY": keys} if keys else {}))


def cli_args(cfg) -> list[str]:
    return [sys.executable, "-c", "from cstore.cli import main; main()", "--contact-points",
            ",".join(cfg.contact_points), "--port", str(cfg.port), "--keyspace", cfg.keyspace]


def run_cli(cfg, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI on ``cfg``'s cluster, without the caller's ``CSTORE_*`` settings (``env`` adds some)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")}, **(env or {})}
    return subprocess.run(cli_args(cfg) + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def start_worker(cfg, model: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A ``cstore worker`` process for ``model`` on ``cfg``'s cluster; ``env`` adds ``CSTORE_*`` settings."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")}, **(env or {})}
    return subprocess.Popen(cli_args(cfg) + ["worker", "--model", model, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def all_segments(session, fcfg: FeedbackLayout) -> list[dict]:
    """Every segment of the model (all partitions, lanes, buckets), found through the bucket index."""
    q_idx = session.prepare("SELECT bucket, lane FROM feedback_buckets WHERE model_id = ? AND part = ?")
    q_seg = session.prepare("SELECT seg_id, n_events, payload FROM feedback_segments WHERE model_id = ? AND part = ? "
                            "AND lane = ? AND bucket = ?")
    out = []
    for part in range(fcfg.critical_part + 1):
        for r in session.execute(q_idx, (fcfg.model_id, part)):
            for s in session.execute(q_seg, (fcfg.model_id, part, r["lane"], r["bucket"])):
                out.append({"part": part, "lane": r["lane"], "bucket": r["bucket"], **s})
    return out


def all_events(session, fcfg: FeedbackLayout) -> list:
    return [ev for s in all_segments(session, fcfg) for ev in decode_payload(s["payload"])]


def learned_counts(store, name: str, shared) -> tuple[collections.Counter, list[dict]]:
    """How many times each segment was learned: batch traces whose batch id is in the committed history (a
    bulk batch's commit, or the commit that folded a critical batch's increment)."""
    committed: set = set()
    for h in store.history(name, since=time.time() - 3600):  # a critical batch's increment: in the commit folding it
        committed.update([h.metadata["batch"]] if h.metadata.get("batch") else [])
        committed.update(h.metadata.get("increments", []))
    traces = [t for t in shared.traces(time.time() - 3600) if str(t["batch_id"]) in committed]
    counts: collections.Counter = collections.Counter()
    for t in traces:
        for _, _, seg_id, _ in t["segments"]:
            counts[seg_id] += 1
    return counts, traces


def new_name(prefix: str = "fb") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_for(predicate, timeout: float, what: str, every: float = 0.25, *, tolerate: tuple = ()):
    """Poll ``predicate`` until it returns something true; exceptions in ``tolerate`` count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except tolerate as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else ""))


def stop_workers(procs) -> list[dict]:
    """SIGTERM the worker processes; each must exit 0 and print its final stats as JSON."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def learning_tally(store, name: str) -> tuple[int, int, int]:
    """(segments never learned, events learned more than once, events learned in total) of model ``name``."""
    from cstore.feedback import context
    from cstore.training import SharedLearnerState

    fcfg = context(store).layout(name)[1]
    shared = SharedLearnerState(store.backend.fleet, fcfg.model_id, "default", {}, {}, ttl_s=fcfg.ttl_s)
    counts, traces = learned_counts(store, name, shared)
    segs = {s["seg_id"]: s["n_events"] for s in all_segments(store.backend.session, fcfg)}
    missing = sum(1 for s in segs if counts[s] == 0)
    dups = sum(segs[s] * (c - 1) for s, c in counts.items() if c > 1)
    return missing, dups, sum(t["n_learned"] for t in traces)
