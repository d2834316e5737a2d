"""The history checker on hand-made histories: it accepts a valid one and names each kind of anomaly."""
from __future__ import annotations

import numpy as np

from cstore_dev.checker import ChunkFacts, Op, check, coordinate

CS = 8


def op(name, chunk, slot, invoke, complete, outcome="ok"):
    return Op(name, 0, chunk, chunk * CS + slot, invoke, complete, outcome)


def facts(chunk, applied: dict[int, float], chain_names: list[str], version=None):
    data = np.zeros(CS, dtype="float32")
    for slot, v in applied.items():
        data[slot] = v
    chain = [(i + 1, i + 2, n) for i, n in enumerate(chain_names)]
    return ChunkFacts(chunk, data, version if version is not None else len(chain_names) + 1, chain)


def test_valid_history_passes():
    ops = [op("a", 0, 0, 0, 1), op("b", 0, 1, 2, 3), op("c", 0, 2, 2.5, 4, "unknown"), op("d", 0, 3, 5, 6, "fail")]
    res = check(ops, [facts(0, {0: 1, 1: 1, 2: 1}, ["a", "b", "c"])], CS)
    assert res.valid, res.summary()
    assert (res.ok, res.failed, res.unknown, res.unknown_applied, res.commits) == (2, 1, 1, 1, 3)


def test_each_anomaly_is_reported():
    ops = [op("a", 0, 0, 0, 1), op("b", 0, 1, 2, 3), op("f", 0, 2, 0, 1, "fail"), op("u", 0, 3, 0, 1, "unknown")]
    assert check(ops, [facts(0, {1: 1}, ["b"])], CS).lost == ["a (chunk 0) acknowledged at t=1.000 but absent"]
    assert check(ops, [facts(0, {0: 1, 1: 1, 2: 1}, ["a", "b", "f"])], CS).failed_present
    assert check(ops, [facts(0, {0: 1, 1: 1, 3: 2}, ["a", "b", "u", "u"])], CS).duplicated
    assert check(ops, [facts(0, {0: 1, 1: 1, 5: 1}, ["a", "b"])], CS).phantoms
    assert check(ops, [facts(0, {0: 1, 1: 1}, ["a", "b"], version=5)], CS).version_errors
    assert check(ops, [facts(0, {0: 1, 1: 1}, ["a"])], CS).history_mismatch
    # b was invoked after a completed, yet b precedes a in the chunk's order
    assert check(ops, [facts(0, {0: 1, 1: 1}, ["b", "a"])], CS).realtime_violations


def test_coordinates_are_unique_and_spread_over_chunks():
    seen = {coordinate(p, i, 3, 4, 64)[1] for p in range(3) for i in range(4 * (64 // 3))}
    assert len(seen) == 3 * 4 * (64 // 3)
    assert {c // 64 for c in seen} == {0, 1, 2, 3}
