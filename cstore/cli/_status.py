"""``cstore status MODEL``: head version, workers, per-partition lag, last commit, drift."""
from __future__ import annotations

import click

from cstore.cli._app import CliContext, echo_json


@click.command()
@click.argument("model")
@click.option("--group", default="default", show_default=True, help="Consumer group.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj: CliContext, model: str, group: str, as_json: bool) -> None:
    """Show the worker fleet learning MODEL: lag per partition, owners, workers, drift."""
    from cstore.ops import fleet_status
    st = fleet_status(obj.store(), model, group)
    if as_json:
        echo_json(st)
        return
    d = st["drift"]
    click.echo(f"{st['model']} (group {st['group']}): head version {st['head_version']}, lag {st['lag_events']} "
               f"events, learned {st['learned_events']}, last commit {st['last_commit'] or 'never'}")
    click.echo(f"drift: {d['detections']} detection(s), last {d['last_drift'] or 'never'}, score {d['score']}, "
               f"loss {d['loss']}, lr scale {d['lr_scale']}")
    pl = st["prediction_log"]
    click.echo(f"prediction log (24 h): {pl['logged']} logged, {pl['dropped']} dropped, {pl['write_errors']} write "
               f"errors; labels without features: {pl['lookups']}, of which {pl['lookup_misses']} found no "
               f"logged prediction (never logged or expired)")
    click.echo(f"workers ({len(st['workers'])} alive):")
    for w in st["workers"]:
        click.echo(f"  {w['worker']:40} partitions {w['partitions']}  {w['events']} events  "
                   f"{w['events_per_s']}/s  heartbeat {w['heartbeat_at']}")
    click.echo("partitions:")
    for p in st["partitions"]:
        click.echo(f"  {p['partition']:>4}  owner {p['owner'] or '-':40} lag {p['lag_events']:>8}  "
                   f"learned {p['learned_events']}" + ("  (critical)" if p["critical"] else ""))


COMMANDS = [status]
