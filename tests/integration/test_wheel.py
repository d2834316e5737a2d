"""The wheel is the product: built from the repository and installed alone into a fresh virtual
environment, it carries its migrations and ``py.typed``, no development tooling, and ``cstore schema
apply`` works against the test node."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Deprecat" not in proc.stdout + proc.stderr  # e.g. a license table setuptools stops accepting
    (built,) = out.glob("cstore-*.whl")
    return built


def test_the_wheel_ships_what_it_needs_and_no_tooling(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "cstore/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the licence text travels with the wheel"
    for migration in ("001_parameters.cql", "002_feedback.cql", "003_prediction_log.cql",
                      "004_model_history_bucket.cql", "005_deltas_and_heads.cql", "006_history_buckets.cql",
                      "007_governance.cql",
                      "008_protection.cql",
                      "bench/001_naive.cql",
                      "roles/roles.cql"):
        assert f"cstore/backend/cql/{migration}" in names, migration
    assert not [n for n in names if "cstore_dev" in n or "maven" in n.lower() or "/local/" in n]
    assert not [n for n in names if n.startswith(("tests/", "dev/"))]


@pytest.mark.slow
def test_the_wheel_installed_alone_applies_the_schema(wheel, tmp_path, base_config, session):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    keyspace = "wheel_" + uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSTORE_", "PYTHONPATH"))}
    env.update(CSTORE_CONTACT_POINTS=",".join(base_config.contact_points), CSTORE_PORT=str(base_config.port),
               CSTORE_KEYSPACE=keyspace)
    try:
        # Run outside the repository, so that nothing of the source tree can be picked up.
        proc = subprocess.run([str(venv / "bin" / "cstore"), "schema", "apply"], capture_output=True, text=True,
                              timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "applied 004_model_history_bucket.cql" in proc.stdout
        where = subprocess.run([str(venv / "bin" / "python"), "-c", "import cstore; print(cstore.__file__)"],
                               capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
        assert where.startswith(str(venv))
        tables = {r["table_name"] for r in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))}
        assert {"models", "chunks", "history", "feedback_segments", "prediction_log"} <= tables
        # A consumer's type checker sees cstore's annotations (py.typed): a wrong use is an error.
        app = tmp_path / "app.py"
        app.write_text("import cstore\n\nstore: cstore.Store = cstore.connect()\n"
                       "version: int = store.head_version('fraud')\nwrong: str = store.head_version('fraud')\n")
        mypy = subprocess.run([sys.executable, "-m", "mypy", "--python-executable", str(venv / "bin" / "python"),
                               "--no-incremental", str(app)], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300)
        assert mypy.returncode == 1 and "app.py:5: error: Incompatible types in assignment" in mypy.stdout, \
            mypy.stdout[-2000:]
        assert "app.py:3" not in mypy.stdout and "missing library stubs" not in mypy.stdout
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
