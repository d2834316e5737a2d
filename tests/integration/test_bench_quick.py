"""`cstore bench` end to end with one-second phases: the documented JSON keys are there and the
figures are real measurements (never speed targets: those live in benchmarks/RESULTS.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cstore.backend import BASELINE_KEYSPACE


def _bench(base_config, *args: str, timeout: float = 180) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")},
           "CSTORE_CONTACT_POINTS": ",".join(base_config.contact_points), "CSTORE_PORT": str(base_config.port),
           "CSTORE_KEYSPACE": base_config.keyspace}
    proc = subprocess.run([sys.executable, "-c", "from cstore.cli import main; main()", "bench", *args, "--json"],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_ingest_and_score_report_the_documented_keys(base_config, session):
    # start cold, as on a fresh machine: creating the baselines' keyspace once took longer than the
    # one-second ceiling phase, whose clock had started before it, and the ceiling wrote nothing
    session.execute(f"DROP KEYSPACE IF EXISTS {BASELINE_KEYSPACE}", timeout=120)
    ingest = _bench(base_config, "ingest", "--duration", "1", "--concurrency", "8")
    assert ingest["ingest_events_per_s"] > 0 and ingest["ceiling_events_per_s"] > 0, ingest
    assert ingest["ingest_send_events_per_s"] > 0 and ingest["ingest_send_events"] > 0
    # a row the ceiling could not write even after its retries is an error, reported with its cause
    assert ingest["ceiling_failed"] == 0, ingest.get("ceiling_first_error")
    assert ingest["ingest_events"] > 0 and ingest["ceiling_retries"] >= 0
    assert ingest["bench_peak_rss_mib"] > 0 and ingest["scenarios"] == ["ingest"]
    score = _bench(base_config, "score", "--duration", "1")
    assert 0 < score["score_p50_us"] <= score["score_p99_us"]
    assert 0 < score["naive_score_p50_us"] <= score["naive_score_p99_us"]
    assert score["score_samples"] == 10_000


def test_bench_latency_reports_freshness_atomic_updates_and_the_postgres_peer(base_config):
    out = _bench(base_config, "latency", "--duration", "2", "--warmup", "2", timeout=600)
    assert out["critical_fresh_probes"] > 0 and out["critical_lost"] == 0  # every critical label was seen
    # the warm-up's probes (one every 150-350 ms) are not among the measured: 2 s hold at most 14
    assert out["latency_warmup_s"] == 2.0 and out["critical_fresh_probes"] <= 14
    assert 0 < out["critical_fresh_p50_ms"] <= out["critical_fresh_p99_ms"] <= out["critical_fresh_max_ms"]
    assert len(out["critical_fresh_ms"]) == out["critical_fresh_probes"]
    assert out["bulk_events_per_s"] > 0 and out["scorer_polls_per_s"] > 0
    for path in ("cstore", "whole_chunk"):
        assert out[f"atomic_{path}_t1_updates_per_s"] > 0 and out[f"atomic_{path}_t1_errors"] == 0
        assert 0 < out[f"atomic_{path}_t1_p50_ms"] <= out[f"atomic_{path}_t1_p99_ms"]
    assert out["atomic_cstore_t32_updates_per_s"] > 0 and out["micro_cstore_coord_updates_per_s"] > 0
    for depth in (32, 256):  # one thread keeping updates in flight through submit_updates
        assert out[f"atomic_cstore_async{depth}_updates_per_s"] > 0 and out[f"atomic_cstore_async{depth}_errors"] == 0
        assert 0 < out[f"atomic_cstore_async{depth}_p50_ms"] <= out[f"atomic_cstore_async{depth}_p99_ms"]
    rates = [out[k] for k in out if k.startswith("atomic_cstore_") and k.endswith("_updates_per_s")]
    assert out["atomic_cstore_best_per_s"] == max(rates) and out["atomic_cstore_best_form"]
    # The peer must run where PostgreSQL is installed (this machine); elsewhere the reason is reported.
    assert not (Path("/usr/lib/postgresql").is_dir() and "postgres_skipped" in out), out.get("postgres_skipped")
    if "postgres_skipped" in out:
        assert "PostgreSQL" in out["postgres_skipped"] or "psycopg" in out["postgres_skipped"]
    else:
        assert out["atomic_postgres_t1_updates_per_s"] > 0 and out["micro_postgres_coord_updates_per_s"] > 0
        assert out["atomic_vs_postgres"] > 0 and out["postgres_version"].startswith("15")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/lib/postgresql").is_dir(),
                    reason="needs root (the server runs as user postgres) and a PostgreSQL install")
def test_the_postgres_peer_starts_from_a_checkout_its_user_cannot_reach(tmp_path):
    """A checkout in a mode-700 directory (what `mktemp -d` makes) is closed to user postgres: the peer's
    files go to the system's temporary directory instead, and nothing is left behind."""
    from cstore.bench._postgres import postgres_peer
    closed = tmp_path / "checkout"
    closed.mkdir(mode=0o700)
    lines: list[str] = []
    with postgres_peer(closed / ".local" / "bench-postgres", log=lines.append) as pg:
        assert pg.version and pg.atomic_updates(0.5, threads=1)["updates"] > 0
    assert any("cannot reach" in line for line in lines), lines
    assert not (closed / ".local" / "bench-postgres").exists()
    assert not list(Path(tempfile.gettempdir()).glob("cstore-bench-pg-*"))  # removed after the run
