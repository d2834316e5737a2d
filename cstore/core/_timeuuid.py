"""Time-based (version 1) UUIDs at their full 100 ns resolution, in integer arithmetic.

The driver's helpers go through float seconds, which can round a stamp across a bucket boundary;
everything that derives a partition from a stamp (history buckets, feedback buckets) uses these.

>>> u = uuid_at(17_000_000_000_000_000)
>>> ticks_of(u), op_time(u)
(17000000000000000, 1700000000.0)
>>> ticks_of(min_uuid_at(42)) == ticks_of(max_uuid_at(42)) == ticks_of(uuid_at(42)) == 42
True
"""
from __future__ import annotations

import random
import time
import uuid

__all__ = ["TICKS_PER_S", "UUID_EPOCH_TICKS", "max_uuid_at", "min_uuid_at", "op_time", "ticks_now", "ticks_of",
           "uuid_at", "uuid_now"]

TICKS_PER_S = 10_000_000  # timeuuid resolution: 100 ns
UUID_EPOCH_TICKS = 0x01B21DD213814000  # 1582-10-15 (the UUID epoch) in 100 ns ticks before 1970


def ticks_now() -> int:
    """Now, in 100 ns ticks since the Unix epoch."""
    return time.time_ns() // 100


def ticks_of(u: uuid.UUID) -> int:
    """The stamp of a time-based UUID, in 100 ns ticks since the Unix epoch."""
    return u.time - UUID_EPOCH_TICKS


def op_time(u: uuid.UUID) -> float:
    """Unix time (seconds) of a time-based UUID."""
    return ticks_of(u) / TICKS_PER_S


def uuid_at(ticks: int, node: int | None = None, clock_seq: int | None = None) -> uuid.UUID:
    """A version-1 UUID at ``ticks``; random node and clock sequence unless given."""
    t = ticks + UUID_EPOCH_TICKS
    cs = random.getrandbits(14) if clock_seq is None else clock_seq
    nd = random.getrandbits(48) if node is None else node
    # The 128 bits composed here (version 1, RFC 4122 variant): `UUID(fields=..., version=1)` does the same
    # in several times the time, which showed in every add's profile.
    return uuid.UUID(int=(t & 0xFFFFFFFF) << 96 | ((t >> 32) & 0xFFFF) << 80 | (0x1000 | (t >> 48) & 0x0FFF) << 64
                     | (0x8000 | (cs & 0x3FFF)) << 48 | (nd & 0xFFFFFFFFFFFF))


def uuid_now() -> uuid.UUID:
    """A fresh version-1 UUID stamped now (random node and clock sequence)."""
    return uuid_at(ticks_now())


def max_uuid_at(ticks: int) -> uuid.UUID:
    """The greatest timeuuid at ``ticks`` in Cassandra's order (signed-byte comparison)."""
    return uuid_at(ticks, node=0x7F7F7F7F7F7F, clock_seq=0x3F7F)


def min_uuid_at(ticks: int) -> uuid.UUID:
    """The least timeuuid at ``ticks`` in Cassandra's order (signed-byte comparison)."""
    return uuid_at(ticks, node=0x808080808080, clock_seq=0x0080)
