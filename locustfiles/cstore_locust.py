"""Shared pieces of the cstore Locust files: options, one cstore client per Locust process, the
reporting user class, and worker processes for the mixed workload.

Every cstore call a user makes is reported to Locust as a request (``request_type="cstore"``, its
name, response time in ms, and the exception if it failed), so Locust's statistics, failure counts,
percentiles and CSV output cover cstore operations exactly as they would HTTP calls.

Configuration: the connection comes from ``CSTORE_*`` variables / ``cstore.toml`` as everywhere in
cstore; the Locust-specific settings are Locust options (also settable as ``LOCUST_*`` variables):

* ``--cstore-model`` / ``LOCUST_CSTORE_MODEL`` (default ``fraud``): created as an FTRL learner if missing;
* ``--cstore-workers`` / ``LOCUST_CSTORE_WORKERS`` (default 1): worker processes ``mixed.py`` starts for
  the run (0 when a fleet already runs, e.g. the Helm chart's Deployment);
* ``--cstore-feedback-batch`` / ``LOCUST_CSTORE_FEEDBACK_BATCH`` (default 100): events per feedback request.
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from collections.abc import Callable

from locust import User, between, events
from locust.runners import MasterRunner, WorkerRunner

from cstore import Client, FeedbackWriter
from cstore.errors import FeedbackWriteFailed, UnknownModel
from cstore_dev.fraudsim import FraudStream

# Locust runs users as gevent greenlets with the standard library monkey-patched. The driver's libev
# reactor (cstore's default) runs its loop in C on a thread, which under gevent would block the hub;
# the driver's gevent reactor is the one that cooperates: every connection made here uses it.
REACTOR = {"reactor": "gevent"}

log = logging.getLogger("cstore.locust")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("cstore")
    group.add_argument("--cstore-model", env_var="LOCUST_CSTORE_MODEL", default="fraud",
                       help="Model to score and to send feedback to (created as an FTRL learner if missing).")
    group.add_argument("--cstore-workers", env_var="LOCUST_CSTORE_WORKERS", type=int, default=1,
                       help="Worker processes mixed.py runs during the test (0: a fleet already runs).")
    group.add_argument("--cstore-feedback-batch", env_var="LOCUST_CSTORE_FEEDBACK_BATCH", type=int, default=100,
                       help="Feedback events per request of the feedback users (sent, then flushed).")


class Shared:
    """What the users of one Locust process share, as the threads of one scoring service would:
    one :class:`~cstore.Client` (connection, cached model, prediction log) and one
    buffered feedback writer."""

    def __init__(self, model: str) -> None:
        self.model_name = model
        self.client = Client(**REACTOR)
        ensure_model(self.client, model)
        self.model = self.client.model(model)
        self.writer = FeedbackWriter(self.client.store, model)
        # Transactions scored recently (time, entity id, label): the mixed workload's delayed labels.
        self.scored: collections.deque[tuple[float, str, int]] = collections.deque(maxlen=10_000)

    def close(self) -> None:
        try:
            self.writer.close()
        except FeedbackWriteFailed as exc:
            # Only events of requests cut off by the end of the test can be left: every completed
            # feedback request flushed (and a failed flush is reported as a failed request). Those
            # events were never acknowledged to anyone, so this is a warning, not a test failure.
            log.warning("feedback left unwritten at shutdown (never acknowledged): %s", exc)
        finally:
            self.client.close()


_shared: Shared | None = None
_shared_lock = threading.Lock()


def shared(environment: Any) -> Shared:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Shared(environment.parsed_options.cstore_model)
        return _shared


def ensure_model(client: Client, name: str) -> None:
    """Create ``name`` as a learner unless it exists (another process may win the race: fine)."""
    from cstore.training import create_learner
    try:
        client.store.model_info(name)
    except UnknownModel:
        try:
            create_learner(client.store, name, n_features=1 << 18)
            log.info("created learner model %r for the load test", name)
        except Exception:
            client.store.model_info(name, refresh=True)  # created concurrently; raise if truly absent


@events.test_start.add_listener
def _open_shared(environment: Any, **_: Any) -> None:
    """Connect and load the model before users start (a master runs no users and needs none)."""
    if not isinstance(environment.runner, MasterRunner):
        shared(environment)


@events.test_stop.add_listener
def _close_shared(environment: Any, **_: Any) -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


class CstoreUser(User):
    """A Locust user whose tasks call cstore; :meth:`call` reports each call as a Locust request."""

    abstract = True
    wait_time = between(0.005, 0.05)

    def on_start(self) -> None:
        self.cs = shared(self.environment)
        self.stream = FraudStream(seed=id(self) % 2**32)
        self.prefix = f"lc{os.getpid()}-{id(self) % 10**8}"

    def call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        exc: BaseException | None = None
        result = None
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # reported to Locust as a failure; the user goes on
            exc = e
        self.environment.events.request.fire(request_type="cstore", name=name,
                                             response_time=(time.perf_counter() - start) * 1000.0,
                                             response_length=0, exception=exc, context={})
        return result


# -- worker processes for the mixed workload ---------------------------------------------------------
_workers: list[subprocess.Popen] = []


def start_workers(environment: Any) -> None:
    """Start ``--cstore-workers`` ``cstore worker`` processes (on the master / local runner only)."""
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    n = int(opts.cstore_workers)
    if n <= 0:
        return
    if _shared is not None:  # this process runs users too: its client already ensured the model
        ensure_model(_shared.client, opts.cstore_model)
    else:
        client = Client(**REACTOR)
        try:
            ensure_model(client, opts.cstore_model)  # workers refuse an unknown model
        finally:
            client.close()
    for _ in range(n):
        _workers.append(subprocess.Popen([sys.executable, "-c", "from cstore.cli import main; main()", "worker",
                                          "--model", opts.cstore_model, "--batch-size", "500", "--max-wait-ms", "100",
                                          "--lease-ttl", "10"],
                                         stdout=subprocess.DEVNULL))  # its final stats line would mix with --json
    log.info("started %d cstore worker process(es) for %r", n, opts.cstore_model)


def check_workers() -> None:
    """Raise if a worker process this run started has exited (the mixed workload needs them)."""
    for p in _workers:
        if p.poll() is not None:
            raise RuntimeError(f"cstore worker process {p.pid} exited with status {p.returncode}")


def stop_workers(**_: Any) -> None:
    """SIGTERM: a worker finishes its batch, releases its leases and exits."""
    while _workers:
        p = _workers.pop()
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
