"""``cstore worker`` (the learning fleet) and ``cstore model create-learner``.

``create-learner`` is mounted on the ``model`` group of ``cstore/cli/_model.py`` so that it
sits next to ``model create``; ``cli._COMMAND_MODULES`` loads model_cmd first.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import click

from cstore.cli._app import CliContext, json_option, echo_json, log_format_option
from cstore.cli._model import model
from cstore.ops import setup_logging

log = logging.getLogger("cstore.worker")
_GLOBAL_FLAGS = {"contact_points": "--contact-points", "port": "--port", "keyspace": "--keyspace",
                 "local_dc": "--local-dc", "username": "--username", "profile": "--profile"}


def _power_of_two(text: str) -> int:
    """``2^20``, ``2**20`` or ``1048576``."""
    t = text.replace("**", "^")
    try:
        if "^" in t:
            base, exp = t.split("^", 1)
            return int(base) ** int(exp)
        return int(t)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use an integer such as 1048576 or 2^20") from None


def _pairs(values: tuple[str, ...], cast, what: str) -> dict | None:
    out = {}
    for v in values:
        k, sep, x = v.partition("=")
        if not sep:
            raise click.BadParameter(f"{v!r}: expected KIND={what}")
        try:
            out[k] = cast(x)
        except ValueError:
            raise click.BadParameter(f"{v!r}: {x!r} is not a valid {what}") from None
    return out or None


@model.command("create-learner")
@click.argument("name")
@click.option("--features", default="2^20", show_default=True, help="Hashed feature space (power of two).")
@click.option("--optimizer", type=click.Choice(["ftrl", "adagrad", "sgd"]), default="ftrl", show_default=True)
@click.option("--alpha", type=float, default=0.3, show_default=True, help="FTRL alpha.")
@click.option("--beta", type=float, default=1.0, show_default=True, help="FTRL beta.")
@click.option("--l1", type=float, default=0.0, show_default=True)
@click.option("--l2", type=float, default=0.0, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True, help="AdaGrad/SGD learning rate.")
@click.option("--hash-seed", type=int, default=0, show_default=True)
@click.option("--chunk-size", type=int, default=262144, show_default=True,
              help="Weights per chunk (one compare-and-set each) [cstore.training.LEARNER_CHUNK_SIZE].")
@click.option("--partitions", type=int, help="Feedback partitions P [config feedback_partitions].")
@click.option("--bucket-s", type=int, help="Feedback time bucket in seconds [config feedback_bucket_s].")
@click.option("--ttl-s", type=int, help="Feedback TTL in seconds [config feedback_ttl_s].")
@click.option("--lateness-s", type=int, help="Late-segment window in seconds [config feedback_lateness_s].")
@click.option("--half-life-s", type=float, help="Down-weight feedback by age with this half-life.")
@click.option("--window-s", type=float, help="Learn only from feedback at most this many seconds old (event time).")
@click.option("--kind-weight", "kind_weights", multiple=True, metavar="KIND=W",
              help="Sample weight of a kind (all four kinds if given).")
@click.option("--priority", "priorities", multiple=True, metavar="KIND=LANE",
              help="Lane of a kind, 0 learned first (all four kinds if given).")
@click.option("--drift", type=click.Choice(["page_hinkley", "adwin", "none"]), default="page_hinkley",
              show_default=True)
@click.option("--drift-response", type=click.Choice(["boost", "snapshot", "both", "none"]), default="boost",
              show_default=True, help="On drift: raise the learning rate, snapshot first, both, or only record.")
@click.option("--update", type=click.Choice(["per_event", "summed"]), default="per_event", show_default=True,
              help="Learn a micro-batch event by event, or in one summed-gradient step (learns worse).")
@json_option
@click.pass_obj
def create_learner_cmd(obj: CliContext, name, features, optimizer, alpha, beta, l1, l2, lr, hash_seed, chunk_size,
                       partitions, bucket_s, ttl_s, lateness_s, half_life_s, window_s, kind_weights, priorities, drift,
                       drift_response, update, as_json) -> None:
    """Create learner model NAME: hashed logistic regression with weights and optimizer state stored."""
    from cstore.training import create_learner
    info = create_learner(obj.store(), name, n_features=_power_of_two(features), optimizer=optimizer, alpha=alpha,
                          beta=beta, l1=l1, l2=l2, lr=lr, hash_seed=hash_seed, chunk_size=chunk_size,
                          partitions=partitions, bucket_s=bucket_s, ttl_s=ttl_s, lateness_s=lateness_s,
                          half_life_s=half_life_s, window_s=window_s,
                          kind_weights=_pairs(kind_weights, float, "weight"),
                          priorities=_pairs(priorities, int, "lane"), drift=drift, drift_response=drift_response,
                          update=update)
    if as_json:
        echo_json(info.to_dict())
    else:
        click.echo(f"created learner {name} ({optimizer}, {_power_of_two(features)} features, parameters "
                   f"{', '.join(info.params)})")


@click.command()
@click.option("--model", "models", multiple=True, required=True, help="Model to learn (repeatable: an ensemble).")
@click.option("--group", default="default", show_default=True,
              help="Consumer group (with --feedback-of: the model's own name unless given).")
@click.option("--feedback-of", metavar="MODEL",
              help="Learn MODEL's feedback instead of the model's own: a challenger beside its champion, in a "
                   "consumer group of its own, every event learned by both.")
@click.option("--processes", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes per model (supervised children).")
@click.option("--batch-size", type=click.IntRange(1), default=5000, show_default=True,
              help="Most events per bulk batch (under load a batch is what arrived during the last one).")
@click.option("--min-batch", type=click.IntRange(1), help="Events that start a batch at once [min(100, batch size)].")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=200.0, show_default=True,
              help="Longest wait for --min-batch events before a smaller batch goes.")
@click.option("--lease-ttl", type=click.FloatRange(2), default=15.0, show_default=True,
              help="Partition lease TTL in seconds (takeover time after a crash).")
@click.option("--heartbeat", type=click.FloatRange(0.1), help="Lease renewal interval [lease TTL / 3].")
@click.option("--poll-ms", type=click.FloatRange(1), default=100.0, show_default=True)
@click.option("--critical/--no-critical", default=True, show_default=True,
              help="Also serve the model's critical partition (one worker of the group holds it).")
@click.option("--critical-poll-ms", type=click.FloatRange(0.5), default=5.0, show_default=True,
              help="How often the critical lane polls its partition.")
@click.option("--max-batches", type=click.IntRange(1), help="Exit after this many batches.")
@click.option("--until-idle", is_flag=True, help="Exit once a poll finds nothing new to learn (batch jobs).")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve /metrics, /healthz and /readyz on this port (0: any free port; default: off).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Address for the metrics server.")
@click.option("--stuck-after", type=click.FloatRange(10), default=300.0, show_default=True,
              help="/healthz fails (503) when the learning loop has not advanced for this many seconds.")
@log_format_option
@click.pass_obj
def worker(obj: CliContext, models, group, feedback_of, processes, batch_size, min_batch, max_wait_ms, lease_ttl,
           heartbeat, poll_ms, critical, critical_poll_ms, max_batches, until_idle, metrics_port, metrics_host,
           stuck_after, log_format) -> None:
    """Learn from feedback: lease partitions, learn micro-batches, checkpoint. SIGTERM exits cleanly.

    With --metrics-port the worker exposes Prometheus metrics (events learned, commits, conflicts,
    retries, per-partition lag, commit latency, drift, lease changes), /healthz (alive) and /readyz
    (connected and holding leases or waiting for them; unready while draining or when no node answers);
    /healthz fails once the learning loop has not advanced for --stuck-after seconds.
    """
    redactor = setup_logging(log_format)
    redactor.add_secret(obj.config.password)
    opts = {"group": group, "batch_size": batch_size, "min_batch": min_batch, "max_wait_ms": max_wait_ms,
            "lease_ttl_s": lease_ttl, "heartbeat_s": heartbeat, "poll_ms": poll_ms, "critical": critical,
            "critical_poll_ms": critical_poll_ms, "until_idle": until_idle, "feedback_of": feedback_of}
    if processes > 1 or len(models) > 1:
        sys.exit(_supervise(obj, models, processes, opts, max_batches, metrics_port, metrics_host, log_format))
    from cstore.ops import Readiness, WorkerMetrics, WorkerObserver, cluster_check, multiprocess_dir, serve
    from cstore.training import Worker
    until_idle = opts.pop("until_idle")
    store = obj.store()
    w = Worker(store, models[0], **opts)
    observer = server = None
    if metrics_port is not None or multiprocess_dir():
        readiness = Readiness()
        readiness.add_check(cluster_check(store.backend))
        metrics = WorkerMetrics(models[0])
        observer = WorkerObserver(w, metrics, readiness).start()
        if metrics_port is not None:  # a supervised child reports through its supervisor's server instead
            server = serve(metrics_port, metrics_host, readiness, registry=metrics.registry,
                           live_check=lambda: (w.loop_age_s < stuck_after,
                                               f"learning loop last advanced {w.loop_age_s:.0f} s ago"))
            click.echo(f"metrics on http://{metrics_host}:{server.port}/metrics", err=True)

    def stop(*args) -> None:
        if observer is not None:
            observer.stop()
        w.stop(*args)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker %s learning %s from the feedback of %s (group %s)", w.worker_id, models[0], w.source,
             w.opts.group)
    try:
        stats = w.run(max_batches=max_batches, until_idle=until_idle)
    finally:
        if server is not None:
            server.close()
    click.echo(json.dumps({"worker": w.worker_id, "model": models[0], **stats}))


def _child_args(obj: CliContext, model_name: str, opts: dict, max_batches: int | None,
                log_format: str = "text") -> list[str]:
    args = [sys.executable, "-c", "from cstore.cli import main; main()"]
    if obj.config_file:
        args += ["--config", obj.config_file]
    for key, flag in _GLOBAL_FLAGS.items():
        if obj.overrides.get(key) is not None:
            args += [flag, str(obj.overrides[key])]
    args += ["worker", "--model", model_name, "--group", opts["group"], "--batch-size", str(opts["batch_size"]),
             "--max-wait-ms", str(opts["max_wait_ms"]), "--lease-ttl", str(opts["lease_ttl_s"]),
             "--poll-ms", str(opts["poll_ms"]), "--critical-poll-ms", str(opts["critical_poll_ms"]),
             "--critical" if opts["critical"] else "--no-critical", "--log-format", log_format]
    if opts["min_batch"]:
        args += ["--min-batch", str(opts["min_batch"])]
    if opts["heartbeat_s"]:
        args += ["--heartbeat", str(opts["heartbeat_s"])]
    if max_batches:
        args += ["--max-batches", str(max_batches)]
    if opts["until_idle"]:
        args += ["--until-idle"]
    if opts.get("feedback_of"):
        args += ["--feedback-of", opts["feedback_of"]]
    return args


def _supervise(obj: CliContext, models, processes: int, opts: dict, max_batches: int | None,
               metrics_port: int | None = None, metrics_host: str = "0.0.0.0", log_format: str = "text") -> int:
    """Run K children per model; restart the ones that crash; forward SIGTERM; exit when all are done.

    With a metrics port, the children write their metrics to a shared directory and this process
    serves the sum (prometheus_client's multi-process mode)."""
    from cstore.ops import Readiness, enable_multiprocess, mark_process_dead, multiprocess_registry, serve
    server, readiness = None, Readiness()
    if metrics_port is not None:
        import tempfile
        enable_multiprocess(tempfile.mkdtemp(prefix="cstore-metrics-"))
        server = serve(metrics_port, metrics_host, readiness, registry=multiprocess_registry())
        click.echo(f"metrics on http://{metrics_host}:{server.port}/metrics", err=True)
    specs = [(m, k) for m in models for k in range(processes)]
    child_args = lambda m: _child_args(obj, m, opts, max_batches, log_format)  # noqa: E731
    children = {spec: subprocess.Popen(child_args(spec[0])) for spec in specs}
    readiness.set_ready(f"{len(children)} worker process(es) running")
    stopping = False

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        readiness.set_unready("stopping: children are finishing their batches")
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes: dict = {}
    while len(codes) < len(children):
        for spec, proc in list(children.items()):
            if spec in codes or proc.poll() is None:
                continue
            if proc.returncode != 0 and not stopping and not max_batches and not opts["until_idle"]:
                log.warning("worker %s #%d exited with %d; restarting it", spec[0], spec[1], proc.returncode)
                if server is not None:
                    mark_process_dead(proc.pid)
                time.sleep(1.0)
                children[spec] = subprocess.Popen(child_args(spec[0]))
            else:
                codes[spec] = proc.returncode
        time.sleep(0.2)
    if server is not None:
        server.close()
    return max(abs(c) for c in codes.values()) if codes else 0


COMMANDS = [worker]
