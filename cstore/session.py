"""The driver connection: one ``Cluster`` per process, execution profiles per operation.

Every statement cstore runs names an operation (``read_model``, ``commit_chunk``, …); the
active consistency profile maps it to a consistency level through the driver's execution
profiles, so switching ``strong`` → ``eventual`` changes no code path but the commit style.
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from cassandra import AuthenticationFailed, ConsistencyLevel
from cassandra.connection import ConnectionBusy
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import DCAwareRoundRobinPolicy, RetryPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, dict_factory

from cstore.config import Config
from cstore.consistency import OPERATIONS, Profile, resolve_profile
from cstore.errors import ConfigError, ConnectionFailed

log = logging.getLogger("cstore.session")


def _connection_class() -> Any:
    # libev is the driver's fastest reactor and ships in the PyPI wheel; asyncore/asyncio otherwise.
    try:
        from cassandra.io.libevreactor import LibevConnection
        return LibevConnection
    except Exception:  # pragma: no cover - depends on the wheel
        return None


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not (cfg.ssl_ca or cfg.ssl_cert):
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ssl_ca)
        ctx.check_hostname = False  # nodes are addressed by IP; the CA pins trust
        if cfg.ssl_cert:
            ctx.load_cert_chain(cfg.ssl_cert, cfg.ssl_key)
    except (OSError, ssl.SSLError) as exc:  # never echo key material, only which file failed
        raise ConfigError(f"cannot load the TLS files (ssl_ca={cfg.ssl_ca!r}, ssl_cert={cfg.ssl_cert!r}, "
                          f"ssl_key={cfg.ssl_key!r}): {getattr(exc, 'strerror', None) or exc.__class__.__name__}; "
                          f"check CSTORE_SSL_CA / CSTORE_SSL_CERT / CSTORE_SSL_KEY") from None
    return ctx


@dataclass
class Connection:
    """A connected cluster, its session, and the consistency profile in force."""

    cluster: Cluster
    session: Session
    profile: Profile
    config: Config
    pid: int

    def close(self) -> None:
        self.cluster.shutdown()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_execution_profiles(profile: Profile, cfg: Config) -> dict[str, ExecutionProfile]:
    lbp_factory = lambda: TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc))  # noqa: E731
    eps = {}
    for op in OPERATIONS:
        eps[op] = ExecutionProfile(load_balancing_policy=lbp_factory(), retry_policy=RetryPolicy(),
                                   consistency_level=profile.level(op),
                                   serial_consistency_level=profile.serial_level,
                                   request_timeout=cfg.request_timeout_s, row_factory=dict_factory)
    eps[EXEC_PROFILE_DEFAULT] = ExecutionProfile(load_balancing_policy=lbp_factory(),
                                                 consistency_level=ConsistencyLevel.QUORUM
                                                 if profile.lwt else ConsistencyLevel.ONE,
                                                 serial_consistency_level=profile.serial_level,
                                                 request_timeout=cfg.request_timeout_s, row_factory=dict_factory)
    return eps


def connect(cfg: Config, *, keyspace: str | None = None, profile: Profile | None = None) -> Connection:
    """Connect to the cluster in ``cfg``; errors say what to try next. Never logs the password."""
    profile = profile or resolve_profile(cfg.profile, cfg.profiles)
    auth = PlainTextAuthProvider(cfg.username, cfg.password or "") if cfg.username else None
    kwargs: dict[str, Any] = dict(contact_points=list(cfg.contact_points), port=cfg.port, auth_provider=auth,
                                  execution_profiles=make_execution_profiles(profile, cfg),
                                  protocol_version=5, connect_timeout=cfg.connect_timeout_s,
                                  ssl_context=_ssl_context(cfg), compression=False,
                                  # Without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to every
                                  # request whose frame spans several segments (a 16-64 KiB chunk).
                                  sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    conn_class = _connection_class()
    if conn_class is not None:
        kwargs["connection_class"] = conn_class
    cluster = Cluster(**kwargs)
    try:
        session = cluster.connect(keyspace)
    except NoHostAvailable as exc:
        cluster.shutdown()
        errors = exc.errors if isinstance(exc.errors, dict) else dict(enumerate(exc.errors or []))
        reasons = "; ".join(f"{host}: {_short(err)}" for host, err in errors.items())
        if any(isinstance(err, AuthenticationFailed) for err in errors.values()):
            if not cfg.username:
                raise ConnectionFailed(f"the cluster at {', '.join(cfg.contact_points)} requires a login: set "
                                       f"CSTORE_USERNAME and CSTORE_PASSWORD") from None
            raise ConnectionFailed(f"login refused by {', '.join(cfg.contact_points)} for user "
                                   f"{cfg.username!r}: check CSTORE_USERNAME / CSTORE_PASSWORD") from None
        hint = ("start a local node with `cstore local up`" if cfg.uses_local_cluster
                else "check CSTORE_CONTACT_POINTS / CSTORE_PORT and that the cluster is up")
        if cfg.ssl_ca or cfg.ssl_cert:
            if any(m in reasons.lower() for m in ("ssl", "certificate", "tls")):
                hint = ("the TLS handshake failed: check that CSTORE_SSL_CA is the CA that signed the nodes' "
                        "certificate and, when the cluster requires client certificates, CSTORE_SSL_CERT / "
                        "CSTORE_SSL_KEY")
        elif _port_open(cfg.contact_points, cfg.port):
            # The port accepts connections but the CQL handshake failed: typically a TLS-only cluster.
            hint = ("the node accepts connections but closed the plain-text handshake; if the cluster requires "
                    "TLS, set CSTORE_SSL_CA (and CSTORE_SSL_CERT / CSTORE_SSL_KEY for client certificates)")
        raise ConnectionFailed(f"no Cassandra node answered at {', '.join(cfg.contact_points)}:{cfg.port} "
                               f"({reasons or 'no host'}); {hint}") from None
    except Exception as exc:
        cluster.shutdown()
        if "keyspace" in str(exc).lower():
            raise ConnectionFailed(f"keyspace {keyspace!r} does not exist; run `cstore schema apply`") from None
        raise ConnectionFailed(f"could not connect: {_short(exc)}") from None
    return Connection(cluster, session, profile, cfg, os.getpid())


def _port_open(points, port: int) -> bool:
    for host in points:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            continue
    return False


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) < 300 else text[:300] + "…"


def _busy(exc: BaseException) -> bool:
    """The driver refused to send because the connection's socket buffer is full (libev back-pressure).

    Nothing reached the server, so sending again is safe even for a compare-and-set.
    """
    errors = getattr(exc, "errors", None)
    return isinstance(exc, NoHostAvailable) and bool(errors) and all(
        isinstance(e, ConnectionBusy) for e in errors.values())


def execute(session: Session, statement: Any, parameters: Any = None, *, profile: str, attempts: int = 200):
    """``session.execute`` that waits out client-side back-pressure instead of failing."""
    for attempt in range(attempts):
        try:
            return session.execute(statement, parameters, execution_profile=profile)
        except NoHostAvailable as exc:
            if not _busy(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.001 * (attempt + 1), 0.05))


def execute_partition(session: Session, requests: list[tuple[Any, Any]], *, profile: str) -> None:
    """Write rows that share one partition in one request: an unlogged batch of one partition is
    applied atomically and in isolation, and costs one round trip and one driver send instead of
    one each (the driver's per-request CPU is most of a chunk commit's client time)."""
    if len(requests) == 1:
        execute(session, *requests[0], profile=profile)
        return
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    for stmt, params in requests:
        batch.add(stmt, params)
    execute(session, batch, profile=profile)
