"""Encryption at rest of parameter chunks: an AES-GCM bytes stage for the codec pipeline.

Envelope (all of it authenticated)::

    b"CSE1" | key-id length (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext + tag (16 bytes)

The associated data is the envelope header plus the chunk's identity (model incarnation, chunk
index, parameter; :func:`cstore.core.chunk_context`), so a ciphertext copied onto another chunk,
parameter or model fails authentication exactly like a flipped bit does: :class:`CorruptData`.

Keys (16, 24 or 32 bytes, base64) come from ``CSTORE_ENCRYPTION_KEY`` (comma-separated entries) or
``CSTORE_ENCRYPTION_KEY_FILE`` (one entry per line, ``#`` comments). An entry is ``KEY_ID:BASE64`` or
just ``BASE64`` (the id is then a fingerprint of the key). The *last* entry is the newest: it
encrypts every write; all entries decrypt, which is how keys rotate (add a key at the end, let
chunks be rewritten by updates or a rollback, then retire the old key).

>>> ring = Keyring.parse("k1:" + "A" * 43 + "=")
>>> stage = AesGcmStage(ring)
>>> stage.decode(stage.encode(b"chunk", b"ctx"), b"ctx")
b'chunk'
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cstore.core._codec import ENCRYPTED_MAGIC
from cstore.errors import ConfigError, CorruptData, KeyUnavailable

__all__ = ["AesGcmStage", "Keyring", "new_key"]

_NONCE = 12
_TAG = 16
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ENV_KEY = "CSTORE_ENCRYPTION_KEY"
ENV_KEY_FILE = "CSTORE_ENCRYPTION_KEY_FILE"
ENV_ALLOW_PLAINTEXT = "CSTORE_ENCRYPTION_ALLOW_PLAINTEXT"


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # an optional dependency: say how to get it
        raise ConfigError("encryption at rest needs the 'cryptography' package: "
                          "pip install 'cstore[crypto]'") from None
    return AESGCM


@dataclass(frozen=True)
class Keyring:
    """Named AES keys; ``write_id`` (the newest) encrypts, every key decrypts. Never printed."""

    keys: Mapping[str, bytes]
    write_id: str

    def __repr__(self) -> str:  # key material must never reach a log line or a traceback
        return f"Keyring(ids={list(self.keys)}, write_id={self.write_id!r})"

    @classmethod
    def parse(cls, text: str, origin: str = ENV_KEY) -> Keyring:
        entries = [e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
        keys: dict[str, bytes] = {}
        last = None
        for n, entry in enumerate((e for e in entries if e), 1):
            kid, sep, b64 = entry.rpartition(":")
            try:
                key = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{origin}: entry {n} is not base64 (expected KEY_ID:BASE64 or BASE64; "
                                  f"generate a key with `cstore keys new`)") from None
            if len(key) not in (16, 24, 32):
                raise ConfigError(f"{origin}: entry {n} decodes to {len(key)} bytes; an AES key has 16, 24 "
                                  f"or 32 bytes (32 recommended)")
            kid = kid if sep else "k" + hashlib.sha256(key).hexdigest()[:8]
            if not _KEY_ID_RE.match(kid):
                raise ConfigError(f"{origin}: entry {n} has an invalid key id {kid!r}; use letters, digits, "
                                  f"'_', '.', '-' (at most 64)")
            if kid in keys and keys[kid] != key:
                raise ConfigError(f"{origin}: key id {kid!r} is defined twice with different keys")
            keys[kid] = key
            last = kid
        if last is None:
            raise ConfigError(f"{origin} is set but holds no key")
        return cls(keys, last)


class AesGcmStage:
    """AES-GCM with a random 96-bit nonce per chunk write, bound to the chunk's identity."""

    def __init__(self, keyring: Keyring, *, allow_plaintext: bool = False) -> None:
        aesgcm = _aesgcm()
        self.keyring = keyring
        self.allow_plaintext = allow_plaintext
        self._ciphers = {kid: aesgcm(key) for kid, key in keyring.keys.items()}

    @staticmethod
    def _header(kid: str) -> bytes:
        raw = kid.encode("ascii")
        return ENCRYPTED_MAGIC + bytes([len(raw)]) + raw

    def encode(self, data: bytes, context: bytes = b"") -> bytes:
        kid = self.keyring.write_id
        header = self._header(kid)
        nonce = secrets.token_bytes(_NONCE)
        sealed: bytes = self._ciphers[kid].encrypt(nonce, data, header + context)
        return header + nonce + sealed

    def decode(self, data: bytes, context: bytes = b"", what: str = "chunk") -> bytes:
        """Open an envelope; ``what`` names the stored thing in errors (a chunk, a feedback segment…)."""
        data = bytes(data)
        if not data.startswith(ENCRYPTED_MAGIC):
            if self.allow_plaintext:
                return data  # written before encryption was turned on
            raise KeyUnavailable(f"{what} is not encrypted but encryption at rest is on; it was written without "
                                 f"a key or replaced in the database. If it predates encryption, set "
                                 f"{ENV_ALLOW_PLAINTEXT}=1 to read it (the next write encrypts it)")
        if len(data) < len(ENCRYPTED_MAGIC) + 1:
            raise CorruptData(f"encrypted {what} is truncated (no key id)")
        n = data[len(ENCRYPTED_MAGIC)]
        head_len = len(ENCRYPTED_MAGIC) + 1 + n
        if len(data) < head_len + _NONCE + _TAG:
            raise CorruptData(f"encrypted {what} is truncated; {_REMEDY.get(what, _REMEDY['chunk'])}")
        kid = data[len(ENCRYPTED_MAGIC) + 1:head_len].decode("ascii", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise KeyUnavailable(f"{what} is encrypted with key id {kid!r}, which is not loaded (loaded: "
                                 f"{', '.join(self._ciphers)}); add that key to {ENV_KEY_FILE}", key_id=kid)
        nonce = data[head_len:head_len + _NONCE]
        try:
            opened: bytes = cipher.decrypt(nonce, data[head_len + _NONCE:], data[:head_len] + context)
            return opened
        except Exception:  # cryptography's InvalidTag: never say more than that it failed
            raise CorruptData(f"encrypted {what} failed authentication (key id {kid!r}): it was tampered with "
                              f"or copied from another row; refusing it — "
                              f"{_REMEDY.get(what, _REMEDY['chunk'])}") from None


# What an operator can do about a damaged stored thing, by what it is.
_REMEDY = {"chunk": "restore the model from a snapshot",
           "feedback segment": "its events cannot be learned; the worker sets the segment aside",
           "prediction-log row": "the entity's logged features cannot be used; its label counts as a miss",
           "history delta": "the commit cannot be replayed; restore the model from a snapshot",
           "history metadata": "the commit's metadata cannot be shown; the parameters are not affected"}


def new_key() -> str:
    """A fresh random 256-bit key, base64 (what ``cstore keys new`` prints)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")
