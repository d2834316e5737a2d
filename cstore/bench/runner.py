"""Scenario registry, shared context (connection, keyspaces, memory sampling) and the runner."""
from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cstore import schema
from cstore.config import Config
from cstore.session import connect

Scenario = Callable[["BenchContext"], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {}


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
    log: Callable[[str], None] = print
    memory: MemorySampler = field(default_factory=MemorySampler)

    def ensure_schema(self, keyspace: str | None = None, directory: Path | None = None) -> None:
        ks = keyspace or self.config.keyspace
        conn = connect(self.config)
        try:
            schema.apply(conn.session, ks, schema.replication_map(self.config), directory, log=lambda m: None)
        finally:
            conn.close()


def cassandra_pid(cfg: Config) -> int | None:
    """The local node's pid, when the bench runs against the project's own cluster."""
    if not cfg.uses_local_cluster:
        return None
    from cstore.local import LocalCluster
    pids = LocalCluster(cfg.local_dir, log=lambda m: None).pids()
    return pids.get("node1")


def wait_for_compactions(cfg: Config, timeout_s: float = 90.0) -> float:
    """Wait until no compaction runs on the cluster (``system_views.sstable_tasks``, one node's view
    per contact point), at most ``timeout_s``; returns the seconds waited."""
    t0 = time.monotonic()
    conn = connect(cfg)
    try:
        while time.monotonic() - t0 < timeout_s:
            try:
                rows = list(conn.session.execute("SELECT kind FROM system_views.sstable_tasks"))
            except Exception:  # virtual tables missing or not readable by this role: do not wait
                break
            if not any(r["kind"].lower() == "compaction" for r in rows):
                break
            time.sleep(1.0)
    finally:
        conn.close()
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
        out.update(SCENARIOS[name](ctx))
        out[f"{name}_seconds"] = round(time.monotonic() - t, 1)
    out.update(ctx.memory.stop())
    out["total_seconds"] = round(time.monotonic() - t0, 1)
    return out
