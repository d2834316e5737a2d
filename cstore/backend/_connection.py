"""Connecting: one ``Cluster`` per process, an execution profile per operation, TLS, and clear errors.

Every statement cstore runs names an operation (``read_model``, ``commit_chunk``, …); the active
consistency profile maps it to a consistency level through the driver's execution profiles, so
switching ``strong`` → ``eventual`` changes no code path but the commit style.
"""
from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterable
from functools import cached_property
from typing import Any

from cassandra import AuthenticationFailed, ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, RetryPolicy, TokenAwarePolicy
from cassandra.query import dict_factory

from cstore.backend._baselines import BaselineTables
from cstore.backend._feedback import FeedbackTables
from cstore.backend._fleet import FleetTables
from cstore.backend._governance import GovernanceTables
from cstore.backend._params import ParamTables
from cstore.backend._predictions import PredictionTables
from cstore.backend._purge import PurgeTables
from cstore.backend._statements import Runner
from cstore.config import OPERATIONS, Config, Profile, resolve_profile
from cstore.errors import ConfigError, ConnectionFailed

log = logging.getLogger("cstore.session")

#: The driver's event loops by the name ``reactor`` takes in the configuration.
_REACTORS = {"libev": ("cassandra.io.libevreactor", "LibevConnection"),
             "asyncio": ("cassandra.io.asyncioreactor", "AsyncioConnection"),
             "gevent": ("cassandra.io.geventreactor", "GeventConnection")}


class Backend(Runner):
    """A connected cluster, seen through cstore's tables: the storage boundary.

    The table gateways — :attr:`params`, :attr:`feedback`, :attr:`fleet`, :attr:`governance`,
    :attr:`predictions`, :attr:`purge`, :attr:`baselines` — hold every CQL statement cstore runs;
    nothing outside this package builds a statement or sees a driver object.
    """

    def __init__(self, cluster: Cluster, session: Any, profile: Profile, config: Config) -> None:
        super().__init__(session, profile, config, driver_level(profile.serial))
        self._cluster = cluster

    @cached_property
    def params(self) -> ParamTables:
        return ParamTables(self)

    @cached_property
    def feedback(self) -> FeedbackTables:
        return FeedbackTables(self)

    @cached_property
    def fleet(self) -> FleetTables:
        return FleetTables(self)

    @cached_property
    def governance(self) -> GovernanceTables:
        return GovernanceTables(self)

    @cached_property
    def predictions(self) -> PredictionTables:
        return PredictionTables(self)

    @cached_property
    def purge(self) -> PurgeTables:
        return PurgeTables(self)

    @cached_property
    def baselines(self) -> BaselineTables:
        return BaselineTables(self)

    def hosts(self) -> list[tuple[str, bool]]:
        """Every node the driver knows, with whether it is up (for readiness checks)."""
        return [(str(h.endpoint), bool(h.is_up)) for h in self._cluster.metadata.all_hosts()]

    def compactions_running(self) -> bool:
        """Whether a node answering this connection is compacting (``system_views.sstable_tasks``);
        False when the virtual table is missing or not readable by this role."""
        try:
            rows = self.session.execute("SELECT kind FROM system_views.sstable_tasks")
        except Exception:  # noqa: BLE001 - an optional view: no answer means "do not wait"
            return False
        return any(r["kind"].lower() == "compaction" for r in rows)

    def close(self) -> None:
        self._cluster.shutdown()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def driver_level(name: str) -> int:
    """The driver's constant for a consistency level name (validated by :mod:`cstore.config`)."""
    level: int = getattr(ConsistencyLevel, name)
    return level


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not (cfg.ssl_ca or cfg.ssl_cert):
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ssl_ca)
        # On by default: the driver then checks each node's certificate against the address it dials
        # (an IP address needs an IP entry in the certificate's subjectAltName).
        ctx.check_hostname = not cfg.ssl_insecure_skip_hostname_check
        if cfg.ssl_insecure_skip_hostname_check:
            log.warning("TLS hostname verification is OFF (ssl_insecure_skip_hostname_check): any certificate "
                        "the CA signed is accepted for any node")
        if cfg.ssl_cert:
            ctx.load_cert_chain(cfg.ssl_cert, cfg.ssl_key)
    except (OSError, ssl.SSLError) as exc:  # never echo key material, only which file failed
        raise ConfigError(f"cannot load the TLS files (ssl_ca={cfg.ssl_ca!r}, ssl_cert={cfg.ssl_cert!r}, "
                          f"ssl_key={cfg.ssl_key!r}): {getattr(exc, 'strerror', None) or exc.__class__.__name__}; "
                          f"check CSTORE_SSL_CA / CSTORE_SSL_CERT / CSTORE_SSL_KEY") from None
    return ctx


def _connection_class(reactor: str) -> Any:
    module, name = _REACTORS[reactor]
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except Exception as exc:  # pragma: no cover - depends on the wheel and the platform
        if reactor == "libev":
            return None  # the driver falls back to asyncore/asyncio
        raise ConfigError(f"the driver's {reactor} reactor is not available here ({exc}); "
                          f"set reactor (CSTORE_REACTOR) to one of {', '.join(_REACTORS)}") from None


def execution_profiles(profile: Profile, cfg: Config) -> dict[Any, ExecutionProfile]:
    def lbp() -> TokenAwarePolicy:
        return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc))
    serial = driver_level(profile.serial)
    eps: dict[Any, ExecutionProfile] = {
        op: ExecutionProfile(load_balancing_policy=lbp(), retry_policy=RetryPolicy(),
                             consistency_level=driver_level(profile.levels[op]), serial_consistency_level=serial,
                             request_timeout=cfg.request_timeout_s, row_factory=dict_factory)
        for op in OPERATIONS}
    # Schema changes and the migrations table run on the default profile.
    eps[EXEC_PROFILE_DEFAULT] = ExecutionProfile(load_balancing_policy=lbp(),
                                                 consistency_level=ConsistencyLevel.QUORUM
                                                 if profile.lwt else ConsistencyLevel.ONE,
                                                 serial_consistency_level=serial,
                                                 request_timeout=cfg.request_timeout_s, row_factory=dict_factory)
    return eps


def connect(cfg: Config, *, keyspace: str | None = None, profile: Profile | None = None) -> Backend:
    """Connect to the cluster in ``cfg`` (in ``keyspace``, or none); errors say what to try next.

    Never logs the password. After an outage of any length the driver reconnects within 5 s of a
    node coming back (its default waits up to 10 minutes and gives up on a host after 64 attempts).
    """
    profile = profile or resolve_profile(cfg.profile, cfg.profiles)
    auth = PlainTextAuthProvider(cfg.username, cfg.password or "") if cfg.username else None
    kwargs: dict[str, Any] = dict(contact_points=list(cfg.contact_points), port=cfg.port, auth_provider=auth,
                                  execution_profiles=execution_profiles(profile, cfg),
                                  protocol_version=5, connect_timeout=cfg.connect_timeout_s,
                                  ssl_context=_ssl_context(cfg), compression=False,
                                  reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0, max_attempts=None),
                                  # Without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to every
                                  # request whose frame spans several segments (a 16-64 KiB chunk).
                                  sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    conn_class = _connection_class(cfg.reactor)
    if conn_class is not None:
        kwargs["connection_class"] = conn_class
    cluster = Cluster(**kwargs)
    try:
        session = cluster.connect(keyspace)
    except NoHostAvailable as exc:
        cluster.shutdown()
        missing = keyspace is not None and "using keyspace" in str(exc) and _keyspace_missing(kwargs, keyspace)
        if missing:
            raise ConnectionFailed(f"keyspace {keyspace!r} does not exist on the cluster at "
                                   f"{', '.join(cfg.contact_points)}; create it with `cstore schema apply` "
                                   f"(or set CSTORE_KEYSPACE to the one you meant)") from None
        raise _connect_error(exc, cfg) from None
    except Exception as exc:
        cluster.shutdown()
        if "keyspace" in str(exc).lower():
            raise ConnectionFailed(f"keyspace {keyspace!r} does not exist; run `cstore schema apply`") from None
        raise ConnectionFailed(f"could not connect: {_short(exc)}") from None
    return Backend(cluster, session, profile, cfg)


SELECT_KEYSPACE = "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s"


def _keyspace_missing(cluster_kwargs: dict[str, Any], keyspace: str) -> bool:
    """Whether the nodes answer without a keyspace and do not have ``keyspace``: the driver reports a
    missing keyspace as "no host available", which would otherwise read as a network or TLS fault.
    (A new cluster object: the driver's one is not usable again after a failed connect.)"""
    cluster = Cluster(**cluster_kwargs)
    try:
        row = cluster.connect().execute(SELECT_KEYSPACE, (keyspace,)).one()
    except Exception:  # the nodes do not answer at all: the caller reports that error instead
        return False
    finally:
        cluster.shutdown()
    return row is None


def _connect_error(exc: NoHostAvailable, cfg: Config) -> ConnectionFailed:
    errors = exc.errors if isinstance(exc.errors, dict) else dict(enumerate(exc.errors or []))
    reasons = "; ".join(f"{host}: {_short(err)}" for host, err in errors.items())
    if any(isinstance(err, AuthenticationFailed) for err in errors.values()):
        if not cfg.username:
            return ConnectionFailed(f"the cluster at {', '.join(cfg.contact_points)} requires a login: set "
                                    f"CSTORE_USERNAME and CSTORE_PASSWORD")
        return ConnectionFailed(f"login refused by {', '.join(cfg.contact_points)} for user {cfg.username!r}: "
                                f"check CSTORE_USERNAME / CSTORE_PASSWORD")
    hint = ("start a local node with `cstore local up`" if cfg.uses_local_cluster
            else "check CSTORE_CONTACT_POINTS / CSTORE_PORT and that the cluster is up")
    if cfg.ssl_ca or cfg.ssl_cert:
        if "mismatch" in reasons.lower() or "not valid for" in reasons.lower():
            hint = ("the node's TLS certificate does not name the address it was reached at: reissue it with "
                    "that address (or DNS name) in its subjectAltName, or contact the node by a name it carries "
                    "(CSTORE_CONTACT_POINTS); only for a test rig, CSTORE_SSL_INSECURE_SKIP_HOSTNAME_CHECK=true")
        elif any(m in reasons.lower() for m in ("ssl", "certificate", "tls")):
            hint = ("the TLS handshake failed: check that CSTORE_SSL_CA is the CA that signed the nodes' "
                    "certificate and, when the cluster requires client certificates, CSTORE_SSL_CERT / "
                    "CSTORE_SSL_KEY")
    elif _port_open(cfg.contact_points, cfg.port):
        # The port accepts connections but the CQL handshake failed: typically a TLS-only cluster.
        hint = ("the node accepts connections but closed the plain-text handshake; if the cluster requires "
                "TLS, set CSTORE_SSL_CA (and CSTORE_SSL_CERT / CSTORE_SSL_KEY for client certificates)")
    return ConnectionFailed(f"no Cassandra node answered at {', '.join(cfg.contact_points)}:{cfg.port} "
                            f"({reasons or 'no host'}); {hint}")


def _port_open(points: Iterable[str], port: int) -> bool:
    for host in points:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            continue
    return False


def _short(err: object) -> str:
    text = str(err)
    return text if len(text) < 300 else text[:300] + "…"
