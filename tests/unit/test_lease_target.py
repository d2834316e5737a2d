"""Which share of a group's partitions a worker aims for (pure: the registry rows are given)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cstore.training._leases import CONCENTRATE_AFTER_S, LeaseManager


def _manager(worker: str, started: datetime) -> LeaseManager:
    m = LeaseManager(None, None, "default", 8, worker, ttl_s=10)  # type: ignore[arg-type]  # (no table is used)
    m.started_at = started
    return m


def _row(worker: str, started: datetime, behind: datetime | None = None) -> dict:
    return {"worker": worker, "started_at": started.replace(tzinfo=None), "behind_at":
            None if behind is None else behind.replace(tzinfo=None)}  # (the driver returns naive UTC)


def test_while_no_worker_is_behind_the_oldest_takes_every_partition_and_the_others_stand_by():
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    old, young = _manager("a", t0), _manager("b", t0 + timedelta(seconds=3))
    rows = [_row("a", t0), _row("b", t0 + timedelta(seconds=3))]
    assert (old.target(rows), young.target(rows)) == (8, 0)
    assert _manager("c", t0).target([]) == 8  # alone


def test_a_worker_behind_recently_spreads_the_partitions_evenly_until_it_has_caught_up_for_a_while():
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    old, young = _manager("a", t0), _manager("b", t0 + timedelta(seconds=3))
    recently = datetime.now(UTC) - timedelta(seconds=CONCENTRATE_AFTER_S / 2)
    rows = [_row("a", t0, behind=recently), _row("b", t0 + timedelta(seconds=3))]
    assert (old.target(rows), young.target(rows)) == (4, 4)
    rows += [_row("c", t0 + timedelta(seconds=9))]
    assert young.target(rows) == 3  # ceil(8 / 3)
    long_ago = datetime.now(UTC) - timedelta(seconds=CONCENTRATE_AFTER_S * 2)
    rows = [_row("a", t0, behind=long_ago), _row("b", t0 + timedelta(seconds=3))]
    assert (old.target(rows), young.target(rows)) == (8, 0)
    young.mark_behind()  # its own backlog counts at once, before its next heartbeat tells the others
    assert young.target(rows) == 4


def test_workers_started_in_the_same_millisecond_agree_on_the_oldest():
    """Cassandra keeps a timestamp to the millisecond; a worker's own start time has microseconds. Two
    workers started within one millisecond must both see the same one as the oldest."""
    t0 = datetime(2026, 12, 5, 6, 0, 0, 500, tzinfo=UTC)
    a, b = _manager("a", t0), _manager("b", t0 + timedelta(microseconds=300))
    stored = [_row("a", t0.replace(microsecond=0)), _row("b", t0.replace(microsecond=0))]  # as read back
    assert sorted([a.target(stored), b.target(stored)]) == [0, 8]
