"""Bad input corpus, part 2: the CLI, configuration, and damaged data already in the database.

(The Python API's update/model cases live in test_store_bad_input.py; feedback cases with the
feedback tests.) Each case must fail with a specific message that says what to fix, and write
nothing: the model's rows, version index, history, snapshots and the models table are read back.
"""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from cstore.cli import main
from cstore.core import encode_array
from cstore.config import load_config
from cstore.errors import ConfigError, CorruptData, MissingChunk
from cstore.backend import connect
from cstore.store import Store
from workloads import fingerprint


@pytest.fixture(scope="module")
def model(store):
    name = "corpus_cli"
    if name in {m.name for m in store.list_models()}:
        store.drop_model(name, confirm=name)
    store.create_model(name, {"w": (100,)}, chunk_size=32)
    store.apply_update(name, "w", [1.0], indices=[1])
    yield name
    store.drop_model(name, confirm=name)


# -- the CLI (in-process, against the test keyspace) ----------------------------------------------
M = "corpus_cli"
CLI_CASES = [
    (["model", "update", "no_such_model", "w", "--index", "0", "--value", "1"], "unknown model 'no_such_model'"),
    (["model", "update", M, "w", "--index", "0", "--value", "nan"], "NaN or infinity"),
    (["model", "update", M, "w", "--index", "0", "--value", "inf"], "NaN or infinity"),
    (["model", "update", M, "w", "--index", "0", "--value", "1", "--lr", "-1"], "finite and > 0"),
    (["model", "update", M, "w", "--index", "0", "--value", "1", "--lr", "nan"], "finite and > 0"),
    (["model", "update", M, "w", "--index", "500", "--value", "1"], "out of range [0, 100)"),
    (["model", "update", M, "nope", "--index", "0", "--value", "1"], "has no parameter 'nope'"),
    (["model", "update", M, "w", "--index", "0", "--value", "1", "--value", "2"], "values must have shape (1,)"),
    (["model", "update", M, "w", "--value", "1"], "dense update of 'w' must have shape (100,)"),
    (["model", "update", M, "w", "--index", "0", "--value", "1", "--type", "magic"], "Invalid value for '--type'"),
    (["model", "update", M, "w", "--index", "0", "--value", "abc"], "'abc' is not a valid float"),
    (["model", "create", "corpus_new", "--param", "w"], "expected NAME=SHAPE"),
    (["model", "create", "corpus_new", "--param", "w=ten"], "must be integers joined by 'x'"),
    (["model", "create", "corpus_new", "--param", "w=4", "--metadata", "{bad"], "not valid JSON"),
    (["model", "create", "corpus_new", "--param", "w=4", "--chunk-size", "3"], "chunk_size must be"),
    (["model", "create", "corpus_new", "--param", "w=0"], "positive dimensions"),
    (["model", "create", M, "--param", "w=4"], "already exists"),
    (["model", "drop", M], "confirm"),
    (["model", "rollback", M, "999", "--reason", "x"], "no snapshot at version 999"),
    (["model", "snapshot", M, "--reason", " "], "needs a reason"),
    (["history", M, "--since", "yesterday"], "use ISO time"),
    (["--profile", "bogus", "model", "list"], "unknown consistency profile 'bogus'"),
    (["--port", "70000", "model", "list"], "invalid port"),
    (["--keyspace", "Bad-Name", "model", "list"], "invalid keyspace"),
    (["--config", "/nonexistent/cstore.toml", "model", "list"], "does not exist; fix --config"),
]


@pytest.mark.parametrize("args,fragment", CLI_CASES, ids=[f"cli{i}-{c[1][:18]}" for i, c in enumerate(CLI_CASES)])
def test_cli_bad_input(session, store, model, base_config, args, fragment):
    before = fingerprint(session, store, model)
    base = ["--contact-points", ",".join(base_config.contact_points), "--keyspace", base_config.keyspace]
    flags = base if args[0] != "--keyspace" else base[:2]
    result = CliRunner().invoke(main, flags + args, env={"CSTORE_CONFIG": None})
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code in (1, 2), text
    assert fragment in text, text
    assert "Traceback" not in text
    assert fingerprint(session, store, model) == before
    assert "corpus_new" not in {m.name for m in store.list_models()}


# -- configuration ---------------------------------------------------------------------------------
def _toml(tmp_path, text):
    p = tmp_path / "cstore.toml"
    p.write_text(text)
    return str(p)


CONFIG_CASES = [
    ("toml unknown key", lambda t: load_config(config_file=_toml(t, 'contact_point = "x"\n'), env={}),
     "unknown key 'contact_point'"),
    ("toml syntax", lambda t: load_config(config_file=_toml(t, 'port = \n'), env={}), "not valid TOML"),
    ("env typo", lambda t: load_config(env={"CSTORE_PROFIL": "strong"}),
     "unknown environment variable(s) CSTORE_PROFIL"),
    ("env port", lambda t: load_config(env={"CSTORE_PORT": "abc"}), "invalid port from $CSTORE_PORT"),
    ("cert without key", lambda t: load_config({"ssl_cert": "/c.pem"}, env={}), "needs both ssl_cert and ssl_key"),
    ("profile op typo", lambda t: _profile(t, 'commit_chunks = "ONE"'), "unknown key(s) commit_chunks"),
    ("profile level typo", lambda t: _profile(t, 'read_model = "QUORAM"'), "'QUORAM' is not a consistency level"),
    ("profile serial", lambda t: _profile(t, 'serial = "QUORUM"'), "use SERIAL or LOCAL_SERIAL"),
    ("profile lwt", lambda t: _profile(t, 'lwt = "yes"'), "lwt must be true or false"),
    ("profile base", lambda t: _profile(t, 'base = "weak"'), "base 'weak' is not one of"),
    ("replication dcs", lambda t: load_config(env={"CSTORE_REPLICATION_DCS": "dc1"}), "expected NAME:RF"),
    ("negative timeout", lambda t: load_config(env={"CSTORE_REQUEST_TIMEOUT_S": "-1"}), "must be positive"),
    ("empty contact points", lambda t: load_config({"contact_points": " , "}, env={}), "empty list"),
    ("keyspace", lambda t: load_config({"keyspace": "drop table"}, env={}), "lower-case letters"),
    ("unknown option", lambda t: load_config({"profiel": "strong"}, env={}), "unknown configuration option"),
    ("profile at connect", lambda t: connect(load_config({"profile": "bogus"}, env={})),
     "unknown consistency profile 'bogus'"),
    ("missing CA file", lambda t: connect(load_config({"ssl_ca": str(t / "none.pem")}, env={})),
     "cannot load the TLS files"),
]


def _profile(tmp_path, line):
    path = _toml(tmp_path, f'profile = "custom"\n[profiles.custom]\n{line}\n')
    cfg = load_config(config_file=path, env={})
    from cstore.config import resolve_profile
    return resolve_profile(cfg.profile, cfg.profiles)


@pytest.mark.parametrize("name,build,fragment", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_bad_input(tmp_path, name, build, fragment):
    with pytest.raises(ConfigError) as exc:
        build(tmp_path)
    assert fragment in str(exc.value)


def test_bad_encryption_key_fails_before_connecting(monkeypatch, base_config, session, store, model):
    before = fingerprint(session, store, model)
    monkeypatch.setenv("CSTORE_ENCRYPTION_KEY", "k:QUJD")
    with pytest.raises(ConfigError, match="decodes to 3 bytes"):
        Store.from_config(base_config)
    assert fingerprint(session, store, model) == before


# -- damaged data already in the database -------------------------------------------------------
def _blob(**fields):
    base = {"v": 1, "dtype": "float32", "shape": [32], "data": np.zeros(32, "<f4").tobytes()}
    return msgpack.packb({**base, **fields}, use_bin_type=True)


GOOD = _blob()
DATA_CASES = [
    ("truncated msgpack", GOOD[: len(GOOD) // 2], "not valid msgpack"),
    ("random bytes", bytes(range(7, 60)), "not valid msgpack"),
    ("empty blob", b"", "not valid msgpack"),
    ("not a map", msgpack.packb([1, 2, 3]), "unknown layout"),
    ("future format", _blob(v=2), "unknown layout"),
    ("wrong dtype", encode_array(np.zeros(32, "float64")), "dtype float64 but the model stores float32"),
    ("unsupported dtype", _blob(dtype="float16", data=np.zeros(32, "<f2").tobytes()), "dtype 'float16'"),
    ("short payload", _blob(data=b"\0" * 10), "the chunk is truncated or corrupt"),
    ("wrong shape", encode_array(np.zeros(16, "float32")), "shape [16] but [32] was expected"),
    ("absurd shape", _blob(shape=[1 << 40], data=b""), "needs"),
    ("negative shape", _blob(shape=[-32]), "invalid shape"),
    ("NaN in chunk", encode_array(np.zeros(32, "float32")).replace(b"\0\0\0\0", np.float32("nan").tobytes(), 1),
     "NaN or infinity"),
    ("inf in chunk", _blob(data=np.r_[np.zeros(31), np.inf].astype("<f4").tobytes()), "NaN or infinity"),
    ("encrypted, no key", b"CSE1\x02k1" + b"\0" * 40, "encrypted but no encryption key"),
]


@pytest.mark.parametrize("name,blob,fragment", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_damaged_chunk_is_refused_and_nothing_written(session, store, unique_name, name, blob, fragment):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    info = store.model_info(unique_name)
    session.execute("UPDATE chunks SET data = %s WHERE model_id = %s AND chunk = 1 AND param = 'w'",
                    (blob, info.model_id))
    before = fingerprint(session, store, unique_name)
    with pytest.raises(CorruptData) as exc:
        store.read_model(unique_name)
    assert fragment in str(exc.value) and "chunk 1" in str(exc.value)
    with pytest.raises(CorruptData):
        store.apply_update(unique_name, "w", [1.0], indices=[40])
    store.apply_update(unique_name, "w", [1.0], indices=[3])  # the healthy chunk still works
    after = fingerprint(session, store, unique_name)
    assert [c for c in after[0] if c[0] == 1] == [c for c in before[0] if c[0] == 1]
    assert after[2] == before[2] + 1  # exactly the one healthy commit's history row
    store.drop_model(unique_name, confirm=unique_name)


def test_missing_chunk_row_is_named(session, store, unique_name):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    info = store.model_info(unique_name)
    session.execute("DELETE FROM chunks WHERE model_id = %s AND chunk = 1", (info.model_id,))
    before = fingerprint(session, store, unique_name)
    # One condition, one type, on the read path and on the commit path alike, naming the chunk.
    for call in (lambda: store.read_model(unique_name),
                 lambda: store.apply_update(unique_name, "w", [1.0], indices=[40])):
        with pytest.raises(MissingChunk, match="parameter 'w' chunk 1 is missing.*restore it from a snapshot") as exc:
            call()
        assert isinstance(exc.value, CorruptData) and (exc.value.model, exc.value.param, exc.value.chunk) == \
            (unique_name, "w", 1)
    assert fingerprint(session, store, unique_name) == before
    store.drop_model(unique_name, confirm=unique_name)


@pytest.mark.parametrize("column,value", [("params", "{not json"), ("params", '{"w": "ten"}'), ("dtype", "float16"),
                                          ("chunk_size", 0)])
def test_damaged_models_row_is_refused(session, store, unique_name, column, value, caplog):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    store.create_model(f"{unique_name}_ok", {"w": (8,)}, chunk_size=32)
    info = store.model_info(unique_name)
    good = session.execute("SELECT * FROM models WHERE name = %s", (unique_name,)).one()
    session.execute(f"UPDATE models SET {column} = %s WHERE name = %s", (value, unique_name))
    try:  # a damaged row left behind would break `model list` for every other test: always repair it
        with pytest.raises(CorruptData, match="models row of .* is damaged"):
            store.model_info(unique_name, refresh=True)  # what a fresh process does first
        with pytest.raises(CorruptData, match="models row of .* is damaged"):
            store.describe(unique_name)
        with caplog.at_level("WARNING", logger="cstore.store"):  # the other models are still listed
            listed = {m.name for m in store.list_models()}
        assert unique_name not in listed and f"{unique_name}_ok" in listed
        assert f"models row of {unique_name!r} is damaged" in caplog.text
        rows = list(session.execute("SELECT version FROM chunks WHERE model_id = %s AND chunk = 0",
                                    (info.model_id,)))
        assert [r["version"] for r in rows] == [1]
    finally:
        session.execute(f"UPDATE models SET {column} = %s WHERE name = %s", (good[column], unique_name))
    store.model_info(unique_name, refresh=True)
    store.drop_model(unique_name, confirm=unique_name)
    store.drop_model(f"{unique_name}_ok", confirm=f"{unique_name}_ok")


def test_damaged_history_and_snapshot_are_refused(session, store, unique_name):
    store.create_model(unique_name, {"w": (64,)}, chunk_size=32)
    v = store.snapshot(unique_name, reason="corpus")
    store.apply_update(unique_name, "w", [1.0], indices=[3])
    info = store.model_info(unique_name)
    h = store.history(unique_name, attempts=True)[-1]
    bucket = int((h.op_id.time - 0x01B21DD213814000) // 10_000_000) // store.config.history_bucket_s
    session.execute("UPDATE history SET delta = %s WHERE model_id = %s AND bucket = %s AND op_id = %s AND param = 'w'",
                    (b"\x93garbage", info.model_id, bucket, h.op_id))
    with pytest.raises(CorruptData, match="history delta cannot be decoded"):
        store.replay(unique_name, v)
    session.execute("UPDATE snapshot_chunks SET data = %s WHERE model_id = %s AND version = %s AND chunk = 0 "
                    "AND param = 'w'", (GOOD[:9], info.model_id, v))
    before = fingerprint(session, store, unique_name)
    with pytest.raises(CorruptData, match="not valid msgpack"):
        store.rollback(unique_name, v, reason="from a damaged snapshot")
    assert fingerprint(session, store, unique_name) == before
    store.drop_model(unique_name, confirm=unique_name)


def test_corpus_is_big_enough():
    """CLI + config + key + damaged chunks + missing row + damaged models rows + history/snapshot."""
    n = len(CLI_CASES) + len(CONFIG_CASES) + 1 + len(DATA_CASES) + 1 + 4 + 2
    assert n >= 40, n
