"""``cstore local``: run a throw-away Apache Cassandra 5.0 cluster on this machine."""
from __future__ import annotations

import time
from pathlib import Path

import click

from cstore.cli import CliContext, echo_json, json_option


def _cluster(obj: CliContext, **kw):
    from cstore_dev.local import LocalCluster
    return LocalCluster(obj.config.local_dir, log=lambda m: click.echo(m, err=True), **kw)


@click.group()
def local() -> None:
    """Run a local Cassandra 5.0 (jars from Maven Central, Java 17) under .local/."""


@local.command()
@click.option("--nodes", "n_nodes", type=click.IntRange(1, 9), default=None,
              help="Number of nodes on 127.0.0.1..N (default 1, or the existing cluster's).")
@click.option("--heap", default=None, help="JVM heap per node, e.g. 1G or 768M [$CSTORE_HEAP, 1G].")
@click.option("--auth/--no-auth", default=None, help="PasswordAuthenticator + CassandraAuthorizer.")
@click.option("--tls", "tls_dir", type=click.Path(file_okay=False), default=None,
              help="Require TLS from clients, with the certificates in DIR (made by `cstore local certs DIR`).")
@click.option("--quick-start/--no-quick-start", default=None,
              help="C1-only JIT: faster (re)starts on a small machine, slower steady state; for throw-away "
                   "test clusters, not for benchmarks (default off, or the existing cluster's).")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for each node [240].")
@json_option
@click.pass_obj
def up(obj: CliContext, n_nodes: int | None, heap: str | None, auth: bool | None, tls_dir: str | None,
       quick_start: bool | None, timeout: float | None, as_json: bool) -> None:
    """Start the local cluster (idempotent: restarts only nodes that are down)."""
    t0 = time.monotonic()
    cluster = _cluster(obj, n_nodes=n_nodes, heap=heap, auth=auth, tls=tls_dir, quick_start=quick_start)
    statuses = cluster.up(**({"timeout": timeout} if timeout else {}))
    if as_json:
        echo_json({"nodes": [{"name": s.name, "address": s.address, "pid": s.pid, "state": s.state, "log": s.log}
                             for s in statuses], "contact_points": list(cluster.contact_points),
                   "seconds": round(time.monotonic() - t0, 1)})
        return
    for s in statuses:
        click.echo(f"{s.name}  {s.address}:9042  pid {s.pid}  {s.state}  log {s.log}")
    click.echo(f"ready in {time.monotonic() - t0:.1f}s; contact points: {','.join(cluster.contact_points)}")


@local.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--nodes", "n_nodes", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Node addresses to put in the node certificate (127.0.0.1..N).")
def certs(directory: str, n_nodes: int) -> None:
    """Generate a throw-away CA, node keystore and client certificate into DIRECTORY (development only)."""
    from cstore_dev.local.certs import generate
    out = generate(directory, [f"127.0.0.{i}" for i in range(1, n_nodes + 1)])
    click.echo(f"TLS material in {out}: start with `cstore local up --tls {out}`, then connect with "
               f"CSTORE_SSL_CA={out}/ca.pem CSTORE_SSL_CERT={out}/client.pem CSTORE_SSL_KEY={out}/client-key.pem")


@local.command()
@json_option
@click.pass_obj
def status(obj: CliContext, as_json: bool) -> None:
    """Show each node's address, pid and state."""
    statuses = _cluster(obj).status()
    if as_json:
        echo_json([{"name": s.name, "address": s.address, "pid": s.pid, "state": s.state, "log": s.log}
                   for s in statuses])
        return
    if not statuses:
        click.echo("no local cluster")
    for s in statuses:
        click.echo(f"{s.name}  {s.address}:9042  pid {s.pid or '-'}  {s.state}")


@local.command()
@click.option("--purge", is_flag=True, help="Also delete the nodes' data and logs.")
@click.pass_obj
def down(obj: CliContext, purge: bool) -> None:
    """Stop the processes that `up` started (by pid) and wait for them to exit."""
    n = _cluster(obj).down(purge=purge)
    click.echo(f"stopped {n} node(s)" + (" and removed their data" if purge else ""))


@local.command()
@click.argument("node", required=False, default="node1")
@click.option("-n", "--lines", type=int, default=50, help="How many lines from the end.")
@click.pass_obj
def logs(obj: CliContext, node: str, lines: int) -> None:
    """Print the end of a node's system.log (NODE: node1, 2, or 127.0.0.2)."""
    spec = _cluster(obj).node(node)
    path = Path(spec.system_log)
    if not path.exists():
        raise click.ClickException(f"{path} does not exist yet; has {spec.name} ever started?")
    click.echo(f"==> {path} <==", err=True)
    click.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


