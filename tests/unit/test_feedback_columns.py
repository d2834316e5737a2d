"""Column-wise feedback (format 2): validation, and that stored events equal the per-event path's."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from cstore.errors import InvalidFeedback, PayloadTooLarge
from cstore.feedback import Segment
from cstore.feedback import MAX_BATCH_EVENTS, decode_block, encode_block, make_batch, reorder
from cstore.feedback import COLUMNAR_VERSION, decode_stored, make_event
from cstore.learn.hashing import FeatureHasher

NOW = 1.8e9
NAN = float("nan")


def _events(batch) -> list:
    return decode_block(msgpack.unpackb(encode_block(batch, 0, batch.n)))


def test_stored_events_equal_what_send_would_store():
    ids = ["tx-1", "tx-2", 3, "tx-4"]
    labels = [0, 1.0, True, 0.25]
    features = {
        "amount": np.array([12.5, NAN, 3.0, -1e30]),   # NaN = missing for that event
        "n_items": np.array([1, 2, 3, 2**40]),          # integers
        "new_card": np.array([True, False, True, False]),
        "country": np.array(["FR", "DE", "", "US"]),    # ASCII text: stored as fixed-width bytes
        "city": np.array(["Zürich", "Köln", "Paris", "Oslo"]),  # not ASCII: stored as a list
        "device": ["ios", None, "android", "web"],       # None = missing
        "score": [0.5, None, 2, np.float32(1.5)],
    }
    conf = [0.9, 0.8, 1.0, 0.5]
    times = [NOW - 10, NOW - 5, NOW, NOW - 1]
    batch = make_batch(ids, labels, kind="reward", confidence=conf, event_time=times, features=features, now=NOW)
    expected = []
    for i in range(4):
        feats = {}
        for name, col in features.items():
            v = col[i]
            v = v.item() if isinstance(v, np.generic) else v
            if v is not None and v == v:
                feats[name] = v
        expected.append(make_event(ids[i], labels[i], "reward", conf[i], times[i], feats, now=NOW))
    got = _events(batch)
    assert got == expected
    assert list(got[0].features) == list(features)  # the producer's column order is kept
    hasher = FeatureHasher(2**12)
    for a, b in zip(got, expected):
        ia, va = hasher.transform_one(a.features)
        ib, vb = hasher.transform_one(b.features)
        assert ia.tolist() == ib.tolist() and va.tolist() == vb.tolist()


def test_no_features_and_scalar_defaults():
    b = make_batch(np.array([7, 8]), [0, 1], kind="implicit", confidence=0.5, now=NOW)
    evs = _events(b)
    assert [(e.entity_id, e.label, e.kind, e.confidence, e.event_time, e.features) for e in evs] == [
        (7, 0.0, "implicit", 0.5, NOW, None), (8, 1.0, "implicit", 0.5, NOW, None)]


def test_reorder_and_blocks_split_a_batch_without_losing_or_mixing_events():
    n = 1000
    ids = [f"tx-{i}" for i in range(n)]
    b = make_batch(ids, np.arange(n) % 2, features={"i": np.arange(n), "s": np.array([f"v{i}" for i in range(n)])},
                   now=NOW)
    order = np.random.default_rng(1).permutation(n)
    r = reorder(b, order)
    seen = []
    for lo in range(0, n, 300):
        seen += decode_block(msgpack.unpackb(encode_block(r, lo, min(n, lo + 300))))
    assert [e.entity_id for e in seen] == [ids[i] for i in order]
    assert all(e.features == {"i": float(int(e.entity_id[3:])), "s": f"v{e.entity_id[3:]}"} for e in seen)
    assert all(e.label == int(e.entity_id[3:]) % 2 for e in seen)


def test_a_columnar_segment_decodes_like_any_other():
    b = make_batch(["a", "b", "c"], [1, 0, 1], features={"x": [1.0, 2.0, 3.0]}, now=NOW)
    seg = Segment(0, 0, [encode_block(b, 0, 2), encode_block(b, 2, 3)], version=COLUMNAR_VERSION, block_events=3)
    assert seg.n_events == 3
    events, bad = decode_stored(seg.payload())
    assert bad == 0 and [e.entity_id for e in events] == ["a", "b", "c"]


def test_damaged_blocks_are_poison_and_the_rest_is_kept():
    good = make_batch(["a", "b"], [1, 0], features={"x": [1.0, 2.0]}, now=NOW)
    block = msgpack.unpackb(encode_block(good, 0, 2))
    broken = [
        {**block, "y": b"\x00" * 3},                             # wrong column length
        {**block, "f": {"x": [0, b"\x00" * 8]}},                 # one value for two events
        {**block, "f": {"x": [9, b""]}},                         # unknown column tag
        {**block, "f": {"x": [2, 1, b"a\xff"]}},                  # an ASCII column that is not ASCII
        {**block, "k": "purchase"},                              # unknown kind
        {**block, "y": np.array([2.0, 0.0]).tobytes()},          # label out of range: poison, not learned
    ]
    payload = msgpack.packb([COLUMNAR_VERSION, block, *broken, "not a block"], use_bin_type=True)
    events, bad = decode_stored(payload)
    assert [e.entity_id for e in events] == ["a", "b", "b"]  # the last block's second event is fine
    assert bad == 2 * 5 + 1 + 1


BAD = [
    (dict(entity_ids=[]), InvalidFeedback, "1-100000 events"),
    (dict(entity_ids=["a"] * (MAX_BATCH_EVENTS + 1), labels=0), PayloadTooLarge, "split it"),
    (dict(entity_ids="abc"), InvalidFeedback, "must be a sequence"),
    (dict(entity_ids=["a", True]), InvalidFeedback, "not a bool"),
    (dict(entity_ids=["a", "x" * 300]), InvalidFeedback, "1-256 characters"),
    (dict(labels=[0, 2]), InvalidFeedback, "event 1 has 2.0"),
    (dict(labels=[0, NAN]), InvalidFeedback, "event 1 has nan"),
    (dict(labels=[0, 1, 1]), InvalidFeedback, "expected one value per event (2,)"),
    (dict(labels=["yes", "no"]), InvalidFeedback, "must be numbers"),
    (dict(kind="purchase"), InvalidFeedback, "not one of"),
    (dict(confidence=[0.5, 1.5]), InvalidFeedback, "confidence must be in [0, 1]"),
    (dict(event_time=[NOW, NOW * 1000]), InvalidFeedback, "divide by 1000"),
    (dict(event_time=[NOW, 1e6]), InvalidFeedback, "before 2000-01-01"),
    (dict(features=[1, 2]), InvalidFeedback, "mapping of name -> column"),
    (dict(features={1: [1, 2]}), InvalidFeedback, "feature names must be strings"),
    (dict(features={"a": [1.0]}), InvalidFeedback, "expected one value per event (2,)"),
    (dict(features={"a": np.array([1.0, np.inf])}), InvalidFeedback, "not finite or overflows float32"),
    (dict(features={"a": np.array([1.0, 1e39])}), InvalidFeedback, "not finite or overflows float32"),
    (dict(features={"a": ["x", 1]}), InvalidFeedback, "mixes"),
    (dict(features={"a": [{"x": 1}, None]}), InvalidFeedback, "mixes"),
    (dict(features={"a": np.array([b"x", b"y"])}), InvalidFeedback, "use numbers, bools or strings"),
    (dict(features={"a": ["x" * 600, "y"]}), PayloadTooLarge, "600-character string"),
    (dict(features={"a": np.array(["x" * 600, "y"])}), PayloadTooLarge, "600-character string"),
    (dict(features={f"f{i}": [1, 2] for i in range(1001)}), PayloadTooLarge, "limit is 1000"),
    (dict(features={f"name_{i:04d}_" + "x" * 150: ["v" * 500, "w"] for i in range(200)}), PayloadTooLarge,
     "event 0"),
]


@pytest.mark.parametrize("args, exc, words", BAD)
def test_bad_batches_are_refused_with_what_to_fix(args, exc, words):
    call = {"entity_ids": ["a", "b"], "labels": [0, 1], **args}
    with pytest.raises(exc) as info:
        make_batch(call.pop("entity_ids"), call.pop("labels"), now=NOW, **call)
    assert words in str(info.value)
