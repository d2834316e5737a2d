"""Throw-away TLS material for a local cluster: a CA, a node keystore, a client certificate.

For development and tests only (``cstore local certs DIR``, ``cstore local up --tls DIR``): the CA
key is discarded after signing, the store password is random and kept in ``DIR/tls.json`` (the
node's yaml needs it anyway). Production keys come from the operator's own PKI.

Files in DIR: ``ca.pem`` (what clients trust, CSTORE_SSL_CA), ``client.pem`` + ``client-key.pem``
(CSTORE_SSL_CERT / CSTORE_SSL_KEY), ``node.p12`` (the nodes' key and certificate chain),
``truststore.p12`` (the CA, for nodes that require client certificates; made with Java's keytool).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterable
from pathlib import Path

from cstore_dev.errors import LocalClusterError


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise LocalClusterError("generating certificates needs the 'cryptography' package: "
                                "pip install 'cstore[crypto]'") from None
    return x509, hashes, serialization, ec, NameOID


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, ca: bool, ips: Iterable[str] = (),
          client: bool = False):
    x509, hashes, _, _, NameOID = _crypto()
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ips:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]), critical=False)
    if not ca:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def generate(directory: str | Path, addresses: Iterable[str]) -> Path:
    """Write a CA, a node keystore valid for ``addresses`` and a client certificate into ``directory``."""
    x509, hashes, serialization, ec, _ = _crypto()
    from cryptography.hazmat.primitives.serialization import pkcs12
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    password = secrets.token_urlsafe(18)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("cstore-local-ca", ca_key, "cstore-local-ca", ca_key, ca=True)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = _cert("cstore-node", node_key, "cstore-local-ca", ca_key, ca=False, ips=list(addresses))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("cstore-client", client_key, "cstore-local-ca", ca_key, ca=False, client=True)
    pem = serialization.Encoding.PEM
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    (out / "client.pem").write_bytes(client.public_bytes(pem))
    (out / "client-key.pem").write_bytes(client_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # 3DES/SHA1 PKCS#12: the most widely readable by Java's KeyStore; it is local test material.
    enc = (serialization.PrivateFormat.PKCS12.encryption_builder()
           .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(hashes.SHA1())
           .build(password.encode()))
    (out / "node.p12").write_bytes(pkcs12.serialize_key_and_certificates(b"node", node_key, node, [ca], enc))
    keytool = shutil.which("keytool")
    if keytool is None:
        raise LocalClusterError("keytool (from the JDK) is not on PATH; it builds the nodes' truststore")
    (out / "truststore.p12").unlink(missing_ok=True)
    proc = subprocess.run([keytool, "-importcert", "-noprompt", "-alias", "cstore-ca", "-file", str(out / "ca.pem"),
                           "-keystore", str(out / "truststore.p12"), "-storetype", "PKCS12",
                           "-storepass", password], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LocalClusterError(f"keytool could not build the truststore: {proc.stderr.strip()[-300:]}")
    (out / "tls.json").write_text(json.dumps({"store_password": password}))
    for name in ("client-key.pem", "node.p12", "truststore.p12", "tls.json"):
        os.chmod(out / name, 0o600)
    return out


def _password(directory: Path) -> str:
    try:
        return json.loads((directory / "tls.json").read_text())["store_password"]
    except (OSError, ValueError, KeyError):
        raise LocalClusterError(f"{directory} is not a TLS directory made by `cstore local certs` "
                                f"(no readable tls.json)") from None


def node_tls_options(directory: Path) -> dict:
    """NodeSpec keyword arguments for ``client_encryption_options`` (client certificates required)."""
    return {"tls_keystore": str(directory / "node.p12"), "tls_truststore": str(directory / "truststore.p12"),
            "tls_password": _password(directory), "tls_require_client_auth": True}


def client_ssl_context(directory: Path) -> ssl.SSLContext:
    """What a client of a ``--tls DIR`` cluster uses: trust the CA, present the client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(directory / "ca.pem"))
    ctx.load_cert_chain(str(directory / "client.pem"), str(directory / "client-key.pem"))
    return ctx
