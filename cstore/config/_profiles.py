"""Named consistency profiles: which consistency level each operation uses, and whether
parameter commits are compare-and-set (LWT) or blind writes.

Guarantees (see docs/RELIABILITY.md for the tested version):

* ``strong`` — commits are LWTs (``IF version = ?``) with serial consistency SERIAL and
  commit consistency QUORUM; reads at QUORUM. No acknowledged update is ever lost and each
  chunk's history is a total order, as long as a quorum of replicas is up.
* ``local`` — as ``strong`` but LOCAL_QUORUM / LOCAL_SERIAL: strong within one data centre.
* ``eventual`` — blind writes at ONE, reads at ONE, last writer wins. Concurrent writers of
  the same chunk can overwrite each other (Hogwild-style); such overwrites are detected where
  possible and counted in stats, never hidden.
* ``all`` — like ``strong`` but every replica must answer (useful to show what QUORUM buys).

Custom profiles come from configuration, e.g. in ``cstore.toml``::

    [profiles.fast_reads]
    base = "strong"
    read_model = "ONE"
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cstore.errors import ConfigError

__all__ = ["BUILTIN", "CONSISTENCY_LEVELS", "OPERATIONS", "SERIAL_LEVELS", "Profile", "all_profiles",
           "build_profile", "resolve_profile"]

#: Every operation a statement runs as; the backend maps each to a driver execution profile.
OPERATIONS = ("read_model", "commit_chunk", "write_history", "read_history",
              "ingest_feedback", "read_feedback", "coordination")

#: Cassandra's consistency levels by name (the backend turns a name into the driver's constant).
CONSISTENCY_LEVELS = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
SERIAL_LEVELS = ("SERIAL", "LOCAL_SERIAL")


@dataclass(frozen=True)
class Profile:
    """Consistency level (by name) per operation, the serial level of compare-and-sets, and the commit style."""

    name: str
    levels: Mapping[str, str]
    serial: str = "SERIAL"
    lwt: bool = True
    description: str = ""


def _uniform(level: str) -> dict[str, str]:
    return {op: level for op in OPERATIONS}


BUILTIN: dict[str, Profile] = {
    "strong": Profile("strong", _uniform("QUORUM"), "SERIAL", True,
                      "LWT commits (IF version = ?), SERIAL Paxos, QUORUM reads and writes"),
    "local": Profile("local", _uniform("LOCAL_QUORUM"), "LOCAL_SERIAL", True,
                     "LWT commits, LOCAL_SERIAL Paxos, LOCAL_QUORUM reads and writes (one DC)"),
    "eventual": Profile("eventual", {**_uniform("ONE"), "coordination": "QUORUM"}, "SERIAL", False,
                        "blind writes at ONE, last writer wins; overwrites are counted, not prevented"),
    "all": Profile("all", _uniform("ALL"), "SERIAL", True, "LWT commits, every replica must answer"),
}

_PROFILE_KEYS = set(OPERATIONS) | {"base", "serial", "lwt", "description"}


def build_profile(name: str, spec: Mapping[str, Any]) -> Profile:
    """Validate a custom profile definition (from the config file) and build it."""
    unknown = set(spec) - _PROFILE_KEYS
    if unknown:
        raise ConfigError(f"profile {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(_PROFILE_KEYS))}")
    base_name = spec.get("base", "strong")
    if base_name not in BUILTIN:
        raise ConfigError(f"profile {name!r}: base {base_name!r} is not one of {', '.join(BUILTIN)}")
    base = BUILTIN[base_name]
    levels = dict(base.levels)
    for op in OPERATIONS:
        if op in spec:
            level = str(spec[op]).upper()
            if level not in CONSISTENCY_LEVELS:
                raise ConfigError(f"profile {name!r}: {op} = {spec[op]!r} is not a consistency level; "
                                  f"use one of {', '.join(CONSISTENCY_LEVELS)}")
            levels[op] = level
    serial = str(spec.get("serial", base.serial)).upper()
    if serial not in SERIAL_LEVELS:
        raise ConfigError(f"profile {name!r}: serial = {spec.get('serial')!r}; use SERIAL or LOCAL_SERIAL")
    lwt = spec.get("lwt", base.lwt)
    if not isinstance(lwt, bool):
        raise ConfigError(f"profile {name!r}: lwt must be true or false, got {lwt!r}")
    return Profile(name, levels, serial, lwt, str(spec.get("description", f"custom, based on {base_name}")))


def resolve_profile(name: str, custom: Mapping[str, Mapping[str, Any]] | None = None) -> Profile:
    """Find ``name`` among custom and built-in profiles; a clear error otherwise."""
    custom = custom or {}
    if name in custom:
        return build_profile(name, custom[name])
    if name in BUILTIN:
        return BUILTIN[name]
    known = sorted(set(BUILTIN) | set(custom))
    raise ConfigError(f"unknown consistency profile {name!r}; choose one of {', '.join(known)} "
                      f"or define it under [profiles.{name}] in the config file")


def all_profiles(custom: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Profile]:
    out = dict(BUILTIN)
    for name, spec in (custom or {}).items():
        out[name] = build_profile(name, spec)
    return out
