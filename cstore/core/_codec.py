"""Arrays to bytes and back, as a small codec pipeline (in the spirit of zarr's codecs).

Knows nothing of Cassandra. A chunk is msgpack ``{"v": 1, "dtype": "<f4", "shape": [n],
"data": <raw little-endian bytes>}``; an array of at least ``SPARSE_MIN_SIZE`` elements that is
smaller so is stored sparse instead: ``"mask"`` holds one bit per element (set where the element's
bits are not all zero, so ``-0.0`` survives) and ``"data"`` only those elements. Hashed models are
mostly zeros until their features have been seen, and optimizer state even more so: this cuts what
every commit writes, and Cassandra's work with it. Further codecs (e.g. encryption,
``cstore.core.AesGcmStage``) wrap those bytes. ``context`` identifies what a blob *is* (model, chunk, parameter, see
:func:`chunk_context`); stages that authenticate bind their output to it, so that a blob
copied to another place in the database is refused.

>>> import numpy as np
>>> pipe = CodecPipeline()
>>> a = np.arange(4, dtype="float32")
>>> bool((pipe.decode(pipe.encode(a)) == a).all())
True
"""
from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import msgpack
import numpy as np

from cstore.errors import CorruptData, KeyUnavailable, ValidationError

ALLOWED_DTYPES = ("float32", "float64", "int32", "int64")
_FORMAT_VERSION = 1
SPARSE_MIN_SIZE = 256  # smaller arrays are always stored dense: the mask would not pay for itself
_UINT = {4: np.uint32, 8: np.uint64}


# Encrypted envelopes start with this (see cstore/crypto.py); known here only to give a clear
# error when encrypted chunks are read without the key.
ENCRYPTED_MAGIC = b"CSE1"


class BytesCodec(Protocol):
    """A bytes → bytes stage (compression, encryption); ``context`` is associated data."""

    def encode(self, data: bytes, context: bytes = b"") -> bytes: ...

    def decode(self, data: bytes, context: bytes = b"", what: str = "chunk") -> bytes: ...


def _packb(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def chunk_context(model_id: uuid.UUID, chunk: int, param: str) -> bytes:
    """Associated data naming one stored chunk: model incarnation, chunk index, parameter."""
    return b"|".join((model_id.bytes, int(chunk).to_bytes(8, "big", signed=True), param.encode("utf-8")))


# dtype -> (its name, its little-endian form): numpy computes ``dtype.name`` in Python each time, which
# was a third of encoding a small array (a delta entry, an increment, a history row).
_DTYPES: dict[np.dtype[Any], tuple[str, np.dtype[Any]]] = {}


def _dtype_of(array: np.ndarray) -> tuple[np.dtype[Any], str, np.dtype[Any]]:
    dtype = array.dtype
    known = _DTYPES.get(dtype)
    if known is None:
        known = _DTYPES[dtype] = (dtype.name, dtype.newbyteorder("<"))
    return dtype, known[0], known[1]


def encode_array(array: np.ndarray) -> bytes:
    """Encode one numpy array (any shape) as msgpack with dtype and shape."""
    dtype, name, little = _dtype_of(np.asarray(array))
    if name not in ALLOWED_DTYPES:
        raise CorruptData(f"cannot encode dtype {name}; allowed: {', '.join(ALLOWED_DTYPES)}")
    if dtype.kind == "f" and not np.isfinite(array).all():
        # The last line of defence for commits that bypass Store.apply_update's validation (custom transforms).
        bad = int(np.flatnonzero(~np.isfinite(np.asarray(array).reshape(-1)))[0])
        raise ValidationError(f"refusing to store NaN or infinity (first at position {bad} of the chunk); "
                              f"the update or optimizer diverged: lower the learning rate; nothing was written")
    le = np.ascontiguousarray(array, dtype=little)
    out = {"v": _FORMAT_VERSION, "dtype": name, "shape": list(le.shape)}
    flat = le.reshape(-1)
    if flat.size >= SPARSE_MIN_SIZE:
        present = flat.view(_UINT[dtype.itemsize]) != 0  # by bit pattern: -0.0 is kept as it is
        n_present = int(np.count_nonzero(present))
        if (flat.size + 7) // 8 + n_present * dtype.itemsize < flat.size * dtype.itemsize:
            out["mask"] = np.packbits(present).tobytes()
            out["data"] = flat[present].tobytes()
            return _packb(out)
    out["data"] = le.tobytes()
    return _packb(out)


def _densify(obj: dict[str, Any], dtype: str, size: int) -> bytes:
    """The dense payload of a sparse chunk (mask + present elements), checked for consistency."""
    mask, data = obj["mask"], obj["data"]
    itemsize = np.dtype(dtype).itemsize
    if not isinstance(mask, bytes) or not isinstance(data, bytes) or len(mask) != (size + 7) // 8:
        raise CorruptData(f"sparse chunk has a {len(mask) if isinstance(mask, bytes) else '?'}-byte mask for "
                          f"{size} elements; the chunk is truncated or corrupt")
    present = np.unpackbits(np.frombuffer(mask, np.uint8), count=size).astype(bool)
    if int(np.count_nonzero(present)) * itemsize != len(data):
        raise CorruptData(f"sparse chunk lists {int(np.count_nonzero(present))} elements but holds "
                          f"{len(data)} bytes; the chunk is truncated or corrupt")
    dense = np.zeros(size, dtype=_UINT[itemsize])
    dense[present] = np.frombuffer(data, dtype=_UINT[itemsize])
    return dense.tobytes()


# dtype name -> (native dtype, little-endian dtype, itemsize): decoding a small array (an increment,
# a history delta) spent half its time building these again.
_DECODE: dict[str, tuple[np.dtype[Any], np.dtype[Any], int]] = {}


def _decoded_dtype(name: Any) -> tuple[np.dtype[Any], np.dtype[Any], int]:
    known = _DECODE.get(name) if isinstance(name, str) else None
    if known is None:
        if name not in ALLOWED_DTYPES:
            raise CorruptData(f"chunk has dtype {name!r}; allowed: {', '.join(ALLOWED_DTYPES)}")
        native = np.dtype(name)
        known = _DECODE[name] = (native, native.newbyteorder("<"), native.itemsize)
    return known


def decode_array(blob: bytes, *, expect_dtype: str | None = None,
                 expect_shape: Sequence[int] | None = None) -> np.ndarray:
    """Decode :func:`encode_array` output, checking it is whole and what the caller expects."""
    if blob[:4] == ENCRYPTED_MAGIC:
        raise KeyUnavailable("chunk is encrypted but no encryption key is configured; set "
                             "CSTORE_ENCRYPTION_KEY or CSTORE_ENCRYPTION_KEY_FILE to read it")
    try:
        obj = msgpack.unpackb(blob, raw=False)
    except Exception as exc:
        raise CorruptData(f"chunk is not valid msgpack ({type(exc).__name__}: {exc}); "
                          f"it may be truncated: restore the model from a snapshot") from None
    if not isinstance(obj, dict) or obj.get("v") != _FORMAT_VERSION or \
            "dtype" not in obj or "shape" not in obj or "data" not in obj:
        raise CorruptData("chunk has an unknown layout (expected msgpack map with v, dtype, shape, data)")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    native, little, itemsize = _decoded_dtype(dtype)
    if expect_dtype is not None and dtype != expect_dtype:
        raise CorruptData(f"chunk has dtype {dtype} but the model stores {expect_dtype}")
    if (not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape)
            or not isinstance(data, bytes)):
        raise CorruptData(f"chunk has an invalid shape {shape!r} or payload")
    size = math.prod(shape)
    if "mask" in obj:
        data = _densify(obj, dtype, size)
    if size * itemsize != len(data):
        raise CorruptData(f"chunk payload is {len(data)} bytes but shape {shape} of {dtype} needs "
                          f"{size * itemsize}; the chunk is truncated or corrupt")
    if expect_shape is not None and list(expect_shape) != shape:
        raise CorruptData(f"chunk has shape {shape} but {list(expect_shape)} was expected")
    out = np.frombuffer(data, dtype=little)
    if little != native:  # (a big-endian host: a copy in its own order)
        out = out.astype(native)
    if len(shape) != 1:
        out = out.reshape(shape)
    if native.kind == "f" and not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out.reshape(-1)))[0])
        raise CorruptData(f"chunk holds NaN or infinity (first at position {bad}); it was not written by cstore's "
                          f"validated path: roll the model back to a snapshot")
    return out


def history_context(model_id: uuid.UUID, chunk: int, param: str, op_id: uuid.UUID) -> bytes:
    """Associated data naming one history delta: its chunk and parameter, and the commit it records."""
    return chunk_context(model_id, chunk, param) + b"|op|" + op_id.bytes


def increment_context(model_id: uuid.UUID, chunk: int, param: str, op_id: uuid.UUID) -> bytes:
    """Associated data naming one pending increment of a stored chunk: its chunk and parameter, and the
    op that wrote it (an increment moved to another key or row fails authentication)."""
    return chunk_context(model_id, chunk, param) + b"|inc|" + op_id.bytes


def segment_context(model_id: uuid.UUID, part: int, lane: int, bucket: int, seg_id: uuid.UUID) -> bytes:
    """Associated data naming one feedback segment row: its model, storage partition and segment id."""
    return (b"seg|" + model_id.bytes + int(part).to_bytes(4, "big", signed=True)
            + int(lane).to_bytes(4, "big", signed=True) + int(bucket).to_bytes(8, "big", signed=True) + seg_id.bytes)


def features_context(model_id: uuid.UUID, entity_id: str, scored_at: uuid.UUID) -> bytes:
    """Associated data naming one prediction-log row: its model, entity and scoring time."""
    return b"plog|" + model_id.bytes + scored_at.bytes + str(entity_id).encode("utf-8")


def metadata_context(model_id: uuid.UUID, chunk: int, param: str, op_id: uuid.UUID) -> bytes:
    """Associated data naming the metadata of one history row (distinct from its delta's)."""
    return history_context(model_id, chunk, param, op_id) + b"|meta"


def delta_context(model_id: uuid.UUID, chunk: int, param: str, version: int) -> bytes:
    """Associated data naming one delta entry of a stored chunk: its chunk and parameter, and the
    version it produces (an entry moved to another key or row fails authentication)."""
    return chunk_context(model_id, chunk, param) + b"|v|" + int(version).to_bytes(8, "big", signed=True)


class CodecPipeline:
    """``encode``: array → msgpack → each bytes codec in order; ``decode`` reverses it.

    ``encode_bytes``/``decode_bytes`` run only the bytes stages: history deltas, which are not one
    array, go through them so that encryption at rest covers them too.
    """

    def __init__(self, stages: Sequence[BytesCodec] = ()) -> None:
        self.stages = list(stages)

    def encode(self, array: np.ndarray, *, context: bytes = b"") -> bytes:
        return self.encode_bytes(encode_array(array), context=context)

    def decode(self, blob: bytes, *, expect_dtype: str | None = None,
               expect_shape: Sequence[int] | None = None, context: bytes = b"") -> np.ndarray:
        return decode_array(self.decode_bytes(blob, context=context), expect_dtype=expect_dtype,
                            expect_shape=expect_shape)

    def encode_bytes(self, data: bytes, *, context: bytes = b"") -> bytes:
        for stage in self.stages:
            data = stage.encode(data, context)
        return data

    def decode_bytes(self, blob: bytes, *, context: bytes = b"", what: str = "chunk") -> bytes:
        """Reverse :meth:`encode_bytes`; ``what`` names the stored thing in errors. An encrypted blob
        read by a pipeline without the encryption stage is refused (``KeyUnavailable``), never
        passed on as if it were plain bytes."""
        if not self.stages and bytes(blob[:4]) == ENCRYPTED_MAGIC:
            raise KeyUnavailable(f"{what} is encrypted but no encryption key is configured; set "
                                 f"CSTORE_ENCRYPTION_KEY or CSTORE_ENCRYPTION_KEY_FILE to read it")
        for stage in reversed(self.stages):
            blob = stage.decode(blob, context, what)
        return blob

    @property
    def encrypts(self) -> bool:
        """Whether anything this pipeline writes is sealed (encryption at rest is on)."""
        return bool(self.stages)


SEALED_TEXT_PREFIX = "cse1:"  # a sealed blob kept in a text column (history metadata), base64 after it


def seal_text(codec: CodecPipeline, text: str, context: bytes) -> str:
    """``text`` as a text column stores it: sealed and base64'd when encryption is on, else unchanged."""
    if not codec.encrypts:
        return text
    return SEALED_TEXT_PREFIX + base64.b64encode(codec.encode_bytes(text.encode("utf-8"), context=context)).decode()


def open_text(codec: CodecPipeline, stored: str, context: bytes, what: str) -> str:
    """Reverse :func:`seal_text`. Plain text is accepted as it is even with encryption on: rows written
    before their column was sealed (history metadata before issue 17) stay readable."""
    if not stored.startswith(SEALED_TEXT_PREFIX):
        return stored
    try:
        blob = base64.b64decode(stored[len(SEALED_TEXT_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise CorruptData(f"sealed {what} is not base64; the row was damaged") from None
    if not blob.startswith(ENCRYPTED_MAGIC):
        raise CorruptData(f"sealed {what} has no encryption envelope; the row was damaged")
    try:
        return codec.decode_bytes(blob, context=context, what=what).decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptData(f"sealed {what} is not UTF-8 text once opened") from None


def encode_sparse(indices: np.ndarray, values: np.ndarray) -> bytes:
    """A sparse post-image: the values at ``indices`` (chunk-local) after an update.

    Increasing indices that cover more than 1/32 of their range are stored as a bit mask ("m"),
    else as int32s ("i"): a big commit's history then costs ~1 bit instead of 32 per coordinate.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    out: dict[str, bytes] = {"x": encode_array(np.asarray(values))}
    span = int(idx[-1]) + 1 if idx.size else 0
    if idx.size and idx[0] >= 0 and (span + 7) // 8 < 4 * idx.size and bool(np.all(idx[1:] > idx[:-1])):
        mask = np.zeros(span, dtype=bool)
        mask[idx] = True
        out["m"] = np.packbits(mask).tobytes()
    else:
        out["i"] = encode_array(idx.astype(np.int32))
    return _packb(out)


def decode_sparse(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = msgpack.unpackb(blob, raw=False)
        values = decode_array(obj["x"])
        if "m" in obj:  # a bit mask of the indices (see encode_sparse)
            indices = np.flatnonzero(np.unpackbits(np.frombuffer(obj["m"], dtype=np.uint8))).astype(np.int32)
        else:
            indices = decode_array(obj["i"])
        if indices.shape != values.shape[:1]:
            raise CorruptData(f"history delta has {indices.size} indices for {values.shape[0]} values")
        return indices, values
    except CorruptData:
        raise
    except Exception as exc:
        raise CorruptData(f"history delta cannot be decoded: {exc}") from None
