"""`cstore bench` end to end with one-second phases: the documented JSON keys are there and the
figures are real measurements (never speed targets: those live in benchmarks/RESULTS.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def _bench(base_config, *args: str) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")},
           "CSTORE_CONTACT_POINTS": ",".join(base_config.contact_points), "CSTORE_PORT": str(base_config.port),
           "CSTORE_KEYSPACE": base_config.keyspace}
    proc = subprocess.run([sys.executable, "-c", "from cstore.cli import main; main()", "bench", *args, "--json"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_ingest_and_score_report_the_documented_keys(base_config):
    ingest = _bench(base_config, "ingest", "--duration", "1", "--concurrency", "8")
    assert ingest["ingest_events_per_s"] > 0 and ingest["ceiling_events_per_s"] > 0
    assert ingest["ingest_send_events_per_s"] > 0 and ingest["ingest_send_events"] > 0
    assert ingest["ceiling_failed"] == 0 and ingest["ingest_events"] > 0
    assert ingest["bench_peak_rss_mib"] > 0 and ingest["scenarios"] == ["ingest"]
    score = _bench(base_config, "score", "--duration", "1")
    assert 0 < score["score_p50_us"] <= score["score_p99_us"]
    assert 0 < score["naive_score_p50_us"] <= score["naive_score_p99_us"]
    assert score["score_samples"] == 10_000
