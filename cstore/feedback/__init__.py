"""Feedback: labels and rewards in, learning material out.

* events — :func:`make_event` validates one event at the boundary (nothing is written if it is bad);
  :func:`make_batch` validates a batch given as columns, vectorised.
* writing — :class:`FeedbackWriter` buffers per partition and lane, seals segments (one CQL row,
  many events) and writes them in the background with back-pressure; :func:`send_feedback` writes
  one event durably. The lateness contract (``_layout``) lets consumers checkpoint by time.
* reading — :class:`FeedbackReader` lists segments past a checkpoint without missing late ones,
  fetches and decodes them (poison events are counted and set aside), and saves checkpoints
  conditioned on the lease.
* the prediction log — :class:`PredictionLogWriter` records what scorers saw (asynchronously, with a
  TTL); :class:`PredictionLog` joins labels that come without features to it.
* erasure — :func:`erase_entity` removes one entity's events and prediction-log rows (rewriting the
  segments it shares with others, safe under running workers) and records it (:func:`erasures`);
  learned weights are not unlearned.
"""
from cstore.feedback._columns import (IN_COLUMNS, MAX_BATCH_EVENTS, Batch, decode_block, encode_block, feature_rows,
                                     make_batch, reorder)
from cstore.feedback._events import (DEFAULT_PRIORITIES, KINDS, MAX_EVENT_BYTES, MAX_FEATURES, Event, encode_event,
                                     make_event)
from cstore.feedback._layout import FeedbackContext, FeedbackLayout, check_layout, context
from cstore.feedback._prediction_log import (REVIEW_BANDS, REVIEW_BUCKET_S, LogCounters, PredictionLog, ReviewCandidate,
                                             band_of, encode_features)
from cstore.feedback._prediction_writer import PredictionLogWriter
from cstore.feedback._reader import FeedbackReader, LaneCursor, LaneListing, SegmentRef
from cstore.feedback._erasure import ErasureReport, entity_hash, erase_entity, erasures
from cstore.feedback._segments import (COLUMNAR_VERSION, PAYLOAD_VERSION, ColumnSpan, Segment, decode_payload,
                                      decode_stored, open_segment, seal_segment)
from cstore.feedback._write import WriteReport, raise_failures, send_feedback, write_segments
from cstore.feedback._writer import MAX_SEGMENT_BYTES, FeedbackWriter

__all__ = [
    "COLUMNAR_VERSION", "DEFAULT_PRIORITIES", "IN_COLUMNS", "KINDS", "MAX_BATCH_EVENTS", "MAX_EVENT_BYTES",
    "MAX_FEATURES", "MAX_SEGMENT_BYTES", "PAYLOAD_VERSION", "REVIEW_BANDS", "REVIEW_BUCKET_S", "Batch",
    "ColumnSpan", "ErasureReport", "Event", "FeedbackContext", "FeedbackLayout", "FeedbackReader", "FeedbackWriter",
    "LaneCursor", "LaneListing", "LogCounters", "PredictionLog", "PredictionLogWriter", "ReviewCandidate",
    "Segment", "SegmentRef", "WriteReport", "band_of", "check_layout", "context", "decode_block", "decode_payload",
    "decode_stored", "encode_block", "encode_event", "encode_features", "entity_hash", "erase_entity", "erasures",
    "feature_rows", "make_batch", "make_event", "open_segment", "raise_failures", "reorder", "seal_segment",
    "send_feedback", "write_segments",
]
