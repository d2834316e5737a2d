"""The ``cstore`` command line. Every command reads configuration the same way:
flags > CSTORE_* environment > config file (--config, $CSTORE_CONFIG, ./cstore.toml) > defaults.
"""
from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import Any

import click

from cstore.backend import Backend, connect
from cstore.config import Config, load_config
from cstore.errors import CstoreError
from cstore.ops import LOG_FORMATS
from cstore.store import Store


class CliContext:
    """Lazily built configuration and connections shared by the sub-commands."""

    def __init__(self, overrides: dict[str, Any], config_file: str | None) -> None:
        self.overrides = overrides
        self.config_file = config_file
        self._config: Config | None = None
        self._store: Store | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.overrides, config_file=self.config_file)
        return self._config

    def store(self) -> Store:
        """A connected :class:`cstore.Store` (closed when the command ends)."""
        if self._store is None:
            self._store = Store.from_config(self.config)
            click.get_current_context().call_on_close(self._store.close)
        return self._store

    def backend(self) -> Backend:
        """A connection outside any keyspace (schema and role commands; closed when the command ends)."""
        backend = connect(self.config)
        click.get_current_context().call_on_close(backend.close)
        return backend


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


class _Group(click.Group):
    """Turns cstore errors into one clear line and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CstoreError as exc:
            if ctx.meta.get("cstore.verbose", 0):  # -v: where it came from, for a bug report
                traceback.print_exc(file=sys.stderr)
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file (default: $CSTORE_CONFIG or ./cstore.toml).")
@click.option("--contact-points", help="Comma-separated Cassandra addresses [$CSTORE_CONTACT_POINTS].")
@click.option("--port", type=int, help="CQL port [$CSTORE_PORT, 9042].")
@click.option("--keyspace", help="Keyspace [$CSTORE_KEYSPACE, cstore].")
@click.option("--local-dc", help="Local data centre for routing [$CSTORE_LOCAL_DC].")
@click.option("--username", help="Cassandra user [$CSTORE_USERNAME].")
@click.option("--profile", help="Consistency profile: strong, local, eventual, all or custom [$CSTORE_PROFILE].")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="cstore")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: int, **overrides: Any) -> None:
    """cstore: an online-learning update store on Apache Cassandra.

    Models are chunked numpy arrays with versioned compare-and-set updates, a replayable
    history, snapshots and rollback; feedback flows to a worker fleet that learns online.
    The password comes only from $CSTORE_PASSWORD or the config file, never from a flag.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:  # the driver logs its connection failures with a traceback; ours is one clear line
        logging.getLogger("cassandra").setLevel(logging.CRITICAL if verbose == 0 else logging.ERROR)
    ctx.meta["cstore.verbose"] = verbose
    ctx.obj = CliContext({k: v for k, v in overrides.items() if v is not None}, config_file)


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: the output is always one JSON object.")
@click.pass_obj
def config_cmd(obj: CliContext, as_json: bool) -> None:
    """Show the effective configuration and where each value came from (password hidden), as JSON."""
    cfg = obj.config
    echo_json({"config": cfg.redacted(), "source": dict(cfg.source)})


def json_option(func: Any) -> Any:
    """The ``--json`` flag of every command that reports: one JSON object on stdout instead of text."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object (stdout) instead of text.")(func)


def log_format_option(func: Any) -> Any:
    """The ``--log-format text|json`` option ($CSTORE_LOG_FORMAT), for long-running commands."""
    return click.option("--log-format", type=click.Choice(LOG_FORMATS), envvar="CSTORE_LOG_FORMAT",
                        default="text", show_default=True,
                        help="Log lines as text or as one JSON object per line [$CSTORE_LOG_FORMAT].")(func)
