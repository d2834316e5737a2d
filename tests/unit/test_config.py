"""Configuration precedence and validation (no database needed)."""
from __future__ import annotations

import pytest

from cstore.config import load_config
from cstore.config import resolve_profile
from cstore.errors import ConfigError


def test_precedence_flags_over_env_over_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('keyspace = "from_file"\nport = 9000\ncontact_points = ["10.0.0.1", "10.0.0.2"]\n'
                 'profile = "eventual"\n')
    cfg = load_config({"keyspace": "from_flag"}, env={"CSTORE_PORT": "9100"}, config_file=str(f))
    assert cfg.keyspace == "from_flag" and cfg.source["keyspace"] == "arguments"
    assert cfg.port == 9100 and cfg.source["port"] == "CSTORE_PORT"
    assert cfg.contact_points == ("10.0.0.1", "10.0.0.2") and cfg.source["contact_points"] == str(f)
    assert cfg.profile == "eventual"
    assert not cfg.uses_local_cluster


def test_defaults_use_local_cluster():
    cfg = load_config({}, env={})
    assert cfg.contact_points == ("127.0.0.1",) and cfg.port == 9042 and cfg.uses_local_cluster


@pytest.mark.parametrize("overrides,env,match", [
    ({"port": "abc"}, {}, "invalid port"),
    ({"port": 70000}, {}, "invalid port"),
    ({"keyspace": "Bad-Name"}, {}, "invalid keyspace"),
    ({"kespace": "x"}, {}, "unknown configuration option 'kespace'"),
    ({}, {"CSTORE_KEYSPCE": "x"}, "unknown environment variable"),
    ({}, {"CSTORE_CONTACT_POINTS": " , "}, "invalid contact_points"),
    ({"ssl_cert": "/x.pem"}, {}, "needs both ssl_cert and ssl_key"),
    ({"replication_dcs": "dc1"}, {}, "expected NAME:RF"),
])
def test_bad_configuration_is_rejected(overrides, env, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides, env=env)


def test_unknown_file_key_and_missing_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('contact_pionts = "x"\n')
    with pytest.raises(ConfigError, match="unknown key 'contact_pionts'"):
        load_config({}, env={}, config_file=str(f))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, env={}, config_file=str(tmp_path / "missing.toml"))


def test_password_never_in_repr_or_redacted():
    cfg = load_config({"username": "u", "password": "s3cr3t"}, env={})
    assert "s3cr3t" not in repr(cfg)
    assert "s3cr3t" not in str(cfg.redacted())


def test_profiles_builtin_custom_and_invalid():
    assert resolve_profile("strong").lwt is True
    assert resolve_profile("eventual").levels["commit_chunk"] == "ONE"
    custom = {"fast": {"base": "strong", "read_model": "one"}}
    p = resolve_profile("fast", custom)
    assert p.levels["read_model"] == "ONE" and p.levels["commit_chunk"] == "QUORUM" and p.lwt
    with pytest.raises(ConfigError, match="unknown consistency profile 'strnog'"):
        resolve_profile("strnog")
    with pytest.raises(ConfigError, match="is not a consistency level"):
        resolve_profile("x", {"x": {"commit_chunk": "QUORUMM"}})
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_profile("x", {"x": {"comit_chunk": "ONE"}})
    with pytest.raises(ConfigError, match="SERIAL or LOCAL_SERIAL"):
        resolve_profile("x", {"x": {"serial": "QUORUM"}})


def test_kubernetes_service_links_are_ignored_with_one_warning(caplog):
    """A Service named ``cstore-metrics`` or ``cstore`` injects these into every pod of its namespace."""
    env = {"CSTORE_METRICS_SERVICE_HOST": "10.0.0.1", "CSTORE_METRICS_SERVICE_PORT": "9090",
           "CSTORE_METRICS_SERVICE_PORT_HTTP": "9090", "CSTORE_METRICS_PORT": "tcp://10.0.0.1:9090",
           "CSTORE_METRICS_PORT_9090_TCP": "tcp://10.0.0.1:9090", "CSTORE_METRICS_PORT_9090_TCP_PROTO": "tcp",
           "CSTORE_METRICS_PORT_9090_TCP_PORT": "9090", "CSTORE_METRICS_PORT_9090_TCP_ADDR": "10.0.0.1",
           "CSTORE_SERVICE_HOST": "10.0.0.2", "CSTORE_PORT": "tcp://10.0.0.2:9042", "CSTORE_KEYSPACE": "fraud"}
    with caplog.at_level("WARNING", logger="cstore.config"):
        cfg = load_config(env=env)
        load_config(env=env)
    assert (cfg.port, cfg.keyspace) == (9042, "fraud")  # the link's CSTORE_PORT is not a port; real settings apply
    warnings = [r.getMessage() for r in caplog.records if r.name == "cstore.config"]
    assert len(warnings) == 1 and "Kubernetes service links" in warnings[0] and "CSTORE_PORT" in warnings[0]
    assert load_config(env={"CSTORE_PORT": "9043"}).port == 9043  # a real port is still a port


@pytest.mark.parametrize("name,value", [("CSTORE_KEYSAPCE", "x"), ("CSTORE_PORTS", "9042"),
                                        ("CSTORE_SERVICE_HOSTS", "10.0.0.1")])
def test_a_misspelt_setting_still_fails_beside_service_links(name, value):
    with pytest.raises(ConfigError, match=f"unknown environment variable.*{name}"):
        load_config(env={"CSTORE_METRICS_SERVICE_HOST": "10.0.0.1", name: value})


def test_cstore_config_starts_beside_service_links_and_refuses_a_typo():
    import os
    import subprocess
    import sys
    base = {k: v for k, v in os.environ.items() if not k.startswith("CSTORE_")}
    cmd = [sys.executable, "-c", "from cstore.cli import main; main()", "config"]
    ok = subprocess.run(cmd, env={**base, "CSTORE_METRICS_SERVICE_HOST": "10.0.0.1",
                                  "CSTORE_PORT": "tcp://10.0.0.1:9042"}, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "Kubernetes service links" in ok.stderr and '"port": 9042' in ok.stdout
    bad = subprocess.run(cmd, env={**base, "CSTORE_KEYSAPCE": "x"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown environment variable(s) CSTORE_KEYSAPCE" in bad.stderr
