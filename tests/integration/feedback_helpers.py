"""Helpers shared by the feedback and worker tests: read the tables back, run the CLI."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
import uuid

from cstore.feedback import FeedbackConfig, decode_payload


def cli_args(cfg) -> list[str]:
    return [sys.executable, "-c", "from cstore.cli import main; main()", "--contact-points",
            ",".join(cfg.contact_points), "--port", str(cfg.port), "--keyspace", cfg.keyspace]


def run_cli(cfg, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")}
    return subprocess.run(cli_args(cfg) + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def start_worker(cfg, model: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")}
    return subprocess.Popen(cli_args(cfg) + ["worker", "--model", model, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def all_segments(session, fcfg: FeedbackConfig) -> list[dict]:
    """Every segment of the model (all partitions, lanes, buckets), found through the bucket index."""
    q_idx = session.prepare("SELECT bucket, lane FROM feedback_buckets WHERE model_id = ? AND part = ?")
    q_seg = session.prepare("SELECT seg_id, n_events, payload FROM feedback_segments WHERE model_id = ? AND part = ? "
                            "AND lane = ? AND bucket = ?")
    out = []
    for part in range(fcfg.partitions):
        for r in session.execute(q_idx, (fcfg.model_id, part)):
            for s in session.execute(q_seg, (fcfg.model_id, part, r["lane"], r["bucket"])):
                out.append({"part": part, "lane": r["lane"], "bucket": r["bucket"], **s})
    return out


def all_events(session, fcfg: FeedbackConfig) -> list:
    return [ev for s in all_segments(session, fcfg) for ev in decode_payload(s["payload"])]


def learned_counts(store, name: str, shared) -> tuple[collections.Counter, list[dict]]:
    """How many times each segment was learned: batch traces whose batch id is in the committed history."""
    committed = {h.metadata.get("batch") for h in store.history(name, since=time.time() - 3600)
                 if h.metadata.get("batch")}
    traces = [t for t in shared.traces(time.time() - 3600) if str(t["batch_id"]) in committed]
    counts: collections.Counter = collections.Counter()
    for t in traces:
        for _, _, seg_id, _ in t["segments"]:
            counts[seg_id] += 1
    return counts, traces


def new_name(prefix: str = "fb") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
