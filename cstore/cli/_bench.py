"""``cstore bench``: benchmarks that run cstore and its baseline side by side, in the same run."""
from __future__ import annotations

import json

import click

from cstore.bench import ORDER, BenchContext, run_scenarios
from cstore.cli._app import CliContext


@click.command()
@click.argument("scenario", type=click.Choice(["all", *ORDER]))
@click.option("--quick", is_flag=True, help="Short runs: `all` in under 3 minutes on a 2-core machine.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure.")
@click.option("--duration", type=click.FloatRange(1, 3600), default=20.0, show_default=True,
              help="Seconds per measured phase (ignored with --quick).")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Worker processes of the latency scenario's model.")
@click.option("--warmup", "warmup_s", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="Seconds of the latency scenario's load run before it measures (at most 5 with --quick): a "
                   "node started minutes ago still compiles its hot paths. 0 measures from the first second.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Requests in flight for the driver-level baselines and load generators.")
@click.pass_obj
def bench(obj: CliContext, scenario: str, quick: bool, as_json: bool, duration: float, workers: int,
          warmup_s: float, concurrency: int) -> None:
    """Measure SCENARIO against its baseline (ingest vs raw-driver ceiling, apply vs the naive
    one-row-per-scalar design, e2e freshness, score latency; latency: critical and bulk label
    freshness under 5,000 bulk events/s, atomic updates against the whole-chunk path and the
    brief's PostgreSQL design, which it starts and stops itself) and print both and their ratio.

    Also reports the peak resident memory of this process and of the local Cassandra node.
    """
    names = list(ORDER) if scenario == "all" else [scenario]
    log = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    ctx = BenchContext(obj.config, quick=quick, duration=duration, concurrency=concurrency, workers=workers,
                       warmup_s=warmup_s, log=log)
    result = run_scenarios(names, ctx)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        # Distributions (lists) are for --json and the plots; the summary shows their percentiles.
        click.echo("\n" + "\n".join(f"{k:32} {v}" for k, v in sorted(result.items())
                                      if k != "machine" and not isinstance(v, list)))


COMMANDS = [bench]
