"""``cstore model …``, ``cstore history``, ``cstore stats``: manage models and look at their updates."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import numpy as np

from cstore.cli._app import CliContext, json_option, echo_json


def _parse_param(text: str) -> tuple[str, tuple[int, ...]]:
    """``weights=1048576`` or ``emb=1000x16``."""
    name, sep, shape = text.partition("=")
    if not sep:
        raise click.BadParameter(f"expected NAME=SHAPE such as weights=1048576 or emb=1000x16, got {text!r}")
    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"shape {shape!r} must be integers joined by 'x'") from None
    return name, dims


def _when(text: str | None) -> float | None:
    """ISO time, epoch seconds, or a relative '15m' / '2h' / '1d' ago."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC).timestamp() - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use ISO time (2026-11-26T10:00), epoch seconds, or 15m/2h/1d") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@click.group()
def model() -> None:
    """Create, inspect, update, snapshot, roll back and govern models (aliases, promotion, audit)."""


@model.command()
@click.argument("name")
@click.option("--param", "params", multiple=True, required=True, metavar="NAME=SHAPE",
              help="A parameter and its shape, e.g. weights=1048576 or emb=1000x16 (repeatable).")
@click.option("--chunk-size", type=int, default=16384, show_default=True, help="Elements per chunk.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--init", type=click.Choice(["zeros", "normal"]), default="zeros", show_default=True)
@click.option("--metadata", help="JSON object stored with the model.")
@json_option
@click.pass_obj
def create(obj: CliContext, name, params, chunk_size, dtype, init, metadata, as_json) -> None:
    """Create model NAME with the given parameters."""
    try:
        meta = json.loads(metadata) if metadata else None
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--metadata") from None
    shapes = dict(_parse_param(p) for p in params)
    info = obj.store().create_model(name, shapes, chunk_size=chunk_size, dtype=dtype, init=init, metadata=meta)
    if as_json:
        echo_json(info.to_dict())
    else:
        chunks = sum(info.n_chunks(p) for p in info.params)
        click.echo(f"created {name} ({', '.join(f'{p}{list(s)}' for p, s in info.params.items())}; "
                   f"{chunks} chunks of {chunk_size} {dtype})")


@model.command("list")
@json_option
@click.pass_obj
def list_cmd(obj: CliContext, as_json: bool) -> None:
    """List models."""
    models = obj.store().list_models()
    if as_json:
        echo_json([m.to_dict() for m in models])
        return
    if not models:
        click.echo("no models (create one with `cstore model create NAME --param weights=1024`)")
    for m in models:
        click.echo(f"{m.name:24} {', '.join(f'{p}{list(s)}' for p, s in m.params.items())}  {m.dtype}")


@model.command()
@click.argument("name")
@json_option
@click.pass_obj
def show(obj: CliContext, name: str, as_json: bool) -> None:
    """Show a model: parameters, chunks, head version, snapshots."""
    d = obj.store().describe(name)
    if as_json:
        echo_json(d)
        return
    click.echo(f"{d['name']}  head version {d['head_version']}  chunk_size {d['chunk_size']}  {d['dtype']}")
    for p, shape in d["params"].items():
        click.echo(f"  {p:16} shape {shape}  {d['chunks'][p]} chunk(s)")
    click.echo(f"  snapshots: {', '.join(str(s['version']) for s in d['snapshots']) or 'none'}")


@model.command()
@click.argument("name")
@click.argument("param")
@click.option("--index", "indices", type=int, multiple=True, help="Sparse index (repeatable).")
@click.option("--value", "values", type=float, multiple=True, required=True, help="Value (repeatable).")
@click.option("--lr", type=float, default=1.0, show_default=True)
@click.option("--type", "update_type", type=click.Choice(["gradient", "direct", "batch", "federated"]),
              default="gradient", show_default=True)
@json_option
@click.pass_obj
def update(obj: CliContext, name, param, indices, values, lr, update_type, as_json) -> None:
    """Apply an update: new = old - lr * value at each --index (or set it with --type direct)."""
    vals = np.array(values)
    result = obj.store().apply_update(name, param, vals, indices=np.array(indices) if indices else None, lr=lr,
                                      update_type=update_type, source="manual")
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"committed chunks {result.chunks} ({result.coords} coordinates, {result.retries} retries)")


@model.command()
@click.argument("name")
@click.option("--confirm", help="Repeat the model name to confirm; without it nothing is deleted.")
@click.option("--reason", help="Why it is retired (recorded in its audit trail, which stays).")
@json_option
@click.pass_obj
def drop(obj: CliContext, name: str, confirm: str | None, reason: str | None, as_json: bool) -> None:
    """Delete a model and everything it owns in every table (needs --confirm NAME).

    Parameters, history, snapshots, stats, feedback, checkpoints, learner state, the prediction log,
    aliases and online metrics all go; the audit trail stays and records the drop. Stop the model's
    workers and scorers first. A drop cut short (a node down) is finished by running it again.
    """
    report = obj.store().drop_model(name, confirm=confirm, reason=reason)
    if as_json:
        echo_json({**report, "dropped": True, "incarnations": report["dropped"]})
    else:
        click.echo(f"dropped {name}: {report['partitions']} partitions deleted in "
                   f"{sum(1 for n in report['tables'].values() if n)} tables")


@model.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why this snapshot exists (stored as provenance).")
@json_option
@click.pass_obj
def snapshot(obj: CliContext, name: str, reason: str, as_json: bool) -> None:
    """Take an immutable snapshot of the current parameters."""
    version = obj.store().snapshot(name, reason=reason)
    echo_json({"model": name, "snapshot": version}) if as_json else click.echo(f"snapshot {version} of {name}")


@model.command()
@click.argument("name")
@json_option
@click.pass_obj
def versions(obj: CliContext, name: str, as_json: bool) -> None:
    """List snapshots with provenance, newest first."""
    store = obj.store()
    snaps = store.versions(name)
    if as_json:
        echo_json({"model": name, "head_version": store.head_version(name), "snapshots": snaps})
        return
    click.echo(f"{name}: head version {store.head_version(name)}")
    for s in snaps:
        click.echo(f"  {s['version']:>8}  {s['created_at']}  {s['created_by']}  {s['reason']}")


@model.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--reason", required=True, help="Why roll back (recorded in history).")
@json_option
@click.pass_obj
def rollback(obj: CliContext, name: str, version: int, reason: str, as_json: bool) -> None:
    """Write snapshot VERSION back as a new head version."""
    head = obj.store().rollback(name, version, reason=reason)
    echo_json({"model": name, "rolled_back_to": version, "head_version": head}) if as_json else \
        click.echo(f"{name} rolled back to snapshot {version}; new head version {head}")


@click.command()
@click.argument("name")
@click.option("--since", help="ISO time, epoch seconds or relative (15m, 2h, 1d). Default: the TTL window.")
@click.option("--until", help="Same formats as --since.")
@click.option("--param", help="Only this parameter.")
@click.option("--limit", type=int, default=50, show_default=True, help="Most recent N rows (0: all).")
@json_option
@click.pass_obj
def history(obj: CliContext, name, since, until, param, limit, as_json) -> None:
    """Committed chunk updates of model NAME, oldest first."""
    rows = obj.store().history(name, since=_when(since), until=_when(until), param=param)
    rows = rows[-limit:] if limit else rows
    if as_json:
        echo_json([r.to_dict() for r in rows])
        return
    for r in rows:
        d = r.to_dict()
        click.echo(f"{d['time']}  {d['param']}[{d['chunk']}] v{d['old_version']}→{d['new_version']}  "
                   f"{d['update_type']:9} lr={d['learning_rate']}  {d['source']}  {d['coords']} coords")


@click.command()
@click.argument("name")
@click.option("--since", default="1h", show_default=True, help="ISO time, epoch seconds or relative (15m, 2h).")
@json_option
@click.pass_obj
def stats(obj: CliContext, name: str, since: str, as_json: bool) -> None:
    """Update statistics per time bucket: updates, learning rate mean/std, conflicts, retries, bytes."""
    rows = obj.store().stats(name, since=_when(since))
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        when = datetime.fromtimestamp(r["bucket_start"], UTC).isoformat()
        lr = f"{r['lr_mean']:.4g}±{r['lr_std']:.2g}" if r["lr_mean"] is not None else "-"
        click.echo(f"{when}  updates {r['updates']}  chunks {r['chunk_commits']}  lr {lr}  conflicts "
                   f"{r['conflicts']}  retries {r['retries']}  overwrites {r['overwrites']}  "
                   f"bytes {r['bytes_written']}")


COMMANDS = [model, history, stats]
