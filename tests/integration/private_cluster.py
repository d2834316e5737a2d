"""Throw-away private clusters for tests that stop, kill or reconfigure Cassandra nodes.

Each lives under ``.local/NAME`` on its own addresses (127.0.0.FIRST_OCTET…), so that the shared test
node on 127.0.0.1 is never touched; it is purged before and after, and no process may outlive it.
"""
from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from typing import TypeVar
from collections.abc import Callable, Iterator

from cstore_dev.local import LocalCluster
from cstore_dev.local.node import pid_alive
from conftest import REPO

T = TypeVar("T")


@contextmanager
def private_cluster(name: str, first_octet: int, *, n_nodes: int = 1, **options) -> Iterator[LocalCluster]:
    """Start ``n_nodes`` nodes with 512 MiB heaps (C1-only JIT: they start and restart fast), then purge them."""
    cluster = LocalCluster(REPO / ".local", n_nodes=n_nodes, heap="512M", quick_start=True, name=name,
                           first_octet=first_octet, log=lambda m: None, **options)
    cluster.down(purge=True)
    try:
        assert [s.state for s in cluster.up()] == ["up"] * n_nodes
        yield cluster
    finally:
        pids = list(cluster.pids().values())
        cluster.down(purge=True)
        assert not any(pid_alive(p) for p in pids)
        left = subprocess.run(["pgrep", "-f", f"/{name}/node"], capture_output=True, text=True).stdout.strip()
        assert left == "", f"Cassandra processes left behind: {left}"


def retrying(fn: Callable[[], T], *, attempts: int = 4, pause_s: float = 5.0,
             retry_on: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """``fn()``, repeated on failure: a node that has just started on a busy 2-core machine may refuse the
    first connections or time out its first schema changes (which are idempotent)."""
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)
    raise AssertionError("unreachable")
