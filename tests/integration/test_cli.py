"""The CLI against the real node: help, config, schema, model lifecycle, history, stats, errors."""
from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from cstore.cli import main


@pytest.fixture
def run(base_config):
    env = {"CSTORE_CONTACT_POINTS": ",".join(base_config.contact_points), "CSTORE_PORT": str(base_config.port),
           "CSTORE_KEYSPACE": base_config.keyspace}
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result
    return invoke


def test_help_lists_every_command_with_a_purpose():
    out = CliRunner().invoke(main, ["--help"]).output
    for cmd in ("local", "schema", "model", "history", "stats", "config"):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(cmd + " ")), None)
        assert line and len(line.split(None, 1)[1]) > 10, f"{cmd} lacks a one-line purpose"


def test_config_shows_sources_and_hides_password(run):
    out = run("config").output
    data = json.loads(out)
    assert data["source"]["keyspace"] == "CSTORE_KEYSPACE"
    result = CliRunner().invoke(main, ["config"], env={"CSTORE_PASSWORD": "hunter2", "CSTORE_USERNAME": "u"})
    assert "hunter2" not in result.output and '"***"' in result.output


def test_schema_status_and_local_status(run):
    rows = json.loads(run("schema", "status", "--json").output)
    assert rows and all(r["state"] == "applied" for r in rows)
    assert "001_parameters.cql" in {r["name"] for r in rows}


def test_model_lifecycle_via_cli(run, unique_name):
    run("model", "create", unique_name, "--param", "w=100", "--param", "emb=10x2", "--chunk-size", "32")
    assert unique_name in run("model", "list").output
    shown = json.loads(run("model", "show", unique_name, "--json").output)
    assert shown["params"] == {"w": [100], "emb": [10, 2]} and shown["chunks"]["w"] == 4
    upd = json.loads(run("model", "update", unique_name, "w", "--index", "1", "--index", "40",
                         "--value", "2", "--value", "3", "--lr", "0.5", "--json").output)
    assert upd["chunks"] == [0, 1] and upd["coords"] == 2
    snap = json.loads(run("model", "snapshot", unique_name, "--reason", "cli test", "--json").output)["snapshot"]
    run("model", "update", unique_name, "w", "--index", "1", "--value", "9", "--type", "direct")
    rb = json.loads(run("model", "rollback", unique_name, str(snap), "--reason", "undo", "--json").output)
    assert rb["head_version"] > snap
    versions = json.loads(run("model", "versions", unique_name, "--json").output)
    assert versions["snapshots"][0]["reason"] == "cli test"
    hist = json.loads(run("history", unique_name, "--json", "--limit", "0").output)
    assert {h["update_type"] for h in hist} == {"gradient", "direct", "rollback"}
    assert "gradient" in run("history", unique_name, "--since", "10m").output
    stats = json.loads(run("stats", unique_name, "--json").output)
    assert sum(b["updates"] for b in stats) >= 3
    bad = run("model", "update", unique_name, "w", "--index", "1000", "--value", "1", ok=False)
    assert bad.exit_code == 1 and "out of range" in bad.output and "Traceback" not in bad.output
    refused = run("model", "drop", unique_name, ok=False)
    assert refused.exit_code == 1 and "--confirm" in refused.output
    run("model", "drop", unique_name, "--confirm", unique_name)
    gone = run("model", "show", unique_name, ok=False)
    assert gone.exit_code == 1 and f"unknown model '{unique_name}'" in gone.output


def test_cli_input_errors_are_clear(run):
    r = run("model", "create", "x1", "--param", "w", ok=False)
    assert r.exit_code == 2 and "NAME=SHAPE" in r.output
    r = run("history", "whatever", "--since", "yesterday-ish", ok=False)
    assert r.exit_code != 0 and ("ISO time" in r.output or "unknown model" in r.output)
    r = CliRunner().invoke(main, ["model", "list"], env={"CSTORE_PROFILE": "strnog"})
    assert r.exit_code == 1 and "unknown consistency profile 'strnog'" in r.output


def test_an_expected_error_is_one_line_without_a_traceback_unless_verbose():
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")}
    cmd = [sys.executable, "-c", "from cstore.cli import main; main()"]
    quiet = subprocess.run(cmd + ["--port", "9", "model", "list"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 1
    assert len(quiet.stderr.strip().splitlines()) == 1 and quiet.stderr.startswith("error: no Cassandra")
    loud = subprocess.run(cmd + ["-v", "--port", "9", "model", "list"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "error: no Cassandra" in loud.stderr


def test_schema_plan_prints_the_pending_cql_and_writes_nothing(run, base_config, session):
    assert "up to date, nothing to run" in run("schema", "plan").output
    fresh = f"plan_{uuid.uuid4().hex[:8]}"
    out = json.loads(run("--keyspace", fresh, "schema", "plan", "--json").output)
    assert [m["name"] for m in out][:5] == ["001_parameters.cql", "002_feedback.cql", "003_prediction_log.cql",
                                             "004_model_history_bucket.cql", "005_deltas_and_heads.cql"]
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS chunks") for s in out[0]["statements"])
    assert session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                           (fresh,)).one() is None  # a plan creates nothing
