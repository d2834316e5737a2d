"""A Jepsen-style history checker for chunk commits: no acknowledged update lost, none applied twice.

Workload (:func:`client_main`, one OS process per client): every operation adds exactly 1.0 to
its *own* coordinate of parameter ``w`` (``apply_update(…, values=[-1], lr=1)``) and records its
id in the commit metadata. Coordinates are unique per operation, so after the run the value at an
operation's coordinate counts how many times it was applied (small integers are exact in
float32), and the chunk's commit chain (history, ``prev_op_id`` links) orders it among the
chunk's other commits. Each operation is logged by its client as

* ``ok`` — ``apply_update`` returned: it must be present exactly once;
* ``fail`` — a definite failure (:class:`ConflictError`: every attempt was refused): absent;
* ``unknown`` — anything else (timeouts, :class:`UnknownOutcome`, unavailable replicas): the
  commit may or may not have happened, so it may be present at most once.

:func:`check` also verifies that each chunk's versions are contiguous (the chain from the head
back to version 1 has one link per version), that history agrees with the data, that nothing
else changed, and that each chunk's order is consistent with real time: if A completed before B
was invoked, A must not come after B in the chunk's chain. Clients share one machine, so
``time.monotonic()`` is one clock for all of them.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PARAM = "w"
log = logging.getLogger("cstore.checker")


@dataclass
class Op:
    """One client operation as its client saw it."""

    op: str
    process: int
    chunk: int
    coord: int
    invoke: float
    complete: float
    outcome: str  # ok | fail | unknown
    error: str = ""


def coordinate(process: int, i: int, n_processes: int, n_chunks: int, chunk_size: int) -> tuple[int, int]:
    """Operation ``i`` of ``process`` → (chunk, flat coordinate), unique across all processes.

    Consecutive operations of one client visit the chunks round-robin, so every client contends
    with every other on every chunk (what makes compare-and-set matter).
    """
    chunk = (i + process) % n_chunks
    slot = process + n_processes * (i // n_chunks)
    if slot >= chunk_size:
        raise ValueError("workload exhausted its coordinates; use a larger chunk_size")
    return chunk, chunk * chunk_size + slot


def client_main(overrides: dict[str, Any], model: str, process: int, n_processes: int, n_chunks: int,
                chunk_size: int, duration_s: float, log_path: str, stop_file: str | None = None,
                max_rate: float | None = None) -> None:
    """One client process: update until ``duration_s`` has passed or ``stop_file`` exists (JSON-lines log).

    ``max_rate`` caps operations per second, so that cheap blind writes leave CPU to the nodes.
    """
    from cstore.config import load_config
    from cstore.errors import ConflictError, ValidationError
    from cstore.store import Store

    deadline = time.monotonic() + duration_s
    max_ops = n_chunks * (chunk_size // n_processes)  # every op needs a coordinate of its own
    stop = Path(stop_file) if stop_file else None
    with open(log_path, "a", buffering=1) as out:
        store = None
        i = 0
        while time.monotonic() < deadline and i < max_ops and not (stop and stop.exists()):
            if store is None:
                try:
                    store = Store.from_config(load_config(overrides, env={}))
                except Exception as exc:  # the contact node may be the one just killed: retry
                    out.write(json.dumps({"event": "connect_failed", "error": str(exc)[:200]}) + "\n")
                    time.sleep(0.5)
                    continue
            chunk, coord = coordinate(process, i, n_processes, n_chunks, chunk_size)
            op_id = f"p{process}-{i}"
            i += 1
            t0 = time.monotonic()
            outcome, error = "ok", ""
            try:
                store.apply_update(model, PARAM, [-1.0], indices=[coord], lr=1.0, source="manual",
                                   metadata={"op": op_id})
            except (ConflictError, ValidationError) as exc:  # nothing was committed
                outcome, error = "fail", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # timeouts, unavailable replicas, UnknownOutcome: may have committed
                outcome, error = "unknown", f"{type(exc).__name__}: {exc}"
            rec = Op(op_id, process, chunk, coord, t0, time.monotonic(), outcome, error[:300])
            out.write(json.dumps(asdict(rec)) + "\n")
            if max_rate:
                time.sleep(max(0.0, t0 + 1.0 / max_rate - time.monotonic()))
        if store is not None:
            try:
                store.close()
            except Exception:
                traceback.print_exc()


def read_ops(paths: Iterable[str | Path]) -> list[Op]:
    ops = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            d = json.loads(line)
            if "op" in d:
                ops.append(Op(**d))
    return ops


@dataclass
class ChunkFacts:
    """What the database says about one chunk after healing (read at SERIAL)."""

    chunk: int
    data: np.ndarray
    version: int
    chain: list[tuple[int, int, str | None]]  # (old_version, new_version, op name) from oldest to head
    chain_error: str | None = None


def collect(store, model: str, since: float, attempts: int = 6) -> list[ChunkFacts]:
    """Read every chunk at SERIAL and follow its commit chain through history written after ``since``.

    Reads are retried: right after healing, a restarted node can be too slow to answer in time.
    """
    for attempt in range(attempts):
        try:
            return _collect(store, model, since)
        except Exception as exc:  # driver timeouts, ConsistencyUnavailable: the reads are idempotent
            if attempt == attempts - 1:
                raise
            log.warning("collecting %s failed (%s); retrying", model, exc)
            time.sleep(5)
    raise AssertionError("unreachable")


def _collect(store, model: str, since: float) -> list[ChunkFacts]:
    info = store.model_info(model, refresh=True)
    rows = store.history(model, since=since, attempts=True)
    by_op = {(h.op_id, h.param): h for h in rows}
    facts = []
    for k in range(info.n_chunks(PARAM)):
        head = store.chunks.read_chunk(info, k, serial=True)[PARAM]
        chain, err, op = [], None, head.op_id
        version = head.version
        while version > 1:
            h = by_op.get((op, PARAM))
            if h is None:
                err = f"history row of version {version} (op {op}) is missing"
                break
            chain.append((h.old_version, h.new_version, h.metadata.get("op")))
            version, op = h.old_version, h.prev_op_id
        chain.reverse()
        facts.append(ChunkFacts(k, head.data, head.version, chain, err))
    return facts


@dataclass
class CheckResult:
    """Counts and anomalies; ``valid`` when none of the invariants was violated."""

    ops: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_applied: int = 0
    lost: list[str] = field(default_factory=list)            # ok but absent
    duplicated: list[str] = field(default_factory=list)      # applied more than once
    failed_present: list[str] = field(default_factory=list)  # definite failures that were applied
    version_errors: list[str] = field(default_factory=list)  # gaps or broken chains
    history_mismatch: list[str] = field(default_factory=list)
    phantoms: list[str] = field(default_factory=list)        # changed coordinates nobody wrote
    realtime_violations: list[str] = field(default_factory=list)
    commits: int = 0

    @property
    def valid(self) -> bool:
        return not (self.lost or self.duplicated or self.failed_present or self.version_errors
                    or self.history_mismatch or self.phantoms or self.realtime_violations)

    def summary(self) -> dict[str, Any]:
        lists = ("lost", "duplicated", "failed_present", "version_errors", "history_mismatch", "phantoms",
                 "realtime_violations")
        return {"valid": self.valid, "ops": self.ops, "ok": self.ok, "failed": self.failed,
                "unknown": self.unknown, "unknown_applied": self.unknown_applied, "commits": self.commits,
                **{k: len(getattr(self, k)) for k in lists},
                "examples": {k: getattr(self, k)[:5] for k in lists if getattr(self, k)}}


def check(ops: list[Op], facts: list[ChunkFacts], chunk_size: int) -> CheckResult:
    """Check a recorded history against the healed database (see the module docstring)."""
    res = CheckResult(ops=len(ops))
    by_coord = {o.coord: o for o in ops}
    counts = Counter(o.outcome for o in ops)
    res.ok, res.failed, res.unknown = counts["ok"], counts["fail"], counts["unknown"]
    applied: dict[str, int] = {}
    for f in facts:
        base = f.chunk * chunk_size
        nonzero = np.flatnonzero(f.data)
        for local in nonzero:
            value = float(f.data[local])
            op = by_coord.get(base + int(local))
            if op is None or value != round(value) or value < 0:
                res.phantoms.append(f"chunk {f.chunk} coordinate {base + int(local)} = {value}")
                continue
            applied[op.op] = int(value)
        if f.chain_error:
            res.version_errors.append(f"chunk {f.chunk}: {f.chain_error}")
        expected = 1
        for old, new, _ in f.chain:
            if old != expected or new != old + 1:
                res.version_errors.append(f"chunk {f.chunk}: link {old}→{new} after version {expected}")
            expected = new
        if not f.chain_error and expected != f.version:
            res.version_errors.append(f"chunk {f.chunk}: chain ends at {expected}, head is {f.version}")
        res.commits += len(f.chain)
        in_chain = Counter(name for _, _, name in f.chain)
        in_data = {by_coord[base + int(i)].op for i in nonzero if base + int(i) in by_coord}
        for name in (set(in_chain) | in_data) - {None}:
            n = in_chain.get(name, 0)
            if n != applied.get(name, 0) and not f.chain_error:
                res.history_mismatch.append(f"op {name}: {n} commit(s) in history, applied "
                                            f"{applied.get(name, 0)} time(s) in the data")
        res.realtime_violations += _realtime(f, {o.op: o for o in ops if o.chunk == f.chunk})
    for o in ops:
        n = applied.get(o.op, 0)
        if n > 1:
            res.duplicated.append(f"{o.op} applied {n} times ({o.outcome})")
        if o.outcome == "ok" and n == 0:
            res.lost.append(f"{o.op} (chunk {o.chunk}) acknowledged at t={o.complete:.3f} but absent")
        elif o.outcome == "fail" and n > 0:
            res.failed_present.append(f"{o.op} failed ({o.error[:80]}) but is present")
        elif o.outcome == "unknown" and n == 1:
            res.unknown_applied += 1
    return res


def _realtime(f: ChunkFacts, ops: dict[str, Op]) -> list[str]:
    """Ops of one chunk: if A completed before B was invoked, A must precede B in the chain."""
    pos = {name: i for i, (_, _, name) in enumerate(f.chain) if name in ops}
    done = sorted((ops[n] for n in pos if ops[n].outcome == "ok"), key=lambda o: o.complete)
    started = sorted((ops[n] for n in pos), key=lambda o: o.invoke)
    out, j, latest = [], 0, None  # latest = the op with the highest chain position among those done
    for b in started:
        while j < len(done) and done[j].complete < b.invoke:
            if latest is None or pos[done[j].op] > pos[latest.op]:
                latest = done[j]
            j += 1
        if latest is not None and pos[latest.op] > pos[b.op]:
            out.append(f"chunk {f.chunk}: {latest.op} completed before {b.op} started, but {b.op} is "
                       f"version {pos[b.op] + 2} and {latest.op} version {pos[latest.op] + 2}")
    return out


def group_errors(ops: list[Op]) -> dict[str, int]:
    """Error kinds (first words of the message) of failed and unknown ops, for the report."""
    kinds: dict[str, int] = defaultdict(int)
    for o in ops:
        if o.outcome != "ok":
            kinds[f"{o.outcome}: {o.error.split(':')[0]}"] += 1
    return dict(kinds)
