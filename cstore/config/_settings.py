"""Connection and runtime configuration.

Precedence, highest first: explicit arguments (CLI flags) > ``CSTORE_*`` environment
variables > a TOML config file > defaults. The file is ``--config PATH``, else
``$CSTORE_CONFIG``, else ``./cstore.toml`` when it exists.

>>> cfg = load_config({"keyspace": "demo"}, env={"CSTORE_PORT": "9043"})
>>> (cfg.keyspace, cfg.port, cfg.contact_points)
('demo', 9043, ('127.0.0.1',))
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cstore.errors import ConfigError

__all__ = ["Config", "is_service_link", "load_config"]

_KEYSPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
REACTORS = ("libev", "asyncio", "gevent")


@dataclass(frozen=True)
class Config:
    """Everything needed to reach a cluster and behave inside it."""

    contact_points: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "cstore"
    local_dc: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    # Hostname verification is on: a node must present a certificate naming the address it was reached
    # at, or any certificate the CA ever signed (a decommissioned node's, a test rig's) would be accepted
    # for any node. Turning it off is an explicit, loudly named choice.
    ssl_insecure_skip_hostname_check: bool = False
    profile: str = "strong"
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    replication_factor: int = 1
    replication_dcs: Mapping[str, int] = field(default_factory=dict)
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 12.0
    # The driver's event loop: libev (fastest; in the driver's wheel), asyncio, or gevent (for
    # gevent-based programs such as Locust, whose greenlets a C loop on a thread would block).
    reactor: str = "libev"
    # Scoring client (cstore/client.py): how often a cached model polls its head version, how often it
    # re-reads chunk versions from the chunks themselves, and the prediction log's lifetime and buffer.
    refresh_interval_s: float = 0.02  # a head-counter read: cheap enough to poll at 50 Hz
    full_check_s: float = 30.0
    # 120 days: the filing window of most card chargeback reasons (Visa, Mastercard), so that a chargeback
    # arriving late still finds the features its transaction was scored with (raise it for longer ones).
    prediction_log_ttl_s: int = 120 * 24 * 3600
    prediction_log_queue: int = 10_000
    # One minute per history partition: bounded at any commit rate (a worker writes MB/s of history);
    # readers list a model's buckets in history_buckets (migration 006) instead of scanning them all.
    history_bucket_s: int = 60
    history_ttl_s: int = 7 * 24 * 3600
    stats_bucket_s: int = 300
    max_retries: int = 12
    # How long Store.apply_update(s) keeps retrying conflicts and transient errors before it raises.
    commit_timeout_s: float = 30.0
    max_payload_bytes: int = 8 * 1024 * 1024
    # Feedback layout for models whose feedback layout is created implicitly (see cstore/feedback/_layout.py).
    feedback_partitions: int = 16
    feedback_bucket_s: int = 60
    feedback_ttl_s: int = 7 * 24 * 3600
    feedback_lateness_s: int = 30
    local_dir: str = ".local"
    source: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def uses_local_cluster(self) -> bool:
        """True unless the user pointed us at a cluster of their own."""
        return self.source.get("contact_points", "default") == "default"

    def redacted(self) -> dict[str, Any]:
        """A printable view: the password is never shown."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        if d.get("password"):
            d["password"] = "***"
        d["contact_points"] = list(d["contact_points"])
        d["profiles"] = {k: dict(v) for k, v in d["profiles"].items()}
        d["replication_dcs"] = dict(d["replication_dcs"])
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
_ENV_NAMES = {name: "CSTORE_" + name.upper() for name in _FIELDS if name != "profiles"}


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a raw value (string from env/flags or TOML value) into the field's type."""
    try:
        if name == "contact_points":
            items = value.split(",") if isinstance(value, str) else list(value)
            points = tuple(p.strip() for p in items if str(p).strip())
            if not points:
                raise ValueError("empty list")
            return points
        if name in ("port", "replication_factor", "history_bucket_s", "history_ttl_s",
                    "stats_bucket_s", "max_retries", "max_payload_bytes", "feedback_partitions",
                    "feedback_bucket_s", "feedback_ttl_s", "feedback_lateness_s"):
            out = int(value)
            if out <= 0 or (name == "port" and out > 65535):
                raise ValueError(f"{out} is out of range")
            return out
        if name in ("prediction_log_ttl_s", "prediction_log_queue"):
            out = int(value)
            if out <= 0:
                raise ValueError(f"{out} must be positive")
            return out
        if name in ("refresh_interval_s", "full_check_s") and not 0.01 <= float(value) <= 3600:
            raise ValueError(f"{value} must be between 0.01 and 3600 seconds")
        if name in ("connect_timeout_s", "request_timeout_s", "refresh_interval_s", "full_check_s",
                    "commit_timeout_s"):
            seconds = float(value)
            if not seconds > 0:
                raise ValueError(f"{seconds} must be positive")
            return seconds
        if name == "replication_dcs":
            if isinstance(value, str):
                value = dict(_parse_dc(v) for v in value.split(",") if v.strip())
            return {str(k): int(v) for k, v in dict(value).items()}
        if name == "profiles":
            return {str(k): dict(v) for k, v in dict(value).items()}
        if name == "ssl_insecure_skip_hostname_check":
            return _boolean(value)
        if name == "reactor":
            if str(value) not in REACTORS:
                raise ValueError(f"use one of {', '.join(REACTORS)}")
            return str(value)
        if name == "keyspace":
            if not _KEYSPACE_RE.match(str(value)):
                raise ValueError("use lower-case letters, digits and _ (start with a letter, at most 48)")
            return str(value)
        return None if value in (None, "") else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {name} from {origin}: {value!r} ({exc})") from None


def _boolean(value: Any) -> bool:
    """A TOML boolean, or the strings true/false/1/0/yes/no from the environment or a flag."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("use true or false")


def _parse_dc(text: str) -> tuple[str, int]:
    """``dc1:3`` → ("dc1", 3)."""
    name, sep, rf = text.strip().partition(":")
    if not sep or not name or not rf.strip().isdigit() or int(rf) < 1:
        raise ValueError(f"expected NAME:RF such as dc1:3, got {text!r}")
    return name, int(rf)


def _config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    path = explicit or env.get("CSTORE_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; fix --config or CSTORE_CONFIG")
        return p
    default = Path("cstore.toml")
    return default if default.is_file() else None


def load_config(overrides: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None,
                config_file: str | None = None) -> Config:
    """Build a :class:`Config` from arguments, environment and file (in that order of precedence).

    Unknown keys anywhere are an error, so that a typo never silently falls back to a default.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    path = _config_file(config_file, env)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        data = data.get("cstore", data)
        for key, raw in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"unknown key {key!r} in {path}; known keys: {', '.join(sorted(_FIELDS))}")
            values[key] = _coerce(key, raw, str(path))
            source[key] = str(path)
    links = sorted(k for k, v in env.items() if k.startswith("CSTORE_") and is_service_link(k, v))
    if links:
        _warn_once(f"ignoring {', '.join(links)}: Kubernetes service links (a Service whose name starts with "
                   f"'cstore'), not cstore settings; set enableServiceLinks: false on the pod to drop them")
    for name, var in _ENV_NAMES.items():
        if env.get(var, "") != "" and var not in links:
            values[name] = _coerce(name, env[var], f"${var}")
            source[name] = var
    typos = [k for k in env if k.startswith("CSTORE_") and k not in _ENV_NAMES.values()
             and k not in _KNOWN_OTHER_ENV and k not in links]
    if typos:
        raise ConfigError(f"unknown environment variable(s) {', '.join(sorted(typos))}; "
                          f"known: {', '.join(sorted(_ENV_NAMES.values()))}")
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"unknown configuration option {key!r}; known: {', '.join(sorted(_FIELDS))}")
        values[key] = _coerce(key, raw, "arguments")
        source[key] = "arguments"
    for name in _FIELDS:
        source.setdefault(name, "default")
    if bool(values.get("ssl_cert")) != bool(values.get("ssl_key")):
        raise ConfigError("TLS client authentication needs both ssl_cert and ssl_key (or neither)")
    return Config(**values, source=source)


# Kubernetes injects, for every Service in the namespace, ``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT[_<port>]``,
# ``<NAME>_PORT=tcp://ip:port`` and ``<NAME>_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]``: a Service named
# ``cstore-metrics`` gives every pod CSTORE_METRICS_SERVICE_HOST, one named ``cstore`` gives CSTORE_PORT=tcp://...
_LINK_NAME = re.compile(r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
                        r"|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$")
_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://[^\s/]+:\d+$")
_warned: set[str] = set()


def is_service_link(name: str, value: str) -> bool:
    """Whether an environment variable is one Kubernetes injects for a Service (by its name, or for a
    ``*_PORT`` variable by its ``tcp://ip:port`` value), rather than a setting.

    >>> is_service_link("CSTORE_METRICS_SERVICE_HOST", "10.0.0.1")
    True
    >>> is_service_link("CSTORE_PORT", "tcp://10.0.0.1:9042")
    True
    >>> is_service_link("CSTORE_PORT", "9042"), is_service_link("CSTORE_KEYSAPCE", "x")
    (False, False)
    """
    return bool(_LINK_NAME.match(name)) or (name.endswith("_PORT") and bool(_LINK_VALUE.match(value.strip())))


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("cstore.config").warning(message)


# Variables read elsewhere (launcher, tests, feature switches) that are not connection settings.
_KNOWN_OTHER_ENV = {"CSTORE_CONFIG", "CSTORE_TESTCONTAINERS", "CSTORE_LOG_LEVEL", "CSTORE_LOG_FORMAT",
                    "CSTORE_ENCRYPTION_KEY", "CSTORE_ENCRYPTION_KEY_FILE", "CSTORE_NODE_START_TIMEOUT",
                    "CSTORE_HEAP", "CSTORE_TEST_KEYSPACE", "CSTORE_CQL_DIR", "CSTORE_CASSANDRA_VERSION",
                    # cstore/crypto.py and `cstore schema roles` (cstore/roles.py)
                    "CSTORE_ENCRYPTION_ALLOW_PLAINTEXT", "CSTORE_ADMIN_PASSWORD", "CSTORE_WORKER_PASSWORD",
                    "CSTORE_SCORER_PASSWORD"}
