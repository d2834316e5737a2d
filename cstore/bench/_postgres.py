"""The brief's PostgreSQL design as a benchmark peer: a private server the bench starts and stops.

A ratio against the brief's design is only fair when measured on the same machine in the same run, so
this initdb's a throw-away cluster, runs the brief's transactions on it and removes it. PostgreSQL refuses
to run as root, so as root its programs run as the ``postgres`` user. psycopg is optional: without it (or
the server binaries) :func:`postgres_peer` raises :class:`PeerUnavailable` and the bench skips the peer.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import psycopg

FIX_DRIVER = "pip install 'cstore[bench]'"
N_PARAMS = 1 << 20
LEARNING_RATE = 0.01
RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure: retried, counted in "errors"
SCHEMA = """CREATE TABLE model_parameters (model_id UUID NOT NULL, parameter_id TEXT NOT NULL, current_value NUMERIC,
  last_updated TIMESTAMPTZ DEFAULT NOW(), version BIGINT DEFAULT 1, PRIMARY KEY (model_id, parameter_id));
CREATE TABLE parameter_updates (id UUID PRIMARY KEY, model_id UUID NOT NULL, parameter_id TEXT NOT NULL,
  old_value NUMERIC, new_value NUMERIC, update_type TEXT NOT NULL, learning_rate NUMERIC,
  timestamp TIMESTAMPTZ DEFAULT NOW(), source TEXT, metadata JSONB);
CREATE INDEX ON model_parameters(model_id); CREATE INDEX ON parameter_updates(timestamp);
CREATE INDEX ON parameter_updates(source)"""  # the brief's, verbatim
SELECT_ONE = "SELECT current_value, version FROM model_parameters WHERE model_id = %s AND parameter_id = %s FOR UPDATE"
SELECT_MANY = ("SELECT parameter_id, current_value FROM model_parameters WHERE model_id = %s AND parameter_id = ANY(%s)"
               " ORDER BY parameter_id FOR UPDATE")
UPDATE = ("UPDATE model_parameters SET current_value = %s, last_updated = now(), version = version + 1"
          " WHERE model_id = %s AND parameter_id = %s")
HISTORY = ("INSERT INTO parameter_updates (id, model_id, parameter_id, old_value, new_value, update_type,"
           " learning_rate, source, metadata) VALUES (%s, %s, %s, %s, %s, 'gradient', %s, 'bench', %s)")
# Appended to the generated postgresql.conf (later lines win); fsync on: durable like cstore's strong profile.
SETTINGS = ("\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 100\n"
            "shared_buffers = 128MB\nfsync = on\nsynchronous_commit = on\n")


class PeerUnavailable(Exception):
    """The peer could not be started here; str(exc) says why and what to do."""


def _tail(path: pathlib.Path, lines: int = 12) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _bindir() -> pathlib.Path:
    """Where initdb, pg_ctl and postgres are: PATH first, then Debian's versioned directories, newest first."""
    on_path = shutil.which("pg_ctl")
    debian = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)
    for d in ([pathlib.Path(on_path).parent] if on_path else []) + debian:
        if all(os.access(d / prog, os.X_OK) for prog in ("initdb", "pg_ctl", "postgres")):
            return d
    raise PeerUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in "
                          "/usr/lib/postgresql/*/bin: install the server (Debian: apt-get install postgresql)")


def _server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs the server programs as a non-root user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return [], None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise PeerUnavailable("running as root, which PostgreSQL refuses, and there is no 'postgres' user to run "
                              "it as: create one (useradd --system postgres) or run the bench as non-root") from None
    if not shutil.which("runuser"):
        raise PeerUnavailable("running as root and runuser is missing to run PostgreSQL as the 'postgres' user: "
                              "install util-linux or run the bench as non-root")
    return ["runuser", "-u", pw.pw_name, "--"], pw


def _run_dir(root: pathlib.Path, prefix: list[str], pw: pwd.struct_passwd | None,
             log: Callable[[str], None]) -> pathlib.Path:
    """A new ``run-*`` directory the server's user can write: under ``root``, or, when a parent of
    ``root`` is closed to that user (a checkout in a mode-700 ``mktemp -d``), under the system's
    temporary directory instead."""
    if pw is None:  # the server runs as this user
        return pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=root))
    for parent in (root, pathlib.Path(tempfile.gettempdir())):
        run = pathlib.Path(tempfile.mkdtemp(prefix="run-" if parent == root else "cstore-bench-pg-", dir=parent))
        os.chown(run, pw.pw_uid, pw.pw_gid)
        writable = subprocess.run([*prefix, "test", "-w", str(run)], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=60, check=False).returncode == 0
        if writable:
            if parent != root:
                log(f"  user {pw.pw_name} cannot reach {root}; the PostgreSQL peer's files go to {run}")
            return run
        shutil.rmtree(run, ignore_errors=True)
    raise PeerUnavailable(f"user {pw.pw_name} cannot write under {root} nor under {tempfile.gettempdir()}: every "
                          f"parent directory must be traversable by it (chmod o+x), or choose another bench "
                          f"directory")


@contextlib.contextmanager
def postgres_peer(root: pathlib.Path, *, log: Callable[[str], None] = print) -> Iterator[PostgresPeer]:
    """Start a private server with the brief's tables, yield it, then stop it (``pg_ctl stop -m fast``) and
    remove its files, also when the body raises; :class:`PeerUnavailable` (before yielding) says why it cannot.

    Each run initdb's a new ``run-*`` directory under ``root`` (or the system's temporary directory when the
    server's user cannot reach ``root``) and removes only that (a mistaken ``root`` is never wiped). The server
    listens on a free port of 127.0.0.1 (TCP like the Cassandra clients, and no
    socket-path length limit), trust auth, 128 MB shared buffers, fsync on."""
    try:
        import psycopg  # noqa: F401  (optional: only the bench extra installs it)
    except ImportError as exc:
        raise PeerUnavailable(f"the PostgreSQL driver psycopg is not importable ({exc}): {FIX_DRIVER}") from None
    bindir = _bindir()
    prefix, pw = _server_user()
    root = root.resolve()
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    run = _run_dir(root, prefix, pw, log)
    data, server_log = run / "data", run / "server.log"

    def pg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], cwd=run, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=180, check=False)
    try:
        r = pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
               "--locale=C", "--no-sync")  # --no-sync: only initdb's own files; the server keeps fsync on
        if r.returncode != 0:
            raise PeerUnavailable(f"initdb failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(SETTINGS)
        for attempt in range(3):  # the free port can be taken between probing and binding it
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            r = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(server_log), "-w", "-t", "60",
                   "-o", f"-p {port}", "start")
            if r.returncode == 0:
                break
            if attempt == 2 or "already in use" not in _tail(server_log):
                raise PeerUnavailable(f"the PostgreSQL server did not start (pg_ctl exit {r.returncode}); "
                                      f"server log: {_tail(server_log)}")
        try:
            peer = PostgresPeer(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", log)
        except Exception as exc:
            raise PeerUnavailable(f"the PostgreSQL server started but did not accept the schema ({exc}); "
                                  f"server log: {_tail(server_log)}") from exc
        log(f"  PostgreSQL {peer.version} peer on 127.0.0.1:{port} (data in {data})")
        yield peer
    finally:
        if (data / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                if pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "60", "stop").returncode == 0:
                    break
            else:
                log(f"  PostgreSQL peer did not stop; its data directory {data} is left behind")
        if not (data / "postmaster.pid").exists():
            shutil.rmtree(run, ignore_errors=True)
            if made_root:
                with contextlib.suppress(OSError):
                    root.rmdir()


class PostgresPeer:
    """A running private server holding the brief's two tables; the workloads populate one model lazily."""

    version: str  # the server's, e.g. "15.18"

    def __init__(self, conninfo: str, log: Callable[[str], None]) -> None:
        self.conninfo, self._log = conninfo, log
        self._models: dict[int, uuid.UUID] = {}  # n_params -> the model populated with that many rows
        with self.connect() as conn:
            for statement in SCHEMA.split(";"):
                conn.execute(statement)
            v = conn.info.server_version  # e.g. 150018
            self.version = f"{v // 10000}.{v % 10000}"

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection (not autocommit: every workload transaction is BEGIN .. COMMIT)."""
        import psycopg
        return psycopg.connect(self.conninfo)

    def _model(self, n_params: int) -> uuid.UUID:
        """The model with ``n_params`` rows ``p0`` … (created once per peer, server-side: seconds, not minutes)."""
        if n_params not in self._models:
            t0, model = time.perf_counter(), uuid.uuid4()
            with self.connect() as conn:
                conn.execute("INSERT INTO model_parameters (model_id, parameter_id, current_value) "
                             "SELECT %s, 'p' || g, 0 FROM generate_series(0, %s - 1) AS g", (model, n_params))
                conn.commit()
                conn.autocommit = True  # VACUUM cannot run in a transaction
                conn.execute("VACUUM ANALYZE model_parameters")
                conn.execute("CHECKPOINT")  # the population's dirty pages are not charged to the workload
            self._models[n_params] = model
            self._log(f"  PostgreSQL peer: {n_params:,} parameter rows in {time.perf_counter() - t0:.1f}s")
        return self._models[n_params]

    def _drive(self, seconds: float, threads: int, pick: Callable[[random.Random], Any],
               txn: Callable[[psycopg.Connection[Any], Any], None]) -> tuple[list[float], int, float]:
        """``threads`` threads, one connection each, run ``txn(conn, pick(rng))`` back to back, the first
        ``min(1 s, seconds / 4)`` not counted (warm caches and prepared statements). Returns the latencies (ms,
        BEGIN .. COMMIT, retries included) of the transactions started in the window, the retries, and
        transactions/s counting each by its share of time in the window (no edge effect on 0.5 s batches)."""
        def worker(conn: psycopg.Connection[Any]) -> tuple[list[tuple[float, float]], int]:
            rng, spans, errors = random.Random(), list[tuple[float, float]](), 0
            while time.perf_counter() < end:
                work = pick(rng)
                t0 = time.perf_counter()
                while True:  # a deadlock or serialization failure is rolled back, counted, retried
                    try:
                        txn(conn, work)
                        break
                    except Exception as exc:
                        conn.rollback()
                        if getattr(exc, "sqlstate", None) not in RETRYABLE:
                            raise
                        errors += t0 >= start
                spans.append((t0, time.perf_counter()))
            return spans, errors

        with contextlib.ExitStack() as stack, ThreadPoolExecutor(threads) as pool:
            conns = [stack.enter_context(self.connect()) for _ in range(threads)]
            start = time.perf_counter() + min(1.0, seconds / 4)
            end = start + seconds
            outs = [f.result() for f in [pool.submit(worker, c) for c in conns]]
        spans = [s for out, _ in outs for s in out]
        done = sum((min(t1, end) - max(t0, start)) / (t1 - t0) for t0, t1 in spans if t1 > start and t1 > t0)
        return [(t1 - t0) * 1e3 for t0, t1 in spans if t0 >= start], sum(e for _, e in outs), done / seconds

    def atomic_updates(self, seconds: float, *, threads: int, n_params: int = N_PARAMS) -> dict[str, Any]:
        """The brief's atomic update of one random coordinate per transaction (SELECT … FOR UPDATE, UPDATE
        version + 1, one history row, COMMIT) from ``threads`` connections for ``seconds``; rate and latency."""
        from psycopg.types.json import Jsonb
        model = self._model(n_params)

        def txn(conn: psycopg.Connection[Any], work: tuple[str, float]) -> None:
            pid, grad = work
            with conn.cursor() as cur:
                row = cur.execute(SELECT_ONE, (model, pid)).fetchone()
                assert row is not None, pid
                old, version = row
                new = float(old) - LEARNING_RATE * grad
                cur.execute(UPDATE, (new, model, pid))
                cur.execute(HISTORY, (uuid.uuid4(), model, pid, old, new, LEARNING_RATE,
                                      Jsonb({"gradient": grad, "version": version + 1})))
            conn.commit()

        ms, errors, rate = self._drive(seconds, threads, lambda rng: (f"p{rng.randrange(n_params)}",
                                                                     rng.gauss(0.0, 1.0)), txn)
        pct = [round(float(np.percentile(ms, q)), 2) if ms else None for q in (50, 99, 100)]
        return {"updates_per_s": round(rate), "p50_ms": pct[0], "p99_ms": pct[1], "max_ms": pct[2],
                "updates": len(ms), "threads": threads, "errors": errors}

    def micro_batches(self, seconds: float, *, coords_per_batch: int = 5000, threads: int = 1) -> dict[str, Any]:
        """One transaction per ``coords_per_batch`` distinct random coordinates of the 2^20-row model: their
        rows locked in parameter_id order (no deadlocks between threads), UPDATEs and history INSERTs
        pipelined with executemany, COMMIT; for ``seconds``."""
        from psycopg.types.json import Jsonb
        model = self._model(N_PARAMS)

        def pick(rng: random.Random) -> list[tuple[str, float]]:
            ids = sorted(f"p{i}" for i in rng.sample(range(N_PARAMS), coords_per_batch))  # C collation order
            return [(pid, rng.gauss(0.0, 1.0)) for pid in ids]

        def txn(conn: psycopg.Connection[Any], work: list[tuple[str, float]]) -> None:
            grads = dict(work)
            with conn.cursor() as cur:
                rows = cur.execute(SELECT_MANY, (model, list(grads))).fetchall()
                new = [(pid, old, float(old) - LEARNING_RATE * grads[pid]) for pid, old in rows]
                cur.executemany(UPDATE, [(v, model, pid) for pid, _, v in new])
                cur.executemany(HISTORY, [(uuid.uuid4(), model, pid, old, v, LEARNING_RATE,
                                           Jsonb({"gradient": grads[pid]})) for pid, old, v in new])
            conn.commit()

        ms, _, rate = self._drive(seconds, threads, pick, txn)
        return {"coord_updates_per_s": round(rate * coords_per_batch), "batches": len(ms),
                "batch_p50_ms": round(float(np.percentile(ms, 50)), 2) if ms else None, "threads": threads}
