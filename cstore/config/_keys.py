"""Where the encryption keys come from: ``CSTORE_ENCRYPTION_KEY`` or the file ``CSTORE_ENCRYPTION_KEY_FILE``.

The key ring and the AES-GCM stage themselves are pure (:mod:`cstore.core`); this module reads the
environment and the key file, and builds the codec pipeline every connection uses.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cstore.core import ENV_ALLOW_PLAINTEXT, ENV_KEY, ENV_KEY_FILE, AesGcmStage, CodecPipeline, Keyring
from cstore.errors import ConfigError

log = logging.getLogger("cstore.crypto")

def keyring_from_env(env: Mapping[str, str] | None = None) -> Keyring | None:
    """The keyring configured in the environment, or None when encryption is off."""
    env = os.environ if env is None else env
    inline, path = env.get(ENV_KEY, ""), env.get(ENV_KEY_FILE, "")
    if inline and path:
        raise ConfigError(f"set either {ENV_KEY} or {ENV_KEY_FILE}, not both")
    if inline:
        return Keyring.parse(inline, ENV_KEY)
    if not path:
        return None
    p = Path(path)
    try:
        text = p.read_text()
        mode = p.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{ENV_KEY_FILE}={path}: cannot read it ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("encryption key file %s is readable by group or others; chmod 600 it", p)
    return Keyring.parse(text, f"{ENV_KEY_FILE} ({p})")


def codec_from_env(env: Mapping[str, str] | None = None) -> CodecPipeline:
    """The codec pipeline for this environment: plain, or with the AES-GCM stage when keys are set."""
    env = os.environ if env is None else env
    ring = keyring_from_env(env)
    if ring is None:
        return CodecPipeline()
    allow = env.get(ENV_ALLOW_PLAINTEXT, "").lower() in ("1", "true", "yes")
    return CodecPipeline([AesGcmStage(ring, allow_plaintext=allow)])
