"""Security: login, least-privilege roles, TLS client→node, encryption at rest of chunks.

Auth and TLS run against a PRIVATE node (127.0.0.41) started with PasswordAuthenticator,
CassandraAuthorizer and ``client_encryption_options`` (certificates generated here, into tmp);
encryption at rest runs on the shared test node (it needs no special server).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from cstore.backend import apply_schema, schema_status
from cstore.core import CodecPipeline
from cstore.config import load_config
from cstore.config import codec_from_env as pipeline_from_env
from cstore.core import AesGcmStage, Keyring
from cstore.errors import ConfigError, ConnectionFailed, CorruptData, PermissionDenied
from cstore_dev.local.certs import generate
from cstore.backend import ROLES, apply_roles
from cstore.backend import connect
from cstore.store import Store
from private_cluster import private_cluster, retrying

KS = "sec"
PASSWORDS = {r: f"{r}-{secrets.token_urlsafe(16)}" for r in ROLES}  # random: a leak is unmistakable


@pytest.fixture(scope="module")
def sec1(tmp_path_factory):
    """One private node with auth and TLS (client certificates required)."""
    tls = generate(tmp_path_factory.mktemp("tls"), ["127.0.0.41"])
    with private_cluster("sec1", 41, auth=True, tls=tls) as cluster:
        def set_up():
            with connect(cfg(tls, "cassandra", "cassandra", keyspace=None, request_timeout_s=60.0)) as conn:
                apply_schema(conn, KS, {"class": "SimpleStrategy", "replication_factor": 1},
                             log=lambda m: None)
                return apply_roles(conn, KS, PASSWORDS, log=lambda m: None)
        report = retrying(set_up)
        assert report.grants > 20 and not report.skipped, report
        with Store.from_config(cfg(tls, "sec_admin", PASSWORDS["admin"])) as admin:
            admin.create_model("fraud", {"w": (64,)}, chunk_size=16)
        yield cluster, tls


def cfg(tls, username=None, password=None, keyspace=KS, **extra):
    over = {"contact_points": "127.0.0.41", "username": username, "password": password,
            "ssl_ca": str(tls / "ca.pem"), "ssl_cert": str(tls / "client.pem"),
            "ssl_key": str(tls / "client-key.pem"), "connect_timeout_s": 5.0, **extra}
    if keyspace:
        over["keyspace"] = keyspace
    return load_config(over, env={})


# -- authentication and roles ---------------------------------------------------------------------
def test_wrong_credentials_are_refused_clearly(sec1):
    _, tls = sec1
    with pytest.raises(ConnectionFailed, match="login refused .* for user 'sec_scorer'.*CSTORE_PASSWORD") as exc:
        connect(cfg(tls, "sec_scorer", "not-the-password-123"))
    assert "not-the-password-123" not in str(exc.value)
    with pytest.raises(ConnectionFailed, match="CSTORE_USERNAME"):
        connect(cfg(tls))  # no credentials at all on an auth-enabled cluster


def test_scorer_reads_parameters_but_cannot_write_them(sec1):
    _, tls = sec1
    with Store.from_config(cfg(tls, "sec_admin", PASSWORDS["admin"])) as admin:
        before = admin.read_model("fraud")
        history_before = len(admin.history("fraud", attempts=True))
    with Store.from_config(cfg(tls, "sec_scorer", PASSWORDS["scorer"])) as scorer:
        assert scorer.read_model("fraud").version == before.version
        with pytest.raises(PermissionDenied, match=r"write_history: the logged-in role may not do this.*"
                                                   r"sec_scorer has no MODIFY permission"):
            scorer.apply_update("fraud", "w", [1.0], indices=[3])
        s = scorer.backend.session
        s.execute("INSERT INTO prediction_log (model_id, entity_id, scored_at, score) VALUES (%s, 'e1', now(), 0.5)",
                  (before.op_ids[("w", 0)],))  # the prediction log: allowed
        for denied in ("SELECT * FROM history LIMIT 1", "SELECT * FROM feedback_segments LIMIT 1",
                       "TRUNCATE chunks", "DROP TABLE chunks", "CREATE ROLE evil WITH LOGIN = true"):
            with pytest.raises(Exception, match="Unauthorized|permission"):
                s.execute(denied)
    with Store.from_config(cfg(tls, "sec_admin", PASSWORDS["admin"])) as admin:
        after = admin.read_model("fraud")
        assert after.version == before.version and np.array_equal(after.params["w"], before.params["w"])
        assert len(admin.history("fraud", attempts=True)) == history_before


def test_worker_commits_parameters_but_cannot_write_feedback_or_schema(sec1):
    _, tls = sec1
    with Store.from_config(cfg(tls, "sec_worker", PASSWORDS["worker"])) as worker:
        v0 = worker.head_version("fraud")
        worker.apply_update("fraud", "w", [0.5], indices=[1], lr=0.1)
        assert worker.head_version("fraud") == v0 + 1
        s = worker.backend.session
        s.execute("SELECT * FROM feedback_segments LIMIT 1")  # reading feedback: allowed
        for denied in ("INSERT INTO feedback_segments (model_id, part, lane, bucket, seg_id) "
                       "VALUES (uuid(), 0, 0, 0, now())", "DROP TABLE history", "DELETE FROM models WHERE name='x'"):
            with pytest.raises(Exception, match="Unauthorized|permission"):
                s.execute(denied)
        with pytest.raises(Exception, match="Unauthorized|permission"):
            worker.create_model("not_allowed", {"w": (4,)})


def test_keyspace_admin_reruns_migrations_without_superuser(sec1):
    """`schema apply` as the keyspace's admin role: the keyspace exists, so no CREATE on ALL KEYSPACES is needed."""
    _, tls = sec1
    with connect(cfg(tls, "sec_admin", PASSWORDS["admin"], keyspace=None)) as conn:
        assert apply_schema(conn, KS, {"class": "SimpleStrategy", "replication_factor": 1},
                            log=lambda m: None) == []
        assert {m["state"] for m in schema_status(conn, KS)} == {"applied"}
        with pytest.raises(Exception, match="Unauthorized|permission"):  # its limits are unchanged
            conn.session.execute("CREATE KEYSPACE sec_other WITH replication = "
                                 "{'class': 'SimpleStrategy', 'replication_factor': 1}")


def test_credentials_are_never_printed_or_logged(sec1, caplog):
    cluster, tls = sec1
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")},
           "CSTORE_CONTACT_POINTS": "127.0.0.41", "CSTORE_KEYSPACE": KS, "CSTORE_SSL_CA": str(tls / "ca.pem"),
           "CSTORE_SSL_CERT": str(tls / "client.pem"), "CSTORE_SSL_KEY": str(tls / "client-key.pem")}
    cli = [str(Path(sys.executable).parent / "cstore"), "-vv"]  # the installed console script
    runs = [
        (["config"], {"CSTORE_USERNAME": "sec_scorer", "CSTORE_PASSWORD": PASSWORDS["scorer"]}, 0),
        (["model", "list"], {"CSTORE_USERNAME": "sec_scorer", "CSTORE_PASSWORD": PASSWORDS["scorer"]}, 0),
        (["model", "update", "fraud", "w", "--index", "2", "--value", "1"],
         {"CSTORE_USERNAME": "sec_scorer", "CSTORE_PASSWORD": PASSWORDS["scorer"]}, 1),
        (["model", "list"], {"CSTORE_USERNAME": "sec_scorer", "CSTORE_PASSWORD": PASSWORDS["worker"]}, 1),
        (["schema", "roles"], {"CSTORE_USERNAME": "cassandra", "CSTORE_PASSWORD": "cassandra",
                               **{f"CSTORE_{r.upper()}_PASSWORD": p for r, p in PASSWORDS.items()}}, 0),
        (["model", "audit", "*", "--json"], {"CSTORE_USERNAME": "cassandra", "CSTORE_PASSWORD": "cassandra"}, 0),
    ]
    outputs = []
    for args, extra, code in runs:
        p = subprocess.run(cli + args, env={**env, **extra}, capture_output=True, text=True, timeout=120)
        assert p.returncode == code, (args, p.stdout[-500:], p.stderr[-1500:])
        outputs.append(p.stdout + p.stderr)
    assert '"password": "***"' in outputs[0]
    assert "error: write_history: the logged-in role may not do this" in outputs[2]  # (-vv adds the traceback)
    quiet = subprocess.run(cli[:1] + runs[2][0], env={**env, **runs[2][1]}, capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and "PermissionDenied" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip()] and "may not do this" in quiet.stderr
    outputs.append(quiet.stdout + quiet.stderr)
    assert "login refused" in outputs[3]
    assert "grant(s) applied" in outputs[4]
    roles_entry = json.loads(outputs[5][:outputs[5].rindex("}") + 1])["entries"][0]  # the role change is audited
    assert roles_entry["action"] == "roles" and roles_entry["role"] == "cassandra"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionFailed) as exc:
        connect(cfg(tls, "sec_admin", "wrong-" + PASSWORDS["admin"]))
    with Store.from_config(cfg(tls, "sec_scorer", PASSWORDS["scorer"])) as scorer:
        with pytest.raises(PermissionDenied):
            scorer.apply_update("fraud", "w", [1.0], indices=[3])
        shown = repr(scorer.config) + str(scorer.config.redacted())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    node_log = cluster.node("node1").system_log.read_text(errors="replace")
    for pw in PASSWORDS.values():
        for text in outputs + [logged, str(exc.value), shown, node_log]:
            assert pw not in text
    assert "cassandra" not in str(exc.value).replace("Cassandra", "")


# -- TLS ------------------------------------------------------------------------------------------
def test_tls_connects_and_plain_connection_is_refused(sec1):
    _, tls = sec1
    conn = connect(cfg(tls, "sec_scorer", PASSWORDS["scorer"]))
    try:
        assert conn.session.execute("SELECT release_version FROM system.local").one()["release_version"] >= "5.0"
    finally:
        conn.close()
    plain = load_config({"contact_points": "127.0.0.41", "keyspace": KS, "username": "sec_scorer",
                         "password": PASSWORDS["scorer"], "connect_timeout_s": 5.0}, env={})
    with pytest.raises(ConnectionFailed, match="TLS.*CSTORE_SSL_CA") as exc:
        connect(plain)
    assert PASSWORDS["scorer"] not in str(exc.value)
    # TLS but no client certificate: the node requires one
    no_cert = dataclasses.replace(cfg(tls, "sec_scorer", PASSWORDS["scorer"]), ssl_cert=None, ssl_key=None)
    with pytest.raises(ConnectionFailed):
        connect(no_cert)
    # a CA that did not sign the node's certificate: refused by the client
    other = generate(tls.parent / "other-ca", ["127.0.0.41"])
    with pytest.raises(ConnectionFailed, match="certificate|TLS"):
        connect(dataclasses.replace(cfg(tls, "sec_scorer", PASSWORDS["scorer"]), ssl_ca=str(other / "ca.pem")))


# -- encryption at rest (shared test node) -------------------------------------------------------------
KEY1 = "k1:" + base64.b64encode(b"1" * 32).decode()
KEY2 = "k2:" + base64.b64encode(b"2" * 32).decode()


def encrypted_store(base_config, keys: str) -> Store:
    return Store(connect(base_config, keyspace=base_config.keyspace), codec=pipeline_from_env(
        {"CSTORE_ENCRYPTION_KEY": keys}))


def test_encrypted_chunks_roundtrip_rotate_and_refuse_tampering(base_config, session, unique_name):
    store = encrypted_store(base_config, KEY1)
    try:
        store.create_model(unique_name, {"w": (40,), "b": (40,)}, chunk_size=16)
        store.apply_update(unique_name, "w", [1.0, 2.0], indices=[1, 20], lr=0.5)
        info = store.model_info(unique_name)
        raw = {(r["chunk"], r["param"]): bytes(r["data"]) for k in range(info.max_chunks)
               for r in session.execute("SELECT chunk, param, data FROM chunks WHERE model_id=%s AND chunk=%s",
                                        (info.model_id, k))}
        assert all(b.startswith(b"CSE1\x02k1") for b in raw.values())
        assert np.float32(-0.5).tobytes() not in raw[(0, "w")]  # the values are not in clear
        v = store.snapshot(unique_name, reason="before rotation")
    finally:
        store.close()
    # rotation: k2 is newest (writes), k1 still decrypts older chunks
    store = encrypted_store(base_config, f"{KEY1},{KEY2}")
    try:
        store.apply_update(unique_name, "w", [1.0], indices=[2], lr=1.0)
        w = store.read_model(unique_name).params["w"]
        assert (w[1], w[2], w[20]) == (-0.5, -1.0, -1.0)
        blob0 = bytes(session.execute("SELECT data FROM chunks WHERE model_id=%s AND chunk=0 AND param='w'",
                                      (info.model_id,)).one()["data"])
        assert blob0.startswith(b"CSE1\x02k2")
        assert store.rollback(unique_name, v, reason="rotation test") > v
        assert store.read_model(unique_name).params["w"][2] == 0.0
    finally:
        store.close()
    # without k1 the chunks written with it are refused, naming the key id
    store = encrypted_store(base_config, KEY2)
    try:
        session.execute("UPDATE chunks SET data=%s WHERE model_id=%s AND chunk=1 AND param='w'",
                        (raw[(1, "w")], info.model_id))
        with pytest.raises(CorruptData, match="key id 'k1', which is not loaded"):
            store.read_model(unique_name)
    finally:
        store.close()
    # without any key: a clear message, not a msgpack error
    with Store(connect(base_config, keyspace=base_config.keyspace), codec=CodecPipeline()) as plain:
        with pytest.raises(CorruptData, match="encrypted but no encryption key is configured"):
            plain.read_model(unique_name)


def test_history_deltas_are_encrypted_bound_to_their_commit_and_still_replay(base_config, session, unique_name):
    store = encrypted_store(base_config, KEY1)
    try:
        store.create_model(unique_name, {"w": (32,)}, chunk_size=16)
        base = store.snapshot(unique_name, reason="replay base")
        store.apply_update(unique_name, "w", [1.0], indices=[3], lr=0.5)
        store.apply_update(unique_name, "w", [1.0], indices=[4], lr=0.25)
        info = store.model_info(unique_name)
        stored = list(session.execute("SELECT bucket, op_id, param, chunk, delta FROM history WHERE model_id=%s "
                                      "ALLOW FILTERING", (info.model_id,)))
        assert len(stored) == 2 and all(bytes(r["delta"]).startswith(b"CSE1\x02k1") for r in stored)
        assert not any(np.float32(-0.5).tobytes() in bytes(r["delta"]) for r in stored)  # not in clear
        assert [h.to_dict()["coords"] for h in store.history(unique_name)] == [1, 1]  # readable with the key
        assert store.replay(unique_name, base)["w"][[3, 4]].tolist() == [-0.5, -0.25]  # replays bit-exactly
        # A delta copied onto another commit's row is refused: each is bound to its own op id.
        first, second = sorted(stored, key=lambda r: r["op_id"].time)
        session.execute("UPDATE history SET delta=%s WHERE model_id=%s AND bucket=%s AND op_id=%s AND param=%s",
                        (first["delta"], info.model_id, second["bucket"], second["op_id"], second["param"]))
        with pytest.raises(CorruptData):
            store.history(unique_name)
    finally:
        store.close()


def test_tampered_or_swapped_chunk_is_refused_and_nothing_written(base_config, session, unique_name):
    store = encrypted_store(base_config, KEY1)
    try:
        store.create_model(unique_name, {"w": (32,), "b": (32,)}, chunk_size=16)
        info = store.model_info(unique_name)
        q = "SELECT data, version FROM chunks WHERE model_id=%s AND chunk=%s AND param=%s"
        put = "UPDATE chunks SET data=%s WHERE model_id=%s AND chunk=%s AND param=%s"
        good = {(k, p): bytes(session.execute(q, (info.model_id, k, p)).one()["data"]) for k in (0, 1) for p in "wb"}
        cases = {
            "bit flip": good[(0, "w")][:-20] + bytes([good[(0, "w")][-20] ^ 1]) + good[(0, "w")][-19:],
            "chunk swap": good[(1, "w")],      # another chunk's valid ciphertext
            "param swap": good[(0, "b")],      # another parameter's valid ciphertext
            "truncated": good[(0, "w")][:20],
            "plaintext": CodecPipeline().encode(np.ones(16, dtype="float32")),
        }
        for name, blob in cases.items():
            session.execute(put, (blob, info.model_id, 0, "w"))
            with pytest.raises(CorruptData, match="authentication|truncated|not encrypted") as exc:
                store.apply_update(unique_name, "w", [1.0], indices=[0])
            assert "chunk 0" in str(exc.value), name
            assert bytes(session.execute(q, (info.model_id, 0, "w")).one()["data"]) == blob, name
            assert session.execute(q, (info.model_id, 0, "w")).one()["version"] == 1, name
        # a model from another incarnation (same name re-created) cannot take over old ciphertext
        other = uuid.uuid4()
        stage = AesGcmStage(Keyring.parse(KEY1))
        with pytest.raises(CorruptData):
            from cstore.core import chunk_context
            stage.decode(good[(0, "w")], chunk_context(other, 0, "w"))
    finally:
        store.close()


def test_bad_keys_are_config_errors(tmp_path):
    for keys, fragment in [("not base64!", "not base64"), ("k:" + "QUJD", "decodes to 3 bytes"),
                           ("bad id!:" + KEY1.split(":")[1], "invalid key id"), (" , ", "holds no key")]:
        with pytest.raises(ConfigError, match=fragment):
            pipeline_from_env({"CSTORE_ENCRYPTION_KEY": keys})
    with pytest.raises(ConfigError, match="not both"):
        pipeline_from_env({"CSTORE_ENCRYPTION_KEY": KEY1, "CSTORE_ENCRYPTION_KEY_FILE": "/x"})
    with pytest.raises(ConfigError, match="cannot read it"):
        pipeline_from_env({"CSTORE_ENCRYPTION_KEY_FILE": str(tmp_path / "missing")})
    f = tmp_path / "keys"
    f.write_text(f"# old\n{KEY1}\n# newest last\n{KEY2}\n")
    f.chmod(0o600)
    ring = pipeline_from_env({"CSTORE_ENCRYPTION_KEY_FILE": str(f)}).stages[0].keyring
    assert ring.write_id == "k2" and set(ring.keys) == {"k1", "k2"}
    assert "MTEx" not in repr(ring) and "1111" not in repr(ring)
