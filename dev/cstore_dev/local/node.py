"""One local Cassandra node: its files, its JVM command line, its process."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

_MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"

# From Apache Cassandra 5.0's conf/jvm17-server.options and conf/jvm-server.options.
_EXPORTS = ["java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server", "java.sql/java.sql",
            "java.base/java.lang.ref", "jdk.unsupported/sun.misc", "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach"]
_OPENS = ["java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
          "java.base/jdk.internal.reflect", "java.base/jdk.internal.math", "java.base/jdk.internal.module",
          "java.base/jdk.internal.util.jar", "jdk.management/com.sun.management.internal",
          "java.base/sun.nio.ch", "java.base/java.io", "java.base/java.lang.reflect",
          "jdk.compiler/com.sun.tools.javac", "java.base/java.lang", "java.base/java.util",
          "java.base/java.nio", "java.base/java.nio.charset"]
_GC = ["-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1", "-XX:G1HeapRegionSize=16m",
       "-XX:G1RSetUpdatingPauseTimePercent=5", "-XX:MaxGCPauseMillis=300",
       "-XX:InitiatingHeapOccupancyPercent=70"]
_GENERAL = ["-ea", "-da:net.openhft...", "-XX:+UseThreadPriorities", "-XX:+HeapDumpOnOutOfMemoryError",
            "-XX:+ExitOnOutOfMemoryError", "-Xss256k", "-XX:+UseTLAB", "-XX:+ResizeTLAB", "-XX:+PerfDisableSharedMem",
            "-XX:CICompilerCount=2", "-Djava.net.preferIPv4Stack=true", "-Djdk.attach.allowAttachSelf=true",
            "-Dio.netty.tryReflectionSetAccessible=true", "-Dio.netty.allocator.useCacheForAllThreads=true",
            "-Dio.netty.allocator.maxOrder=11"]
# Start-up shortcuts that only make sense for a throw-away local cluster.
_FAST_START = ["-Dcassandra.skip_wait_for_gossip_to_settle=0", "-Dcassandra.superuser_setup_delay_ms=0",
               "-Dcassandra.ring_delay_ms=1000"]

READY_LINE = "Starting listening for CQL clients"
FAILURE_MARKERS = ("Failed to bind port", "Not starting native transport", "unable to access required classes",
                   "Exception encountered during startup", "ERROR", "FATAL")


def java_module_flags() -> list[str]:
    """The --add-exports/--add-opens Cassandra's classes need on Java 17 (nodetool too)."""
    return [f for e in _EXPORTS for f in ("--add-exports", f"{e}=ALL-UNNAMED")] + \
           [f for o in _OPENS for f in ("--add-opens", f"{o}=ALL-UNNAMED")]


def balanced_tokens(n: int) -> list[int]:
    """Murmur3 tokens spreading n nodes evenly over the ring (as ccm does)."""
    return [int(-(2 ** 63) + i * (2 ** 64) // n) for i in range(n)]


@dataclass(frozen=True)
class NodeSpec:
    """Everything that identifies node ``index`` (1-based) of a local cluster."""

    index: int
    n_nodes: int
    root: Path
    cluster_name: str = "cstore-local"
    heap: str = "1G"
    # C1-only JIT: about 40 % faster (re)starts on a busy 2-core machine, slower steady state. For
    # throw-away test clusters that are killed and restarted, never for benchmarks.
    quick_start: bool = False
    auth: bool = False
    tls_keystore: str | None = None
    tls_password: str | None = field(default=None, repr=False)
    tls_truststore: str | None = None
    tls_require_client_auth: bool = False
    first_octet: int = 1  # node i listens on 127.0.0.(first_octet + i - 1)

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.{self.octet}"

    @property
    def octet(self) -> int:
        return self.first_octet + self.index - 1

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def system_log(self) -> Path:
        return self.log_dir / "system.log"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "stdout.log"

    @property
    def yaml_path(self) -> Path:
        return self.dir / "conf" / "cassandra.yaml"

    @property
    def jmx_port(self) -> int:
        return 7199 + 10 * (self.octet - 1)

    def render_yaml(self) -> str:
        d = self.dir
        seeds = ",".join(f"127.0.0.{self.first_octet + i}" for i in range(self.n_nodes))
        token = balanced_tokens(self.n_nodes)[self.index - 1]
        lines = [
            f"cluster_name: '{self.cluster_name}'",
            "num_tokens: 1",
            f"initial_token: {token}",
            "auto_bootstrap: false",
            f"listen_address: {self.address}",
            f"rpc_address: {self.address}",
            "native_transport_port: 9042",
            "storage_port: 7000",
            "partitioner: org.apache.cassandra.dht.Murmur3Partitioner",
            "endpoint_snitch: SimpleSnitch",
            "seed_provider:",
            "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider",
            "    parameters:",
            f"      - seeds: \"{seeds}\"",
            "data_file_directories:",
            f"  - {d / 'data'}",
            f"commitlog_directory: {d / 'commitlog'}",
            f"saved_caches_directory: {d / 'saved_caches'}",
            f"hints_directory: {d / 'hints'}",
            f"cdc_raw_directory: {d / 'cdc_raw'}",
            "commitlog_sync: periodic",
            "commitlog_sync_period: 10000ms",
            "commitlog_segment_size: 32MiB",
            "auto_snapshot: false",
            "concurrent_reads: 8",
            "concurrent_writes: 8",
            "concurrent_counter_writes: 4",
            "concurrent_compactors: 1",
            "memtable_flush_writers: 1",
            "block_for_peers_timeout_in_secs: 0",
            "paxos_variant: v2",
            "hinted_handoff_enabled: true",
            "max_hint_window: 3h",
            "batch_size_warn_threshold: 64KiB",
            "batch_size_fail_threshold: 1024KiB",
            "native_transport_max_frame_size: 32MiB",
            "read_request_timeout: 5000ms",
            "range_request_timeout: 10000ms",
            "write_request_timeout: 2000ms",
            "cas_contention_timeout: 1800ms",
            "request_timeout: 10000ms",
            "dynamic_snitch: true",
        ]
        if self.auth:
            lines += ["authenticator:", "  class_name: org.apache.cassandra.auth.PasswordAuthenticator",
                      "authorizer: CassandraAuthorizer", "role_manager: CassandraRoleManager",
                      "roles_validity: 0ms", "permissions_validity: 0ms", "credentials_validity: 0ms"]
        if self.tls_keystore:
            # optional: false — a plain-text client is refused, not silently served.
            lines += ["client_encryption_options:", "  enabled: true", "  optional: false",
                      f"  keystore: {self.tls_keystore}", f"  keystore_password: '{self.tls_password}'",
                      "  store_type: PKCS12", "  protocol: TLS",
                      f"  require_client_auth: {'true' if self.tls_require_client_auth else 'false'}"]
            if self.tls_truststore:
                lines += [f"  truststore: {self.tls_truststore}", f"  truststore_password: '{self.tls_password}'"]
        return "\n".join(lines) + "\n"

    def render_logback(self) -> str:
        return f"""<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{self.system_log}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{self.log_dir}/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex><maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
"""

    def write_files(self) -> None:
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs", "conf"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.yaml_path.write_text(self.render_yaml())
        (self.dir / "conf" / "logback.xml").write_text(self.render_logback())

    def command(self, classpath: list[str], java: str = "java") -> list[str]:
        cmd = [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", *_GC, *_GENERAL, *_FAST_START]
        if self.quick_start:
            cmd.append("-XX:TieredStopAtLevel=1")
        for e in _EXPORTS:
            cmd += ["--add-exports", f"{e}=ALL-UNNAMED"]
        for o in _OPENS:
            cmd += ["--add-opens", f"{o}=ALL-UNNAMED"]
        jamm = next((j for j in classpath if Path(j).name.startswith("jamm-")), None)
        if jamm:
            cmd.append(f"-javaagent:{jamm}")
        cmd += [
            f"-Dcassandra.config=file://{self.yaml_path}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.logdir={self.log_dir}",
            f"-Dcassandra.storagedir={self.dir / 'data'}",
            f"-Dlogback.configurationFile={self.dir / 'conf' / 'logback.xml'}",
            f"-Dcassandra.jmx.local.port={self.jmx_port}",
            "-cp", os.pathsep.join(classpath), _MAIN_CLASS,
        ]
        return cmd

    def start(self, classpath: list[str]) -> int:
        """Start the JVM detached from our process group; return its pid."""
        self.write_files()
        with open(self.stdout_log, "ab") as out:
            proc = subprocess.Popen(self.command(classpath), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True)
        return proc.pid

    def log_offset(self) -> int:
        return self.system_log.stat().st_size if self.system_log.exists() else 0

    def log_since(self, offset: int) -> str:
        if not self.system_log.exists():
            return ""
        with open(self.system_log, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def failure_excerpt(self, offset: int, max_lines: int = 20) -> str:
        """The log lines worth quoting when a start fails."""
        text = self.log_since(offset)
        lines = [ln for ln in text.splitlines() if any(m in ln for m in FAILURE_MARKERS)]
        if not lines:
            lines = text.splitlines()[-max_lines:]
        if self.stdout_log.exists():
            tail = self.stdout_log.read_text(errors="replace").strip().splitlines()[-5:]
            lines += [f"[stdout] {t}" for t in tail]
        return "\n".join(lines[:max_lines])


def pid_exists(pid: int | None) -> bool:
    """True when ``pid`` is a running (non-zombie) process, whatever it runs."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_alive(pid: int | None, marker: str = _MAIN_CLASS) -> bool:
    """True when ``pid`` is a live Cassandra process (not a recycled pid of something else)."""
    if not pid_exists(pid):
        return False
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM, wait, then SIGKILL: ``down`` stops exactly the processes it started."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while pid_alive(pid):
            time.sleep(0.1)
