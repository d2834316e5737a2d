"""The health endpoints: ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread.

``/healthz`` answers 200 while the process runs and its ``live_check`` passes (a worker: its loop
advanced within ``--stuck-after`` seconds), 503 otherwise, so Kubernetes restarts a stuck process;
``/readyz`` answers
200 when ``ready_check()`` returns ``(True, reason)`` and 503 with the reason otherwise, so
Kubernetes stops routing to, and counting on, a pod that lost Cassandra or is draining.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from cstore.backend import Backend
from cstore.ops._metrics import DEFAULT_PORT

__all__ = ["MetricsServer", "ReadyCheck", "Readiness", "cluster_check", "serve"]

log = logging.getLogger("cstore.metrics")

ReadyCheck = Callable[[], "tuple[bool, str]"]


class Readiness:
    """A thread-safe readiness flag with a reason, plus optional extra checks; usable directly
    as the ``ready_check`` of :func:`serve`.

    Ready means: set ready by the worker (connected, holding leases or waiting for them) *and*
    every extra check passes (e.g. :func:`cluster_check` of the driver's cluster).
    """

    def __init__(self, reason: str = "starting", checks: Iterable[ReadyCheck] = ()) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._reason = reason
        self._checks = list(checks)

    def set_ready(self, reason: str = "ready") -> None:
        with self._lock:
            self._ready, self._reason = True, reason

    def set_unready(self, reason: str) -> None:
        with self._lock:
            self._ready, self._reason = False, reason

    def add_check(self, check: ReadyCheck) -> None:
        with self._lock:
            self._checks.append(check)

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            ready, reason, checks = self._ready, self._reason, list(self._checks)
        if not ready:
            return False, reason
        for check in checks:
            ok, why = check()
            if not ok:
                return False, why
        return True, reason


def cluster_check(backend: Backend) -> ReadyCheck:
    """A ready check on a connection: ready while the driver sees at least one node up."""

    def check() -> tuple[bool, str]:
        hosts = backend.hosts()
        if not hosts:
            return False, "no Cassandra node known"
        up = [h for h, is_up in hosts if is_up]
        if up:
            return True, f"{len(up)}/{len(hosts)} Cassandra node(s) up"
        return False, "no Cassandra node up (" + ", ".join(h for h, _ in hosts) + " down)"

    return check


# -- HTTP -----------------------------------------------------------------------------------
class MetricsServer:
    """The running endpoint server (a daemon thread). ``port`` is the bound port."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        address = httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler(registry: CollectorRegistry, ready_check: ReadyCheck | None,
             live_check: ReadyCheck | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cstore-metrics"

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body = generate_latest(registry)
                except Exception as exc:  # a broken collector must not take the probes down
                    log.exception("metrics collection failed")
                    self._reply(500, f"metrics collection failed: {type(exc).__name__}: {exc}\n")
                    return
                self._reply(200, body, CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, reason = self._check(live_check, "no liveness check configured")
                self._reply(200 if ok else 503, f"{'ok' if ok else 'stuck'}: {reason}\n")
            elif path == "/readyz":
                ok, reason = self._ready()
                self._reply(200 if ok else 503, f"{'ready' if ok else 'not ready'}: {reason}\n")
            else:
                self._reply(404, "not found; try /metrics, /healthz or /readyz\n")

        do_HEAD = do_GET  # noqa: N815

        def _ready(self) -> tuple[bool, str]:
            return self._check(ready_check, "no readiness check configured")

        def _check(self, check: ReadyCheck | None, absent: str) -> tuple[bool, str]:
            if check is None:
                return True, absent
            try:
                ok, reason = check()
                return bool(ok), str(reason)
            except Exception as exc:
                return False, f"check failed: {type(exc).__name__}: {exc}"

        def _reply(self, status: int, body: bytes | str, ctype: str = "text/plain; charset=utf-8") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, fmt: str, *args: object) -> None:  # probes every few seconds: not INFO
            log.debug("%s %s", self.address_string(), fmt % args)

    return Handler


def serve(port: int = DEFAULT_PORT, host: str = "0.0.0.0", ready_check: ReadyCheck | None = None, *,
          registry: CollectorRegistry, live_check: ReadyCheck | None = None) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (``port=0`` picks a free
    one) from a daemon thread; returns at once. Raises ``OSError`` when the port is taken.

    ``live_check`` decides ``/healthz`` (503 when it fails: the process should be restarted, e.g. a
    worker whose loop has not advanced); without one, ``/healthz`` answers 200 while the process runs.
    """
    httpd = ThreadingHTTPServer((host, port), _handler(registry, ready_check, live_check))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                              name="cstore-metrics", daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread)
    log.info("metrics and health endpoints on %s", server.url, extra={"port": server.port})
    return server
