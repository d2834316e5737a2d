"""Scenario registry, shared context (connection, keyspaces, memory sampling) and the runner."""
from __future__ import annotations

import importlib
import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cstore.backend import BASELINE_KEYSPACE, Backend, apply_schema, baseline_migrations, connect, replication_map
from cstore.config import Config

Scenario = Callable[["BenchContext"], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {}
ORDER = ("ingest", "apply", "e2e", "score", "latency")  # what `all` runs, in this order


def load_scenario(name: str) -> Scenario:
    """The scenario ``name`` (its module is imported on first use: the CLI starts without them)."""
    if name not in SCENARIOS:
        importlib.import_module(f"cstore.bench._{name}")
    return SCENARIOS[name]


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn
    return register


def rss_peak_kib(pid: int) -> int | None:
    """Peak resident memory (VmHWM) of a process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_now_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class MemorySampler:
    """Samples the resident memory of some pids every 200 ms and keeps each one's peak."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-mem")

    def watch(self, label: str, pid: int) -> None:
        self.pids[label] = pid

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for label, pid in list(self.pids.items()):
                rss = rss_now_kib(pid)
                if rss:
                    self.peaks[label] = max(self.peaks.get(label, 0), rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        return {f"{label}_peak_rss_mib": round(kib / 1024, 1) for label, kib in self.peaks.items()}


@dataclass
class BenchContext:
    """What every scenario gets: configuration, a bench keyspace and the run's knobs."""

    config: Config
    quick: bool = False
    duration: float = 20.0
    concurrency: int = 64
    workers: int = 2  # worker processes of the latency scenario
    warmup_s: float = 60.0  # the latency scenario's load before it measures (a freshly started node compiles)
    log: Callable[[str], None] = print
    memory: MemorySampler = field(default_factory=MemorySampler)

    def ensure_schema(self, keyspace: str | None = None, directory: Path | None = None) -> None:
        ks = keyspace or self.config.keyspace
        with connect(self.config) as backend:
            apply_schema(backend, ks, replication_map(self.config), directory, log=lambda m: None)

    def baselines(self) -> Backend:
        """A connection to the baselines' keyspace (created on first use); close it when done."""
        self.ensure_schema(BASELINE_KEYSPACE, baseline_migrations())
        backend = connect(self.config, keyspace=BASELINE_KEYSPACE)
        backend.baselines.concurrency = self.concurrency
        return backend


def cassandra_pid(cfg: Config) -> int | None:
    """The pid of the process listening for CQL on this machine at the first contact point, if any
    (Linux /proc): the bench reports that node's peak memory beside its own."""
    try:
        host = socket.gethostbyname(cfg.contact_points[0])
        local = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{cfg.port:04X}"
        inodes = {fields[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                  if (fields := line.split())[1] == local and fields[3] == "0A"}  # 0A: LISTEN
    except (OSError, IndexError):
        return None
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
        except OSError:
            continue
    return None


def wait_for_compactions(cfg: Config, timeout_s: float = 90.0) -> float:
    """Wait until no compaction runs on the cluster (``system_views.sstable_tasks``, one node's view
    per contact point), at most ``timeout_s``; returns the seconds waited."""
    t0 = time.monotonic()
    with connect(cfg) as backend:
        while time.monotonic() - t0 < timeout_s:
            if not backend.compactions_running():
                break
            time.sleep(1.0)
    return round(time.monotonic() - t0, 1)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def run_scenarios(names: list[str], ctx: BenchContext) -> dict[str, Any]:
    """Run each scenario; one flat result dict plus timing and memory figures."""
    ctx.ensure_schema()
    pid = cassandra_pid(ctx.config)
    if pid:
        ctx.memory.watch("cassandra", pid)
    ctx.memory.watch("bench", os.getpid())
    ctx.memory.start()
    out: dict[str, Any] = {"scenarios": names, "quick": ctx.quick, "machine": machine()}
    t0 = time.monotonic()
    for i, name in enumerate(names):
        if i:  # each scenario starts on a quiet node, not in the compactions its predecessor left
            waited = wait_for_compactions(ctx.config)
            out[f"{name}_waited_for_compactions_s"] = waited
            if waited >= 1.0:
                ctx.log(f"  (waited {waited:.0f} s for the node's compactions to finish)")
        ctx.log(f"== {name}")
        t = time.monotonic()
        out.update(load_scenario(name)(ctx))
        out[f"{name}_seconds"] = round(time.monotonic() - t, 1)
    out.update(ctx.memory.stop())
    out["total_seconds"] = round(time.monotonic() - t0, 1)
    return out
