"""Configuration: settings, consistency profiles and encryption keys, each with one source of truth.

* :func:`load_config` builds a :class:`Config` from arguments > ``CSTORE_*`` environment > a TOML
  file > defaults, refuses unknown keys, and records where each value came from (``Config.source``).
* Consistency profiles are data (:class:`Profile`: a consistency level *name* per operation, the
  serial level, LWT or blind commits); :func:`resolve_profile` validates custom ones. The backend
  turns the names into the driver's execution profiles.
* :func:`codec_from_env` reads ``CSTORE_ENCRYPTION_KEY`` / ``CSTORE_ENCRYPTION_KEY_FILE`` into the
  codec pipeline every connection encodes chunks with.
* :func:`cstore_version` is the installed cstore's version (metrics, lineage, ``--version``).
"""
from cstore.config._keys import codec_from_env, keyring_from_env
from cstore.config._profiles import (BUILTIN, CONSISTENCY_LEVELS, OPERATIONS, SERIAL_LEVELS, Profile, all_profiles,
                                     build_profile, resolve_profile)
from cstore.config._settings import Config, load_config
from cstore.config._version import cstore_version

__all__ = ["BUILTIN", "CONSISTENCY_LEVELS", "OPERATIONS", "SERIAL_LEVELS", "Config", "Profile", "all_profiles",
           "build_profile", "codec_from_env", "cstore_version", "keyring_from_env", "load_config", "resolve_profile"]
