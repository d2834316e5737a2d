"""Foundation against the real node: keyspace, prepared statements, LWTs, migration runner."""
from __future__ import annotations

import uuid

import pytest
from cassandra.query import SimpleStatement

from cstore.backend import apply_schema, schema_status
from cstore.errors import ConnectionFailed, SchemaError
from cstore.backend import connect


def test_keyspace_created_with_replication(session, base_config):
    row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                          (base_config.keyspace,)).one()
    assert row is not None
    assert row["replication"]["class"].endswith("SimpleStrategy")
    assert row["replication"]["replication_factor"] == "1"


@pytest.fixture
def kv_table(session):
    name = "kv_" + uuid.uuid4().hex[:8]
    session.execute(f"CREATE TABLE {name} (k text PRIMARY KEY, v text, version bigint)")
    yield name
    session.execute(f"DROP TABLE {name}")


def test_prepared_write_and_read(session, kv_table):
    ins = session.prepare(f"INSERT INTO {kv_table} (k, v, version) VALUES (?, ?, ?)")
    sel = session.prepare(f"SELECT v, version FROM {kv_table} WHERE k = ?")
    session.execute(ins, ("a", "hello", 1))
    row = session.execute(sel, ("a",)).one()
    assert row == {"v": "hello", "version": 1}


def test_lwt_if_not_exists_and_if_version(session, kv_table):
    ins = session.prepare(f"INSERT INTO {kv_table} (k, v, version) VALUES (?, ?, ?) IF NOT EXISTS")
    upd = session.prepare(f"UPDATE {kv_table} SET v = ?, version = ? WHERE k = ? IF version = ?")
    first = session.execute(ins, ("k1", "v1", 1))
    assert first.was_applied
    again = session.execute(ins, ("k1", "other", 1))
    assert not again.was_applied
    assert again.one()["v"] == "v1"  # a refused LWT returns the current row
    ok = session.execute(upd, ("v2", 2, "k1", 1))
    assert ok.was_applied
    stale = session.execute(upd, ("v3", 3, "k1", 1))
    assert not stale.was_applied
    assert stale.one()["version"] == 2
    assert session.execute(f"SELECT v, version FROM {kv_table} WHERE k = 'k1'").one() == {"v": "v2", "version": 2}


def _migrations_dir(tmp_path, body="CREATE TABLE IF NOT EXISTS m_one (k int PRIMARY KEY, v text);"):
    d = tmp_path / "cql"
    d.mkdir()
    (d / "001_first.cql").write_text("-- a comment\n" + body + "\n")
    (d / "002_second.cql").write_text("CREATE TABLE IF NOT EXISTS m_two (k int PRIMARY KEY);\n"
                                      "INSERT INTO m_two (k) VALUES (7);\n")
    return d


def test_migration_runner_idempotent_and_refuses_changed_file(backend, session, base_config, tmp_path):
    ks = "mig_" + uuid.uuid4().hex[:8]
    d = _migrations_dir(tmp_path)
    rep = {"class": "SimpleStrategy", "replication_factor": 1}
    try:
        assert apply_schema(backend, ks, rep, d, log=lambda m: None) == ["001_first.cql", "002_second.cql"]
        assert session.execute(f"SELECT k FROM {ks}.m_two").one()["k"] == 7
        assert apply_schema(backend, ks, rep, d, log=lambda m: None) == []
        assert [r["state"] for r in schema_status(backend, ks, d)] == ["applied", "applied"]
        (d / "003_third.cql").write_text("ALTER TABLE m_one ADD extra int;\n")
        assert schema_status(backend, ks, d)[2]["state"] == "pending"
        assert apply_schema(backend, ks, rep, d, log=lambda m: None) == ["003_third.cql"]
        (d / "001_first.cql").write_text("CREATE TABLE IF NOT EXISTS m_one (k int PRIMARY KEY, v int);\n")
        with pytest.raises(SchemaError, match="001_first.cql changed after it was applied"):
            apply_schema(backend, ks, rep, d, log=lambda m: None)
        assert schema_status(backend, ks, d)[0]["state"] == "changed"
    finally:
        session.execute(SimpleStatement(f"DROP KEYSPACE IF EXISTS {ks}"), timeout=60)
        session.set_keyspace(base_config.keyspace)  # the suite's keyspace (CSTORE_TEST_KEYSPACE)


def test_unreachable_cluster_gives_clear_error(base_config):
    from cstore.config import load_config
    cfg = load_config({"contact_points": "127.0.0.250", "port": 9042, "connect_timeout_s": 1}, env={})
    with pytest.raises(ConnectionFailed, match="no Cassandra node answered at 127.0.0.250"):
        connect(cfg)


def test_a_missing_keyspace_is_named_with_the_command_that_creates_it(base_config, session):
    """The driver reports a missing keyspace as "no host available"; the error must not send the user
    after the network or TLS, and connecting must not create anything."""
    from cstore.config import load_config
    cfg = load_config({"contact_points": ",".join(base_config.contact_points), "port": base_config.port,
                       "keyspace": "cstore_no_such_keyspace"}, env={})
    with pytest.raises(ConnectionFailed, match=r"keyspace 'cstore_no_such_keyspace' does not exist.*"
                                               r"cstore schema apply") as info:
        connect(cfg, keyspace=cfg.keyspace)
    assert "TLS" not in str(info.value)
    assert session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                           ("cstore_no_such_keyspace",)).one() is None
