"""Start, inspect and stop a local Cassandra cluster of one or more nodes."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cstore_dev.errors import LocalClusterError
from cstore_dev.local.maven import resolve_classpath
from cstore_dev.local.node import READY_LINE, NodeSpec, java_module_flags, pid_alive, pid_exists, stop_pid

DEFAULT_START_TIMEOUT_S = float(os.environ.get("CSTORE_NODE_START_TIMEOUT", "240"))


@dataclass(frozen=True)
class NodeStatus:
    name: str
    address: str
    pid: int | None
    running: bool
    accepts_cql: bool
    log: str

    @property
    def state(self) -> str:
        if self.running and self.accepts_cql:
            return "up"
        return "starting" if self.running else "down"


def cql_port_open(address: str, port: int = 9042, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


class LocalCluster:
    """A cluster of ``n_nodes`` nodes under ``root`` (``.local/cluster`` by default).

    ``up`` is idempotent: running nodes are reused and dead ones restarted with their data.
    """

    def __init__(self, root: str | Path = ".local", *, n_nodes: int | None = None, heap: str | None = None,
                 auth: bool | None = None, name: str = "cluster", first_octet: int | None = None,
                 tls: str | Path | None = None, quick_start: bool | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.base = Path(root).resolve()
        self.root = self.base / name
        self.name = name
        self.log = log
        state = self._read_state()
        # Node i listens on 127.0.0.(first_octet + i - 1); kept in the state file, so that a re-opened
        # cluster finds its nodes without being told again.
        self.first_octet = first_octet or state.get("first_octet", 1)
        self.quick_start = state.get("quick_start", False) if quick_start is None else quick_start
        self.n_nodes = n_nodes or state.get("n_nodes", 1)
        self.heap = heap or state.get("heap") or os.environ.get("CSTORE_HEAP", "1G")
        self.auth = state.get("auth", False) if auth is None else auth
        # TLS: a directory made by cstore.local.certs (node keystore, CA); kept across restarts.
        self.tls = str(Path(tls).resolve()) if tls else state.get("tls")
        if state and (state.get("n_nodes") != self.n_nodes or state.get("auth") != self.auth):
            if self._any_alive(state):
                raise LocalClusterError(
                    f"a local cluster of {state.get('n_nodes')} node(s) (auth={state.get('auth')}) is running "
                    f"under {self.root}; run `cstore local down` before starting a different layout")
            self.log(f"replacing the stopped {state.get('n_nodes')}-node cluster under {self.root} "
                     f"(different layout)")
            shutil.rmtree(self.root, ignore_errors=True)

    # -- state -------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, pids: dict[str, int]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"n_nodes": self.n_nodes, "heap": self.heap, "auth": self.auth,
                                   "tls": self.tls, "first_octet": self.first_octet,
                                   "quick_start": self.quick_start, "pids": pids}, indent=2))
        tmp.replace(self.state_file)

    @staticmethod
    def _any_alive(state: dict) -> bool:
        return any(pid_alive(p) for p in state.get("pids", {}).values())

    def nodes(self) -> list[NodeSpec]:
        tls = {}
        if self.tls:
            from cstore_dev.local.certs import node_tls_options
            tls = node_tls_options(Path(self.tls))
        return [NodeSpec(i, self.n_nodes, self.root, cluster_name=f"cstore-{self.name}", heap=self.heap,
                         auth=self.auth, first_octet=self.first_octet, quick_start=self.quick_start, **tls)
                for i in range(1, self.n_nodes + 1)]

    def node(self, name_or_index: str | int) -> NodeSpec:
        key = str(name_or_index)
        for n in self.nodes():
            if key in (n.name, str(n.index), n.address):
                return n
        raise LocalClusterError(f"no node {name_or_index!r}; nodes are "
                                f"{', '.join(n.name for n in self.nodes())}")

    def pids(self) -> dict[str, int]:
        return dict(self._read_state().get("pids", {}))

    @property
    def contact_points(self) -> list[str]:
        return [n.address for n in self.nodes()]

    # -- operations --------------------------------------------------------------------------------
    def status(self) -> list[NodeStatus]:
        pids = self.pids()
        out = []
        for n in self.nodes():
            pid = pids.get(n.name)
            alive = pid_alive(pid)
            out.append(NodeStatus(n.name, n.address, pid if alive else None, alive,
                                  alive and cql_port_open(n.address), str(n.system_log)))
        return out

    def up(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> list[NodeStatus]:
        """Start every node that is not running and wait until all accept CQL (and see their peers)."""
        pids = self.pids()
        to_start = [n for n in self.nodes() if not pid_alive(pids.get(n.name))]
        if not to_start:
            self.log(f"local cluster already running: {', '.join(self.contact_points)}")
            return self.status()
        classpath = resolve_classpath(self.base, log=self.log)
        t0 = time.monotonic()
        offsets = {}
        for n in to_start:
            offsets[n.name] = n.log_offset()
            pids[n.name] = n.start(classpath)
            self.log(f"starting {n.name} on {n.address}:9042 (pid {pids[n.name]}, heap {self.heap}); "
                     f"log: {n.system_log}")
            self._write_state(pids)
        for n in to_start:
            self._wait_ready(n, pids[n.name], offsets[n.name], t0 + timeout)
            self.log(f"{n.name} accepts CQL after {time.monotonic() - t0:.1f}s")
        if self.n_nodes > 1:
            self._wait_peers(t0 + timeout)
            self.log(f"all {self.n_nodes} nodes see each other after {time.monotonic() - t0:.1f}s")
        return self.status()

    def _wait_ready(self, n: NodeSpec, pid: int, offset: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not pid_exists(pid):  # not pid_alive: right after fork the child has not exec'd java yet
                raise LocalClusterError(f"{n.name} (pid {pid}) exited during start-up. From {n.system_log}:\n"
                                        f"{n.failure_excerpt(offset)}")
            if READY_LINE in n.log_since(offset) and cql_port_open(n.address):
                return
            time.sleep(0.5)
        raise LocalClusterError(f"{n.name} did not accept CQL on {n.address}:9042 within the start timeout "
                                f"(CSTORE_NODE_START_TIMEOUT). From {n.system_log}:\n{n.failure_excerpt(offset)}")

    def _wait_peers(self, deadline: float) -> None:
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        auth = PlainTextAuthProvider("cassandra", "cassandra") if self.auth else None
        ssl_context = None
        if self.tls:
            from cstore_dev.local.certs import client_ssl_context
            ssl_context = client_ssl_context(Path(self.tls))
        for n in self.nodes():
            only_n = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([n.address]))
            cluster = Cluster([n.address], execution_profiles={EXEC_PROFILE_DEFAULT: only_n},
                              auth_provider=auth, protocol_version=5, connect_timeout=5,
                              ssl_context=ssl_context)
            try:
                session = None
                while session is None:  # a node that just started may time out its first schema queries
                    try:
                        session = cluster.connect()
                    except Exception as exc:
                        if time.monotonic() > deadline:
                            raise LocalClusterError(f"{n.name} accepts connections but does not answer CQL "
                                                    f"({exc}); see {n.system_log}") from None
                        cluster.shutdown()
                        time.sleep(1)
                        cluster = Cluster([n.address], execution_profiles={EXEC_PROFILE_DEFAULT: only_n},
                                          auth_provider=auth, protocol_version=5, connect_timeout=10,
                                          ssl_context=ssl_context)
                while True:
                    peers = {r.peer for r in session.execute("SELECT peer FROM system.peers_v2")}
                    if len(peers) >= self.n_nodes - 1:
                        break
                    if time.monotonic() > deadline:
                        raise LocalClusterError(f"{n.name} sees only {len(peers)} of {self.n_nodes - 1} peers; "
                                                f"see {n.system_log}")
                    time.sleep(0.5)
            finally:
                cluster.shutdown()

    def kill(self, name: str) -> None:
        """``kill -9`` one node (for fault tests); ``up`` brings it back."""
        n = self.node(name)
        pid = self.pids().get(n.name)
        if pid_alive(pid):
            os.kill(pid, 9)
            while pid_alive(pid):
                time.sleep(0.05)

    def stop(self, name: str) -> None:
        """Stop one node gracefully."""
        n = self.node(name)
        pid = self.pids().get(n.name)
        if pid:
            stop_pid(pid)

    def nodetool(self, name: str, *args: str, timeout: float = 300.0) -> str:
        """Run ``nodetool ARGS`` against one node (over its local JMX port); return its output."""
        n = self.node(name)
        classpath = resolve_classpath(self.base, log=self.log)
        # nodetool logs through logback too: give it its own quiet config (never the node's log file).
        quiet = self.root / "logback-tools.xml"
        if not quiet.exists():
            quiet.parent.mkdir(parents=True, exist_ok=True)
            quiet.write_text('<configuration><appender name="E" class="ch.qos.logback.core.ConsoleAppender">'
                             '<target>System.err</target><encoder><pattern>%msg%n</pattern></encoder></appender>'
                             '<root level="WARN"><appender-ref ref="E"/></root></configuration>\n')
        cmd = ["java", "-Xmx128m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true", *java_module_flags(),
               f"-Dcassandra.storagedir={n.dir / 'data'}", f"-Dlogback.configurationFile={quiet}",
               "-cp", os.pathsep.join(classpath), "org.apache.cassandra.tools.NodeTool",
               "-h", "127.0.0.1", "-p", str(n.jmx_port), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise LocalClusterError(f"nodetool {' '.join(args)} on {n.name} failed (exit {proc.returncode}):\n{tail}")
        return proc.stdout

    def down(self, purge: bool = False) -> int:
        """Stop exactly the processes this cluster started; return how many were running."""
        pids = self.pids()
        running = [p for p in pids.values() if pid_alive(p)]
        for pid in running:
            stop_pid(pid)
        if purge:
            shutil.rmtree(self.root, ignore_errors=True)
        return len(running)
