"""The chunk codec: dense and sparse layouts round-trip bit for bit; damaged sparse chunks are refused."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cstore.core import SPARSE_MIN_SIZE, decode_array, decode_sparse, encode_array, encode_sparse
from cstore.errors import CorruptData


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 3000), density=st.floats(0.0, 1.0), dtype=st.sampled_from(["float32", "float64",
                                                                                       "int32", "int64"]),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip_is_exact_whatever_the_density(size, density, dtype, seed):
    rng = np.random.default_rng(seed)
    a = np.where(rng.random(size) < density, rng.normal(size=size) * 100, 0).astype(dtype)
    if size and np.dtype(dtype).kind == "f":
        a[rng.integers(size)] = -0.0  # a zero by value but not by bits: must survive
    out = decode_array(encode_array(a), expect_dtype=dtype, expect_shape=[size])
    assert out.dtype == a.dtype and out.tobytes() == a.tobytes()


def test_mostly_zero_chunks_are_stored_sparse_and_small():
    a = np.zeros(16384, np.float32)
    a[::16] = 1.5  # 6 % present, as a hashed model early on
    blob = encode_array(a)
    assert "mask" in msgpack.unpackb(blob) and len(blob) < 0.1 * a.nbytes
    dense = np.ones(16384, np.float32)
    assert "mask" not in msgpack.unpackb(encode_array(dense))  # no zeros: dense is smaller
    small = np.zeros(SPARSE_MIN_SIZE - 1, np.float32)
    assert "mask" not in msgpack.unpackb(encode_array(small))


def _sparse_blob(**fields) -> bytes:
    a = np.zeros(1024, np.float32)
    a[:10] = 2.0
    obj = msgpack.unpackb(encode_array(a))
    obj.update(fields)
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("fields, message", [
    ({"mask": b"\xff" * 10}, "10-byte mask for 1024 elements"),
    ({"data": np.float32(2.0).tobytes() * 9}, "lists 10 elements but holds 36 bytes"),
    ({"mask": "not bytes"}, "mask for 1024 elements"),
])
def test_damaged_sparse_chunks_are_refused(fields, message):
    with pytest.raises(CorruptData, match=message):
        decode_array(_sparse_blob(**fields), expect_dtype="float32", expect_shape=[1024])


@pytest.mark.parametrize("indices", [
    np.arange(0, 4096, 3),              # dense enough: stored as a bit mask
    np.array([5, 9, 4000]),             # sparse: stored as int32s
    np.array([7, 3, 5]),                # not increasing: int32s, order kept
    np.array([], dtype=np.int64),       # nothing touched
])
def test_history_deltas_round_trip_in_either_index_layout(indices):
    values = np.random.default_rng(0).normal(size=len(indices)).astype(np.float32)
    blob = encode_sparse(indices, values)
    got_i, got_x = decode_sparse(blob)
    assert got_i.tolist() == indices.tolist() and got_x.tobytes() == values.tobytes()
    assert ("m" in msgpack.unpackb(blob)) == (len(indices) > 100)


def test_a_history_delta_whose_mask_and_values_disagree_is_refused():
    blob = msgpack.unpackb(encode_sparse(np.arange(0, 4096, 3), np.ones(1366, np.float32)))
    blob["x"] = encode_array(np.ones(5, np.float32))
    with pytest.raises(CorruptData, match="1366 indices for 5 values"):
        decode_sparse(msgpack.packb(blob, use_bin_type=True))
