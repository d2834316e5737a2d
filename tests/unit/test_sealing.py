"""Sealing rows other than chunks (issue 17): each context names exactly one row, and text columns round-trip."""
from __future__ import annotations

import base64
import uuid

import pytest

from cstore.core import (AesGcmStage, CodecPipeline, Keyring, features_context, metadata_context, open_text,
                         seal_text, segment_context)
from cstore.errors import CorruptData, KeyUnavailable

RING = Keyring.parse("k1:" + base64.b64encode(b"1" * 32).decode())
SEALED = CodecPipeline([AesGcmStage(RING)])
M, S = uuid.UUID(int=1), uuid.UUID(int=2)


def test_every_field_of_a_segment_or_log_row_changes_its_context():
    base = segment_context(M, 1, 0, 7, S)
    variants = [segment_context(uuid.UUID(int=9), 1, 0, 7, S), segment_context(M, 2, 0, 7, S),
                segment_context(M, 1, 1, 7, S), segment_context(M, 1, 0, 8, S),
                segment_context(M, 1, 0, 7, uuid.UUID(int=3))]
    assert len({base, *variants}) == 6
    log = features_context(M, "tx-1", S)
    assert len({log, features_context(M, "tx-2", S), features_context(M, "tx-1", uuid.UUID(int=3)),
                features_context(uuid.UUID(int=9), "tx-1", S)}) == 4
    assert metadata_context(M, 0, "w", S) != metadata_context(M, 0, "b", S)


def test_a_sealed_blob_opens_only_in_its_own_row():
    blob = SEALED.encode_bytes(b"events", context=segment_context(M, 1, 0, 7, S))
    assert SEALED.decode_bytes(blob, context=segment_context(M, 1, 0, 7, S), what="feedback segment") == b"events"
    with pytest.raises(CorruptData, match="encrypted feedback segment failed authentication"):
        SEALED.decode_bytes(blob, context=segment_context(M, 2, 0, 7, S), what="feedback segment")
    with pytest.raises(KeyUnavailable, match="feedback segment is encrypted but no encryption key"):
        CodecPipeline().decode_bytes(blob, what="feedback segment")


def test_text_columns_are_sealed_only_with_encryption_on_and_plain_text_stays_readable():
    ctx = metadata_context(M, 0, "w", S)
    assert seal_text(CodecPipeline(), '{"a": 1}', ctx) == '{"a": 1}'
    sealed = seal_text(SEALED, '{"analyst": "jane"}', ctx)
    assert sealed.startswith("cse1:") and "jane" not in sealed
    assert open_text(SEALED, sealed, ctx, "history metadata") == '{"analyst": "jane"}'
    assert open_text(SEALED, '{"old": true}', ctx, "history metadata") == '{"old": true}'  # from before sealing
    with pytest.raises(KeyUnavailable):
        open_text(CodecPipeline(), sealed, ctx, "history metadata")


@pytest.mark.parametrize("stored, message", [
    ("cse1:%%%", "not base64"),
    ("cse1:" + base64.b64encode(b"plain").decode(), "no encryption envelope"),
    ("cse1:" + base64.b64encode(b"CSE1\x02k1").decode(), "truncated"),
])
def test_damaged_sealed_text_is_refused(stored, message):
    with pytest.raises(CorruptData, match=message):
        open_text(SEALED, stored, metadata_context(M, 0, "w", S), "history metadata")
