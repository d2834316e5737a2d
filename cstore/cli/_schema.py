"""``cstore schema``: create the keyspace and apply the numbered migrations in cql/."""
from __future__ import annotations

import click

from cstore.backend import apply_schema, migrations, replication_map, schema_status
from cstore.errors import CstoreError
from cstore.cli._app import CliContext, json_option, echo_json


def _parse_dcs(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for v in values:
        name, _, rf = v.partition(":")
        if not name or not rf.isdigit() or int(rf) < 1:
            raise click.BadParameter(f"expected NAME:RF such as dc1:3, got {v!r}", param_hint="--dc")
        out[name] = int(rf)
    return out


@click.group()
def schema() -> None:
    """Create the keyspace and apply CQL migrations."""


@schema.command()
@click.option("--replication-factor", type=click.IntRange(1, 9), default=None,
              help="SimpleStrategy replication factor [$CSTORE_REPLICATION_FACTOR, 1].")
@click.option("--dc", "dcs", multiple=True, metavar="NAME:RF",
              help="NetworkTopologyStrategy replication per data centre (repeatable).")
@json_option
@click.pass_obj
def apply(obj: CliContext, replication_factor: int | None, dcs: tuple[str, ...], as_json: bool) -> None:
    """Create the keyspace if needed and apply pending migrations (re-running is a no-op)."""
    cfg = obj.config
    rep = replication_map(cfg, replication_factor, _parse_dcs(dcs))
    done = apply_schema(obj.backend(), cfg.keyspace, rep, log=(lambda m: click.echo(m, err=True)) if as_json
                        else click.echo)
    if as_json:
        echo_json({"keyspace": cfg.keyspace, "replication": rep, "applied": list(done)})
        return
    click.echo(f"keyspace {cfg.keyspace}: {len(done)} migration(s) applied" if done
               else f"keyspace {cfg.keyspace}: up to date")


@schema.command("status")
@json_option
@click.pass_obj
def status_cmd(obj: CliContext, as_json: bool) -> None:
    """Show each migration file and whether it is applied, pending or changed."""
    rows = schema_status(obj.backend(), obj.config.keyspace)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['state']:8} {r['name']}  {r['applied_at'] or ''}")


@schema.command("plan")
@json_option
@click.pass_obj
def plan_cmd(obj: CliContext, as_json: bool) -> None:
    """Print the CQL that `cstore schema apply` would run now (pending migrations, in order), for review.

    Nothing is written. A keyspace that does not exist yet is shown with every migration pending
    (apply also creates the keyspace with the replication of the configuration and its flags).
    """
    try:
        state = {r["name"]: r["state"] for r in schema_status(obj.backend(), obj.config.keyspace)}
    except CstoreError:  # no keyspace (or no migrations table) yet: everything is pending
        state = {}
    pending = [m for m in migrations() if state.get(m.name, "pending") == "pending"]
    if as_json:
        echo_json([{"name": m.name, "statements": m.statements} for m in pending])
        return
    if not pending:
        click.echo(f"-- keyspace {obj.config.keyspace}: up to date, nothing to run")
    for m in pending:
        click.echo(f"-- {m.name} (keyspace {obj.config.keyspace})")
        for stmt in m.statements:
            click.echo(f"{stmt};\n")


COMMANDS = [schema]
