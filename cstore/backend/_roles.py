"""Least-privilege roles for a keyspace, from ``cql/roles/roles.cql`` (see that file).

Role DDL cannot take bind markers for passwords, so passwords are inserted as CQL string
literals, quoted by the driver's own encoder; the role and keyspace names are validated
identifiers. No statement that carries a password is ever printed, logged or put in an error.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cassandra import InvalidRequest, Unauthorized
from cassandra.cluster import NoHostAvailable
from cassandra.encoder import cql_quote
from cassandra.query import SimpleStatement

from cstore.backend._schema import cql_dir, split_statements
from cstore.backend._statements import Runner
from cstore.errors import ConfigError, PermissionDenied, SchemaError

ROLES = ("admin", "worker", "scorer")
PASSWORD_ENV = {r: f"CSTORE_{r.upper()}_PASSWORD" for r in ROLES}
_MIN_PASSWORD = 12
_MISSING_TABLE = re.compile(r"unconfigured table|doesn't exist|does not exist|not found", re.I)


def role_name(keyspace: str, role: str) -> str:
    """Roles are cluster-wide; prefixing them with the keyspace keeps two deployments apart."""
    return f"{keyspace}_{role}"


def passwords_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    missing = [v for v in PASSWORD_ENV.values() if not env.get(v)]
    if missing:
        raise ConfigError(f"set {', '.join(missing)} (the roles' passwords; they are read from the "
                          f"environment only and never stored or printed)")
    out = {}
    for role, var in PASSWORD_ENV.items():
        pw = env[var]
        if len(pw) < _MIN_PASSWORD or any(ord(c) < 32 for c in pw):
            raise ConfigError(f"{var} must have at least {_MIN_PASSWORD} characters and no control "
                              f"characters")
        out[role] = pw
    return out


@dataclass
class RolesReport:
    """What ``apply_roles`` did; safe to print (no passwords)."""

    roles: list[str] = field(default_factory=list)
    grants: int = 0
    skipped: list[str] = field(default_factory=list)  # grants on tables that do not exist yet


def roles_file() -> Path:
    return cql_dir() / "roles" / "roles.cql"


def apply_roles(backend: Runner, keyspace: str, passwords: Mapping[str, str], *, path: Path | None = None,
                log: Callable[[str], None] = print) -> RolesReport:
    """Create or update the roles and their grants; needs a superuser login."""
    session = backend.session
    text = (path or roles_file()).read_text()
    values = {"keyspace": keyspace, **{r: role_name(keyspace, r) for r in ROLES},
              **{f"{r}_password": cql_quote(passwords[r]) for r in ROLES}}
    report = RolesReport([role_name(keyspace, r) for r in ROLES])
    existing = _existing_roles(session, report.roles)
    for template in split_statements(text):
        secret = "PASSWORD" in template.upper()
        # Only names and quoted passwords are substituted; braces never come from user input.
        stmt = template.format(**values)
        shown = template.format(**{**values, **{f"{r}_password": "'***'" for r in ROLES}})
        words = stmt.split()
        if words[:2] == ["ALTER", "ROLE"] and words[2] not in existing:
            continue  # created just now with this password; Cassandra refuses a change within 5 s
        try:
            _execute(session, stmt)
        except Unauthorized:
            raise PermissionDenied("creating roles needs a superuser login (CSTORE_USERNAME / "
                                   "CSTORE_PASSWORD of a superuser, e.g. cassandra on a fresh local cluster)") from None
        except (InvalidRequest, NoHostAvailable) as exc:
            if template.lstrip().upper().startswith("GRANT") and _MISSING_TABLE.search(str(exc)):
                report.skipped.append(shown)
                log(f"skipped (table does not exist yet; re-run after `cstore schema apply`): {shown}")
                continue
            detail = "" if secret else f": {exc}"
            raise SchemaError(f"roles: statement failed{detail}\n{shown[:200]}") from None
        if template.lstrip().upper().startswith("GRANT"):
            report.grants += 1
    return report


def _existing_roles(session: Any, names: list[str]) -> set[str]:
    q = session.prepare("SELECT role FROM system_auth.roles WHERE role = ?")
    try:
        return {n for n in names if session.execute(q, (n,)).one()}
    except Unauthorized:
        raise PermissionDenied("creating roles needs a superuser login (CSTORE_USERNAME / CSTORE_PASSWORD of "
                               "a superuser, e.g. cassandra on a fresh local cluster)") from None


def _execute(session: Any, stmt: str) -> None:
    """Run one statement; a password changed moments ago (re-run) is retried after Cassandra's 5 s guard."""
    for attempt in range(3):
        try:
            session.execute(SimpleStatement(stmt), timeout=30)
            return
        except NoHostAvailable as exc:
            if attempt == 2 or "can only be changed every" not in str(exc):
                raise
            time.sleep(5.5)
