"""``cstore model alias|aliases|promote|audit|metrics``: the lifecycle of a model under review.

Mounted on the ``cstore model`` group (see ``_model.py``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cstore.cli._app import CliContext, echo_json, json_option
from cstore.errors import ValidationError
from cstore.store import KEEP_GUARD

_GUARD_HELP = ("Watch the alias: max_regression=NATS,min_labels=N,window=N,kinds=K1+K2,on_drift=true|false "
               "(any subset; defaults 0.05, 500, 5000, explicit, false). The head is compared with the version "
               "the alias was promoted to on the same labels of the trusted kinds; when worse by "
               "max_regression (or on a drift alarm with on_drift), workers pin the alias back to it.")


def _parse_guard(text: str | None, no_guard: bool) -> Any:
    if no_guard:
        if text:
            raise click.UsageError("--guard and --no-guard exclude each other")
        return None
    if not text:
        return KEEP_GUARD
    rule: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValidationError(f"--guard takes KEY=VALUE pairs separated by commas, got {part!r}")
        key = key.strip()
        if key == "kinds":
            rule[key] = [k for k in value.split("+") if k]
            continue
        if key == "on_drift":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValidationError(f"--guard on_drift={value!r}: use true or false")
            rule[key] = value.lower() in ("true", "1", "yes")
            continue
        try:
            rule[key] = float(value) if key == "max_regression" else int(value)
        except ValueError:
            raise ValidationError(f"--guard {key}={value!r} is not a number") from None
    return rule


def _report(as_json: bool, payload: dict[str, Any], key: str, empty: str, echo: Callable[[Any], None]) -> None:
    """``--json``: the payload; else one line per item of ``payload[key]`` (or ``empty`` when none)."""
    if as_json:
        echo_json(payload)
        return
    if not payload[key]:
        click.echo(empty)
    for item in payload[key]:
        echo(item)


def _echo_alias(a: dict[str, Any]) -> None:
    guard = a["guard"]
    watched = (f"  guard: max_regression={guard['max_regression']} min_labels={guard['min_labels']} "
               f"window={guard['window']}, baseline {a['baseline']}, {a['guard_state']}") if guard else ""
    click.echo(f"{a['model']}@{a['alias']} -> {a['target']}  (rev {a['rev']}, {a['moved_at']}, {a['moved_by']}: "
               f"{a['reason']}){watched}")


@click.command("alias")
@click.argument("name")
@click.argument("alias")
@click.option("--to", "target", required=True, metavar="VERSION|head",
              help="A snapshot version (see `cstore model versions`) or 'head' to follow every update.")
@click.option("--reason", required=True, help="Why (recorded in the audit trail).")
@click.option("--guard", help=_GUARD_HELP)
@click.option("--no-guard", is_flag=True, help="Remove the alias's guard.")
@click.option("--force", is_flag=True, help="Move even though the alias's guard is failing.")
@click.option("--actor", help="Who is acting, for the audit trail (default: user@host).")
@json_option
@click.pass_obj
def alias_cmd(obj: CliContext, name: str, alias: str, target: str, reason: str, guard: str | None, no_guard: bool,
              force: bool, actor: str | None, as_json: bool) -> None:
    """Create or move NAME@ALIAS. Scorers of `NAME@ALIAS` follow within their refresh interval."""
    a = obj.store().set_alias(name, alias, target, reason=reason, guard=_parse_guard(guard, no_guard), force=force,
                              actor=actor).to_dict()
    echo_json(a) if as_json else _echo_alias(a)


@click.command("promote")
@click.argument("name")
@click.argument("alias")
@click.option("--to", "target", default="head", show_default=True, metavar="VERSION|head",
              help="Where to move the alias.")
@click.option("--reason", required=True, help="The review's conclusion (recorded in the audit trail).")
@click.option("--force", is_flag=True, help="Promote although the guard fails (the reason says why).")
@click.option("--actor", help="Who reviewed, for the audit trail (default: user@host).")
@json_option
@click.pass_obj
def promote_cmd(obj: CliContext, name: str, alias: str, target: str, reason: str, force: bool, actor: str | None,
                as_json: bool) -> None:
    """Move an existing alias forward after review. Refused (exit 1, nothing moved) while its guard fails,
    unless --force; a guarded alias gets a fresh baseline snapshot of what it now points to."""
    a = obj.store().promote(name, alias, target, reason=reason, force=force, actor=actor).to_dict()
    echo_json(a) if as_json else _echo_alias(a)


@click.command("aliases")
@click.argument("name")
@json_option
@click.pass_obj
def aliases_cmd(obj: CliContext, name: str, as_json: bool) -> None:
    """List NAME's aliases: what each points to, its guard and the guard's state."""
    _report(as_json, {"model": name, "aliases": [a.to_dict() for a in obj.store().aliases(name)]}, "aliases",
            f"{name} has no aliases (create one with `cstore model alias {name} champion --to head --reason TEXT`)",
            _echo_alias)


@click.command("audit")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Newest N entries.")
@json_option
@click.pass_obj
def audit_cmd(obj: CliContext, name: str, limit: int, as_json: bool) -> None:
    """Who did what to NAME (create, drop, snapshot, rollback, alias moves, promotions, guard actions),
    newest first; kept after the model is dropped. NAME '*' lists keyspace-wide actions (roles)."""
    def echo(e: dict[str, Any]) -> None:
        change = f"{e['from'] or '-'} -> {e['to'] or '-'}"
        role = f" [{e['role']}]" if e["role"] else ""
        click.echo(f"{e['at']}  {e['action']:<9} {change:<28} {e['actor']}{role}: {e['reason'] or ''}")
    _report(as_json, {"model": name, "entries": obj.store().audit(name, limit=limit)}, "entries",
            f"no audit entries for {name!r}", echo)


@click.command("metrics")
@click.argument("name")
@json_option
@click.pass_obj
def metrics_cmd(obj: CliContext, name: str, as_json: bool) -> None:
    """Online metrics of NAME's guarded aliases: the head against each baseline on the same recent labels
    (log loss, AUC, labels), summed over the workers, and whether the guard fails."""
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    def echo(m: dict[str, Any]) -> None:
        click.echo(f"{name}@{m['alias']} -> {m['target']} (baseline {m['baseline']}, {m['guard_state']}): "
                   f"{m['labels']} labels from {m['workers']} workers; log loss head {f(m['head_log_loss'])} vs "
                   f"baseline {f(m['base_log_loss'])}, AUC head {f(m['head_auc'])} vs {f(m['base_auc'])}"
                   f"{'  FAILING' if m['failing'] else ''}")
    store = obj.store()
    _report(as_json, {"model": name, "aliases": store.governance.metrics(store.model_info(name))}, "aliases",
            f"{name} has no guarded alias (add one with --guard on `cstore model alias`)", echo)


COMMANDS = [alias_cmd, promote_cmd, aliases_cmd, audit_cmd, metrics_cmd]
