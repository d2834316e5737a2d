"""Keyspace creation and the numbered CQL migrations shipped in ``cstore/backend/cql/``.

Each applied file is recorded with its SHA-256; re-running is a no-op and a file that changed
after it was applied is refused (write a new migration instead). The migrations are package data:
an installed wheel carries them, and ``$CSTORE_CQL_DIR`` may point at another copy.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cassandra.query import SimpleStatement

from cstore.backend._errors import translated
from cstore.backend._statements import Runner
from cstore.config import Config
from cstore.errors import SchemaError

_FILE_RE = re.compile(r"^(\d{3,})_[a-z0-9_]+\.cql$")
Run = Callable[..., Any]


def cql_dir() -> Path:
    """Where the migrations live: ``$CSTORE_CQL_DIR``, else the copy inside this package."""
    env = os.environ.get("CSTORE_CQL_DIR")
    path = Path(env) if env else Path(__file__).resolve().parent / "cql"
    if not path.is_dir():
        raise SchemaError(f"no migrations directory at {path}; "
                          + ("fix CSTORE_CQL_DIR" if env else "reinstall cstore (its wheel ships cql/)"))
    return path


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    checksum: str

    @property
    def statements(self) -> list[str]:
        return split_statements(self.path.read_text())


def split_statements(text: str) -> list[str]:
    """Split a CQL file on ``;`` at end of line, dropping ``--`` comments."""
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    body = "\n".join(ln.split(" --")[0] if " --" in ln else ln for ln in lines)
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def baseline_migrations() -> Path:
    """The migrations of the benchmarks' baseline keyspace (never applied to cstore's own)."""
    return cql_dir() / "bench"


def migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or cql_dir()
    out = []
    for p in sorted(directory.glob("*.cql")):
        if not _FILE_RE.match(p.name):
            raise SchemaError(f"{p.name}: migration files are named NNN_description.cql (lower case)")
        out.append(Migration(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest()))
    return out


def replication_map(cfg: Config, replication_factor: int | None = None,
                    dcs: dict[str, int] | None = None) -> dict[str, object]:
    dcs = dcs or dict(cfg.replication_dcs)
    if dcs:
        return {"class": "NetworkTopologyStrategy", **dcs}
    return {"class": "SimpleStrategy", "replication_factor": replication_factor or cfg.replication_factor}


def _replication_cql(rep: dict[str, object]) -> str:
    # Values are validated ints and DC names from configuration; DC names are quoted literals.
    parts = []
    for k, v in rep.items():
        if not re.match(r"^[A-Za-z0-9_.\-]+$", str(k)) or not re.match(r"^[A-Za-z0-9_.]+$", str(v)):
            raise SchemaError(f"invalid replication setting {k!r}: {v!r}")
        parts.append(f"'{k}': '{v}'")
    return "{" + ", ".join(parts) + "}"


def ensure_keyspace(run: Run, keyspace: str, replication: dict[str, object]) -> None:
    """Create the keyspace and the migrations table unless they exist.

    Existing ones are looked up first because ``CREATE KEYSPACE IF NOT EXISTS`` needs CREATE on ALL
    KEYSPACES even when the keyspace is there: an admin role limited to its keyspace can then migrate.
    """
    # Keyspace names are validated by Config (lower-case identifier), never user free text.
    tables = {r["table_name"] for r in run("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                                           (keyspace,))}
    if not tables and run("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                          (keyspace,)).one() is None:
        run(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {_replication_cql(replication)}")
    if "schema_migrations" not in tables:
        run(f"CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations ("
            f"name text PRIMARY KEY, checksum text, applied_at timestamp)")


@contextmanager
def _ddl_on_one_node(session: Any, wait_s: float = 120.0) -> Iterator[Run]:
    """Run one migration's statements on a single coordinator and wait for schema agreement once, at the end.

    The driver otherwise waits for agreement after every statement (about 1.6 s each on three nodes);
    one coordinator keeps each statement ordered after the ones it depends on.
    """
    cluster = session.cluster
    host = next((h for h in cluster.metadata.all_hosts() if h.is_up), None)
    saved = cluster.max_schema_agreement_wait
    cluster.max_schema_agreement_wait = 0
    try:
        yield lambda stmt, params=None: session.execute(stmt, params, timeout=60, host=host)
    finally:
        cluster.max_schema_agreement_wait = saved
    if not cluster.control_connection.wait_for_schema_agreement(wait_time=wait_s):
        raise SchemaError(f"the nodes did not agree on the schema within {wait_s:.0f} s; check that every node "
                          f"is up (`cstore local status`, `nodetool describecluster`), then re-run `cstore schema "
                          f"apply` (it is idempotent)")
    cluster.refresh_schema_metadata()


def _applied(session: Any, keyspace: str) -> dict[str, dict[str, Any]]:
    rows = session.execute(SimpleStatement(f"SELECT name, checksum, applied_at FROM {keyspace}.schema_migrations"))
    return {r["name"]: r for r in rows}


def schema_status(backend: Runner, keyspace: str, directory: Path | None = None) -> list[dict[str, Any]]:
    """Each migration file with its state: applied, pending or changed."""
    with translated("schema status"):
        done = _applied(backend.session, keyspace)
    out = []
    for m in migrations(directory):
        row = done.get(m.name)
        state = "pending" if row is None else ("applied" if row["checksum"] == m.checksum else "changed")
        out.append({"name": m.name, "state": state,
                    "applied_at": row["applied_at"].isoformat() if row and row["applied_at"] else None})
    return out


def apply_schema(backend: Runner, keyspace: str, replication: dict[str, object], directory: Path | None = None,
                 log: Callable[[str], None] = print) -> list[str]:
    """Create the keyspace if needed and apply pending migrations in order; return what was applied."""
    with translated("schema apply"):
        return _apply(backend.session, keyspace, replication, directory, log)


def _apply(session: Any, keyspace: str, replication: dict[str, object], directory: Path | None,
           log: Callable[[str], None]) -> list[str]:
    todo = migrations(directory)
    with _ddl_on_one_node(session) as run:
        ensure_keyspace(run, keyspace, replication)
    done = _applied(session, keyspace)
    for m in todo:
        row = done.get(m.name)
        if row is not None and row["checksum"] != m.checksum:
            raise SchemaError(f"migration {m.name} changed after it was applied (checksum "
                              f"{row['checksum'][:12]}… → {m.checksum[:12]}…); never edit an applied "
                              f"migration: restore it and add a new numbered file instead")
    session.set_keyspace(keyspace)  # migration files name their tables without the keyspace
    applied_now = []
    for m in todo:
        if m.name in done:
            continue
        with _ddl_on_one_node(session) as run:
            for stmt in m.statements:
                try:
                    run(SimpleStatement(stmt))
                except Exception as exc:
                    raise SchemaError(f"{m.name}: statement failed: {exc}\n{stmt[:200]}") from None
            run(f"INSERT INTO {keyspace}.schema_migrations (name, checksum, applied_at) VALUES (%s, %s, %s)",
                (m.name, m.checksum, datetime.now(UTC)))
        applied_now.append(m.name)
        log(f"applied {m.name}")
    return applied_now
