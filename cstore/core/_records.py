"""What a chunk commit reads, writes and reports: plain records shared by every layer above.

A *transform* is a pure function from a chunk's current rows to its new arrays; the chunk engine
(:mod:`cstore.store`) calls it again on fresher rows after a lost compare-and-set, so it must not
keep state between calls.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ChunkCommit", "ChunkRow", "CommitMeta", "Increment", "Transform", "UpdateResult"]


@dataclass(frozen=True)
class Increment:
    """An additive change to some coordinates of one parameter row, waiting in the row to be folded.

    ``idx`` (chunk-local, int32) and ``vals`` (the model's dtype) are what it adds; ``blob`` is the
    entry as stored, which the compare-and-set that folds it names in its condition."""

    idx: np.ndarray
    vals: np.ndarray
    blob: bytes


@dataclass
class ChunkRow:
    """One parameter's slice of one chunk as stored: decoded data, version, and the commit that wrote it.

    ``deltas`` / ``delta_bytes``: how many small commits wait on the stored row above its full copy,
    and their size (see the chunk engine: enough of them and the next commit writes the chunk whole).

    ``pending``: the increments the row holds beside its versions (a critical label's, written without a
    compare-and-set), by op id. ``data`` includes them (what a reader should see and a learner learn
    from); ``base`` is the row at ``version`` without them (None when there are none: ``data`` then is
    the base). The next commit of the row folds them (see :mod:`cstore.store`).
    """

    param: str
    data: np.ndarray
    version: int
    op_id: uuid.UUID | None
    deltas: int = 0
    delta_bytes: int = 0
    base: np.ndarray | None = None
    pending: Mapping[uuid.UUID, Increment] = field(default_factory=dict)

    @property
    def base_data(self) -> np.ndarray:
        """The row at ``version`` without its pending increments."""
        return self.data if self.base is None else self.base


#: ``transform(chunk, {param: ChunkRow}) -> {param: (new chunk array, touched chunk-local indices)}``.
Transform = Callable[[int, Mapping[str, ChunkRow]], Mapping[str, "tuple[np.ndarray, np.ndarray]"]]


@dataclass(frozen=True)
class CommitMeta:
    """What the history records about a commit besides its data."""

    update_type: str
    learning_rate: float | None
    source: str
    metadata: str  # JSON


@dataclass
class ChunkCommit:
    """What happened to one chunk: its versions before and after, and how hard it was."""

    chunk: int
    op_id: uuid.UUID
    old_versions: dict[str, int]
    new_versions: dict[str, int]
    coords: int
    retries: int = 0
    conflicts: int = 0
    overwrites: int = 0
    bytes_written: int = 0
    resolved_after_timeout: bool = False
    cas_seconds: float = 0.0  # time of the successful conditional write itself
    touched: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class UpdateResult:
    """Which chunks were committed at which versions, and how much contention it took."""

    model: str
    commits: list[ChunkCommit] = field(default_factory=list)

    @property
    def chunks(self) -> list[int]:
        return sorted(c.chunk for c in self.commits)

    @property
    def versions(self) -> dict[tuple[str, int], int]:
        return {(p, c.chunk): v for c in self.commits for p, v in c.new_versions.items()}

    @property
    def retries(self) -> int:
        return sum(c.retries for c in self.commits)

    @property
    def conflicts(self) -> int:
        return sum(c.conflicts for c in self.commits)

    @property
    def overwrites(self) -> int:
        return sum(c.overwrites for c in self.commits)

    @property
    def coords(self) -> int:
        return sum(c.coords for c in self.commits)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "chunks": self.chunks, "coords": self.coords, "retries": self.retries,
                "conflicts": self.conflicts, "overwrites": self.overwrites,
                "versions": {f"{p}[{c}]": v for (p, c), v in sorted(self.versions.items())}}
