"""``cstore schema roles`` (least-privilege roles) and ``cstore keys new`` (encryption keys)."""
from __future__ import annotations

import click

from cstore.backend import apply_roles, passwords_from_env
from cstore.cli._app import CliContext
from cstore.cli._schema import schema
from cstore.store import KEYSPACE_AUDIT


@schema.command("roles")
@click.pass_obj
def roles_cmd(obj: CliContext) -> None:
    """Create or update the admin, worker and scorer roles of the keyspace (needs a superuser).

    Passwords come from $CSTORE_ADMIN_PASSWORD, $CSTORE_WORKER_PASSWORD and $CSTORE_SCORER_PASSWORD
    and are never printed. Run it after `cstore schema apply`, and again after new migrations.
    """
    passwords = passwords_from_env()
    report = apply_roles(obj.backend(), obj.config.keyspace, passwords, log=lambda m: click.echo(m, err=True))
    click.echo(f"roles {', '.join(report.roles)}: {report.grants} grant(s) applied"
               + (f", {len(report.skipped)} skipped (tables not created yet)" if report.skipped else ""))
    obj.store().governance.record(KEYSPACE_AUDIT, "roles", after=", ".join(report.roles),
                                  reason="cstore schema roles (passwords set or rotated)",
                                  details={"grants": report.grants, "skipped": len(report.skipped)})


@click.group()
def keys() -> None:
    """Encryption-at-rest keys for parameter chunks (CSTORE_ENCRYPTION_KEY / _KEY_FILE)."""


@keys.command("new")
@click.option("--id", "key_id", default=None, help="Key id stored with every chunk it encrypts (default: "
                                                   "a fingerprint).")
def new_cmd(key_id: str | None) -> None:
    """Print a new random 256-bit key entry; append it to the key file to rotate (last line = newest)."""
    from cstore.core import Keyring, new_key
    entry = f"{key_id}:{new_key()}" if key_id else new_key()
    Keyring.parse(entry, "--id")  # validates the id
    click.echo(entry)


COMMANDS = [keys]
