"""The pure core: what a model is, what an update is, and how arrays become bytes.

No I/O, no threads, no logging, no driver: everything here can be reasoned about (and tested) from
its arguments alone. The layers above (``store``, ``feedback``, ``training``, ``scoring``) build on
these records and rules; ``backend`` stores the bytes they produce.

* :class:`ModelInfo` — a model's identity, parameter shapes, chunking and dtype; validation of names
  and specs (:func:`validate_name`, :func:`validate_spec`, :func:`encode_metadata`).
* updates — :func:`split_update` validates a user's update and splits it by chunk;
  :func:`make_transform` turns it into the pure chunk transform the commit protocol re-applies.
* records — :class:`ChunkRow`, :class:`CommitMeta`, :class:`ChunkCommit`, :class:`UpdateResult`.
* codec — :class:`CodecPipeline` (msgpack arrays, dense or sparse, then bytes stages such as
  :class:`AesGcmStage`); every blob is bound to its place by :func:`chunk_context` /
  :func:`history_context` (and, for what the rooms above store seal with the same key ring,
  :func:`segment_context`, :func:`features_context`, :func:`metadata_context`).
* aliases — :func:`parse_model_ref` (``fraud@champion``), :func:`parse_target`, :class:`Alias`.
* time-based UUIDs at 100 ns resolution (:func:`uuid_now`, :func:`ticks_of`, …).
"""
from cstore.core._aliases import HEAD, Alias, parse_model_ref, parse_target, validate_alias
from cstore.core._codec import (ALLOWED_DTYPES, ENCRYPTED_MAGIC, SEALED_TEXT_PREFIX, SPARSE_MIN_SIZE, BytesCodec,
                                CodecPipeline, chunk_context, decode_array, decode_sparse, delta_context, encode_array,
                                encode_sparse, features_context, history_context, increment_context, metadata_context,
                                open_text, seal_text, segment_context)
from cstore.core._crypto import ENV_ALLOW_PLAINTEXT, ENV_KEY, ENV_KEY_FILE, AesGcmStage, Keyring, new_key
from cstore.core._models import (DEFAULT_CHUNK_SIZE, DTYPES, MAX_CHUNK, MIN_CHUNK, ModelInfo, encode_metadata,
                                 validate_name, validate_spec)
from cstore.core._records import ChunkCommit, ChunkRow, CommitMeta, Increment, Transform, UpdateResult
from cstore.core._timeuuid import (TICKS_PER_S, UUID_EPOCH_TICKS, max_uuid_at, min_uuid_at, op_time, ticks_now,
                                   ticks_of, uuid_at, uuid_now)
from cstore.core._updates import (SOURCES, UPDATE_TYPES, ChunkChange, check_kind, check_learning_rate, make_transform,
                                  split_update, validated_update)

__all__ = [
    "ALLOWED_DTYPES", "DEFAULT_CHUNK_SIZE", "DTYPES", "ENCRYPTED_MAGIC", "ENV_ALLOW_PLAINTEXT", "ENV_KEY",
    "ENV_KEY_FILE", "HEAD", "MAX_CHUNK", "MIN_CHUNK", "SEALED_TEXT_PREFIX", "SOURCES", "SPARSE_MIN_SIZE",
    "TICKS_PER_S", "UPDATE_TYPES", "UUID_EPOCH_TICKS", "AesGcmStage", "Alias", "BytesCodec", "ChunkChange",
    "ChunkCommit", "ChunkRow", "CodecPipeline", "CommitMeta", "Increment", "Keyring", "ModelInfo", "Transform",
    "UpdateResult",
    "check_kind", "check_learning_rate", "chunk_context", "decode_array", "decode_sparse", "delta_context",
    "encode_array", "encode_metadata", "encode_sparse", "features_context", "history_context", "increment_context",
    "make_transform",
    "max_uuid_at", "metadata_context", "min_uuid_at", "new_key", "op_time", "open_text", "parse_model_ref",
    "parse_target", "seal_text", "segment_context", "split_update", "ticks_now", "ticks_of", "uuid_at", "uuid_now",
    "validate_alias", "validate_name", "validate_spec", "validated_update",
]
