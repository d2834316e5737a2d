"""``cstore schema roles`` (least-privilege roles) and ``cstore keys new`` (encryption keys)."""
from __future__ import annotations

import click

from cstore.cli import CliContext
from cstore.commands.schema_cmd import schema


@schema.command("roles")
@click.pass_obj
def roles_cmd(obj: CliContext) -> None:
    """Create or update the admin, worker and scorer roles of the keyspace (needs a superuser).

    Passwords come from $CSTORE_ADMIN_PASSWORD, $CSTORE_WORKER_PASSWORD and $CSTORE_SCORER_PASSWORD
    and are never printed. Run it after `cstore schema apply`, and again after new migrations.
    """
    from cstore.roles import apply_roles, passwords_from_env
    from cstore.session import connect
    passwords = passwords_from_env()
    cfg = obj.config
    conn = connect(cfg)
    try:
        report = apply_roles(conn.session, cfg.keyspace, passwords, log=lambda m: click.echo(m, err=True))
    finally:
        conn.close()
    click.echo(f"roles {', '.join(report.roles)}: {report.grants} grant(s) applied"
               + (f", {len(report.skipped)} skipped (tables not created yet)" if report.skipped else ""))


@click.group()
def keys() -> None:
    """Encryption-at-rest keys for parameter chunks (CSTORE_ENCRYPTION_KEY / _KEY_FILE)."""


@keys.command("new")
@click.option("--id", "key_id", default=None, help="Key id stored with every chunk it encrypts (default: "
                                                   "a fingerprint).")
def new_cmd(key_id: str | None) -> None:
    """Print a new random 256-bit key entry; append it to the key file to rotate (last line = newest)."""
    from cstore.crypto import Keyring, new_key
    entry = f"{key_id}:{new_key()}" if key_id else new_key()
    Keyring.parse(entry, "--id")  # validates the id
    click.echo(entry)


COMMANDS = [keys]
