"""A row read back takes this process's own increments from memory only when its bytes are what was written.

Pure: the codec and the rows are built here; the adds' round trip through Cassandra is
tests/integration/test_increments.py.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from cstore.core import CodecPipeline, Increment, ModelInfo, uuid_now
from cstore.errors import CorruptData
from cstore.store._increments import WrittenIncrements, decode_pending, encode_increment

INFO = ModelInfo("m", uuid.uuid4(), 8, "float32", {"w": (16,)})
CODEC = CodecPipeline()


def _written(op: uuid.UUID, idx: list[int], vals: list[float]) -> Increment:
    i, v = np.array(idx, np.int32), np.array(vals, np.float32)
    return Increment(i, v, encode_increment(CODEC, INFO, 1, "w", op, i, v))


def test_an_entry_stored_as_written_is_taken_from_memory_and_equals_its_decoding():
    written, op = WrittenIncrements(), uuid_now()
    inc = _written(op, [2, 5], [0.5, -1.0])
    written.add(INFO.model_id, 1, "w", op, inc)
    got = decode_pending(CODEC, INFO, 1, "w", {op: inc.blob}, None, written)
    assert got[op] is inc  # not decoded again
    fresh = decode_pending(CODEC, INFO, 1, "w", {op: inc.blob})[op]
    assert fresh is not inc and fresh.idx.tolist() == inc.idx.tolist() and fresh.vals.tolist() == inc.vals.tolist()


def test_a_row_holding_other_bytes_under_the_op_is_decoded_and_checked():
    written, op = WrittenIncrements(), uuid_now()
    written.add(INFO.model_id, 1, "w", op, _written(op, [2], [0.5]))
    other = _written(op, [3], [7.0]).blob  # what the row really holds under that key
    assert decode_pending(CODEC, INFO, 1, "w", {op: other}, None, written)[op].vals.tolist() == [7.0]
    with pytest.raises(CorruptData):  # a damaged entry is refused, never replaced by the remembered one
        decode_pending(CODEC, INFO, 1, "w", {op: other[:-3]}, None, written)


def test_entries_a_row_no_longer_holds_are_forgotten_and_the_rest_bounded():
    written = WrittenIncrements(limit=3)
    ops = [uuid_now() for _ in range(3)]
    incs = [_written(op, [i], [1.0]) for i, op in enumerate(ops)]
    for op, inc in zip(ops, incs):
        written.add(INFO.model_id, 1, "w", op, inc)
    assert set(written.of(INFO.model_id, 1, "w", {ops[2]: incs[2].blob})) == {ops[2]}  # 0 and 1 were folded
    assert written.of(INFO.model_id, 1, "w", {ops[0]: incs[0].blob}) == {}  # ... and are gone
    for op, inc in zip(ops, incs):  # past the limit all is forgotten: the rows are decoded instead
        written.add(INFO.model_id, 1, "w", op, inc)
    written.add(INFO.model_id, 2, "w", ops[0], incs[0])
    assert written.of(INFO.model_id, 1, "w", {op: inc.blob for op, inc in zip(ops, incs)}) == {}
