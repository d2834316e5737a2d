"""``cstore status MODEL``: head version, workers, per-partition lag, last commit, drift."""
from __future__ import annotations

import sys
from typing import Any

import click

from cstore.cli._app import CliContext, json_option, echo_json


@click.command()
@click.argument("model")
@click.option("--group", default="default", show_default=True, help="Consumer group.")
@json_option
@click.pass_obj
def status(obj: CliContext, model: str, group: str, as_json: bool) -> None:
    """Show the worker fleet learning MODEL: lag per partition, owners, workers, drift.

    Exit status: 0 healthy; 3 unhealthy, with the reasons on stderr: feedback waits on a partition
    that no live worker holds (none running, or a lease not yet taken over).
    """
    from cstore.ops import fleet_status
    st = fleet_status(obj.store(), model, group)
    problems = unhealthy(st)
    if as_json:
        echo_json({**st, "healthy": not problems, "problems": problems})
    else:
        _print(st)
    for p in problems:
        click.echo(f"unhealthy: {p}", err=True)
    if problems:
        sys.exit(EXIT_UNHEALTHY)


EXIT_UNHEALTHY = 3


def unhealthy(st: dict[str, Any]) -> list[str]:
    """Why the fleet of ``st`` (:func:`cstore.ops.fleet_status`) is not learning what waits, if it is not."""
    stranded = [p["partition"] for p in st["partitions"] if p["lag_events"] and not p["owner"]]
    if stranded and not st["workers"]:
        return [f"{sum(p['lag_events'] for p in st['partitions'])} event(s) wait and no worker is alive: start "
                f"`cstore worker --model {st['model']}`"]
    if stranded:
        return [f"partition(s) {stranded} have waiting events and no owner (a lease expires within its TTL after "
                f"a worker died; if this lasts, check the workers' logs)"]
    return []


def _print(st: dict[str, Any]) -> None:
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
