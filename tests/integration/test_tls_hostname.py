"""TLS hostname verification (issue 17): on by default, off only through a setting named insecure.

A private TLS node costs a minute of the shared machine's two cores, so these tests put a TLS
terminator in front of the shared test node instead: a real TLS server (Python's ``ssl``) presenting
a certificate signed by a CA made here, forwarding the bytes to the real Cassandra. The driver's
handshake is the thing under test; every query that passes goes to the real node. The private node
of ``test_security.py`` covers client certificates and auth with verification on.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cstore.backend import connect
from cstore.config import load_config
from cstore.errors import ConfigError, ConnectionFailed

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _mint(directory: Path) -> dict[str, Path]:
    """One CA and two server certificates it signs: one naming 127.0.0.1, one naming another host."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("t17-ca")).issuer_name(_name("t17-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    out = {"ca": directory / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(pem))
    for label, names in (("right", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                         ("wrong", [x509.DNSName("node-7.elsewhere.invalid"),
                                    x509.IPAddress(ipaddress.ip_address("10.99.0.7"))])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(f"t17-{label}")).issuer_name(_name("t17-ca"))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .sign(ca_key, hashes.SHA256()))
        path = directory / f"{label}.pem"
        path.write_bytes(cert.public_bytes(pem) + key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        out[label] = path
    return out


class TlsTerminator:
    """Accepts TLS on 127.0.0.1:<port> with ``cert`` and relays the plain bytes to the real node."""

    def __init__(self, cert: Path, upstream: tuple[str, int]) -> None:
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(cert))
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused our certificate: the case under test
            raw.close()
            return
        up = socket.create_connection(self._upstream)
        threading.Thread(target=_pump, args=(up, tls), daemon=True).start()
        _pump(tls, up)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    return _mint(tmp_path_factory.mktemp("tls17"))


@pytest.fixture
def terminator(request, certs, base_config) -> Iterator[TlsTerminator]:
    if base_config.contact_points[0] not in ("127.0.0.1", "localhost"):
        pytest.skip("the terminator relays to a node on this machine")
    t = TlsTerminator(certs[request.param], (base_config.contact_points[0], base_config.port))
    yield t
    t.close()


def _tls_cfg(base_config, certs, port: int, **extra):
    return dataclasses.replace(base_config, contact_points=("127.0.0.1",), port=port, ssl_ca=str(certs["ca"]),
                               connect_timeout_s=5.0, **extra)


@pytest.mark.parametrize("terminator", ["right"], indirect=True)
def test_a_certificate_naming_the_node_is_accepted_with_verification_on(terminator, certs, base_config):
    cfg = _tls_cfg(base_config, certs, terminator.port)
    assert cfg.ssl_insecure_skip_hostname_check is False  # the default
    with connect(cfg, keyspace=base_config.keyspace) as conn:
        row = conn.session.execute("SELECT release_version FROM system.local").one()
        assert row["release_version"] >= "5.0"


@pytest.mark.parametrize("terminator", ["wrong"], indirect=True)
def test_a_certificate_with_another_name_is_refused_clearly(terminator, certs, base_config):
    with pytest.raises(ConnectionFailed) as exc:
        connect(_tls_cfg(base_config, certs, terminator.port), keyspace=base_config.keyspace)
    text = str(exc.value)
    assert "does not name the address" in text and "SSL_INSECURE_SKIP_HOSTNAME_CHECK" in text
    # the explicit, insecure opt-out connects to the same terminator (the CA still has to match)
    with connect(_tls_cfg(base_config, certs, terminator.port, ssl_insecure_skip_hostname_check=True),
                 keyspace=base_config.keyspace) as conn:
        assert conn.session.execute("SELECT key FROM system.local").one()["key"] == "local"


@pytest.mark.parametrize("raw, expected", [("true", True), ("1", True), ("no", False), ("FALSE", False)])
def test_the_insecure_setting_is_read_from_the_environment(raw, expected):
    cfg = load_config(env={"CSTORE_SSL_INSECURE_SKIP_HOSTNAME_CHECK": raw})
    assert cfg.ssl_insecure_skip_hostname_check is expected
    assert cfg.source["ssl_insecure_skip_hostname_check"] == "CSTORE_SSL_INSECURE_SKIP_HOSTNAME_CHECK"


@pytest.mark.parametrize("raw", ["maybe", "2", "off-ish"])
def test_a_malformed_insecure_setting_is_refused(raw, tmp_path):
    with pytest.raises(ConfigError, match="ssl_insecure_skip_hostname_check.*true or false"):
        load_config(env={"CSTORE_SSL_INSECURE_SKIP_HOSTNAME_CHECK": raw})
    f = tmp_path / "cstore.toml"
    f.write_text(f'ssl_insecure_skip_hostname_check = "{raw}"\n')
    with pytest.raises(ConfigError, match="true or false"):
        load_config(config_file=str(f), env={})


def test_the_launchers_certificates_name_every_node_address(tmp_path):
    """`cstore local certs` / `local up --tls`: the node certificate carries localhost and each node's IP, so
    clients verify it with hostname checking on (test_security.py connects to such a node)."""
    import json

    from cryptography.hazmat.primitives.serialization import pkcs12

    from cstore_dev.local.certs import generate
    out = generate(tmp_path / "tls", ["127.0.0.1", "127.0.0.2"])
    password = json.loads((out / "tls.json").read_text())["store_password"].encode()
    _, cert, _ = pkcs12.load_key_and_certificates((out / "node.p12").read_bytes(), password)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "127.0.0.2"}
