"""The label-rate CUSUM: a rate change found, stationary rates quiet, rare positives not armed, state round trips."""
from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from cstore.learn import LabelRateCUSUM
from cstore.learn.drift import detector_from_state

SEEDS = [0, 1, 2]
BLOCK = 20


def _feed_blocks(det: LabelRateCUSUM, labels: np.ndarray, block: int = BLOCK) -> list[int]:
    """Feed ``labels`` in blocks as counts; the label index at the end of each block that alarmed."""
    return [lo + block for lo in range(0, labels.size, block)
            if det.update_counts(float(labels[lo:lo + block].size), float(labels[lo:lo + block].sum()))]


@pytest.mark.parametrize("before, after", [(0.38, 0.20), (0.64, 0.76), (0.5, 0.4), (0.1, 0.2)])
def test_a_change_of_the_positive_rate_is_found_within_1000_labels(before, after):
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        labels = np.concatenate([rng.random(8000) < before, rng.random(4000) < after]).astype(float)
        one_by_one = LabelRateCUSUM()
        for hits in (_feed_blocks(LabelRateCUSUM(), labels),
                     [i + 1 for i, y in enumerate(labels.tolist()) if one_by_one.update(y)]):
            assert hits, f"{before} -> {after} missed (seed {seed})"
            assert 8000 < hits[0] <= 9000, f"{before} -> {after}: first alarm at {hits[0]} (seed {seed})"


@pytest.mark.parametrize("rate", [0.5, 0.2, 0.05])
def test_no_alarm_on_labels_of_a_fixed_rate(rate):
    for seed in SEEDS:
        labels = (np.random.default_rng(100 + seed).random(60_000) < rate).astype(float)
        det = LabelRateCUSUM()
        assert _feed_blocks(det, labels) == [], f"rate {rate} seed {seed}"
        assert det.armed and det.n == 60_000


def test_the_order_of_labels_within_a_batch_does_not_matter():
    rng = np.random.default_rng(7)
    labels = np.concatenate([rng.random(6000) < 0.3, rng.random(2000) < 0.45]).astype(float)
    a, b = LabelRateCUSUM(), LabelRateCUSUM()
    for lo in range(0, labels.size, 100):
        batch = labels[lo:lo + 100]
        a.update_counts(float(batch.size), float(batch.sum()))
        shuffled = rng.permutation(batch)
        b.update_counts(float(shuffled.size), float(shuffled.sum()))
        assert a.get_state() == b.get_state()
    assert a.n_detections == 1


def test_rare_positives_arm_the_test_only_once_the_reference_holds_enough_information():
    det = LabelRateCUSUM()  # min_information 400: n p (1 - p) >= 400
    rng = np.random.default_rng(3)
    rare = (rng.random(20_000) < 0.01).astype(float)
    assert _feed_blocks(det, rare) == [] and not det.armed and det.statistic == 0.0
    burst = np.ones(40)  # 40 positives in a row: alarming at a 1 % rate, but the reference is too thin
    assert _feed_blocks(det, burst) == [] and not det.armed
    common = LabelRateCUSUM()
    _feed_blocks(common, (rng.random(2000) < 0.5).astype(float))
    assert common.armed  # 2,000 labels at 0.5 hold n p (1 - p) = 500


def test_state_round_trips_through_json_and_msgpack_and_continues_identically():
    rng = np.random.default_rng(11)
    labels = np.concatenate([rng.random(3000) < 0.4, rng.random(3000) < 0.6]).astype(float)
    det = LabelRateCUSUM()
    _feed_blocks(det, labels[:4000])
    for codec in (lambda s: json.loads(json.dumps(s)), lambda s: msgpack.unpackb(msgpack.packb(s), raw=False)):
        copy = detector_from_state(codec(det.get_state()))
        assert isinstance(copy, LabelRateCUSUM) and copy.get_state() == det.get_state()
        assert _feed_blocks(copy, labels[4000:]) == _feed_blocks(LabelRateCUSUM.from_state(det.get_state()),
                                                                  labels[4000:])
        assert copy.n_detections >= 1


def test_a_detection_restarts_the_reference():
    det = LabelRateCUSUM(min_information=50.0)
    hits = _feed_blocks(det, np.array([float(i % 5 == 0) for i in range(3000)] + [1.0] * 200))
    assert len(hits) == 1 and det.n_detections == 1 and det.n < 200 and not det.armed


@pytest.mark.parametrize("kwargs", [{"shift": 0.0}, {"shift": float("nan")}, {"threshold": -1.0},
                                    {"min_information": -1.0}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        LabelRateCUSUM(**kwargs)


@pytest.mark.parametrize("n, positives", [(10.0, 11.0), (-1.0, 0.0), (5.0, -1.0), (float("inf"), 1.0)])
def test_impossible_counts_are_refused(n, positives):
    with pytest.raises(ValueError):
        LabelRateCUSUM().update_counts(n, positives)


def test_a_state_of_another_detector_is_refused():
    with pytest.raises(ValueError, match="not a LabelRateCUSUM state"):
        LabelRateCUSUM.from_state({"type": "PageHinkley", "version": 1})
