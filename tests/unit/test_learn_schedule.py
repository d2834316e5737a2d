"""Adaptive learning rate, age weighting and feedback-kind weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cstore.learn.schedule import KIND_WEIGHTS, AdaptiveLearningRate, age_weights, kind_weights


def test_rises_on_drift_and_decays_back_with_half_life():
    lr = AdaptiveLearningRate(drift_boost=3.0, decay_half_life=1000, max_scale=10.0)
    lr.update(0.4, 500)
    assert lr.scale == pytest.approx(1.0)
    lr.on_drift()
    assert lr.scale == pytest.approx(3.0)
    lr.update(0.4, 1000)  # one half-life: log-boost halves, 3 -> sqrt(3)
    assert lr.scale == pytest.approx(math.sqrt(3.0))
    lr.update(0.4, 1000)
    assert lr.scale == pytest.approx(3.0 ** 0.25)
    lr.update(0.4, 20_000)
    assert lr.scale == pytest.approx(1.0, abs=1e-5)


def test_drifts_stack_up_to_max_scale():
    lr = AdaptiveLearningRate(drift_boost=3.0, max_scale=10.0)
    lr.on_drift()
    lr.on_drift()
    assert lr.scale == pytest.approx(9.0)
    lr.on_drift()
    assert lr.scale == pytest.approx(10.0) and lr.n_drifts == 3
    lr.update(0.4, 1000)  # the cap is on the boost itself, so decay starts at once
    assert lr.scale == pytest.approx(math.sqrt(10.0))


def test_batched_updates_equal_single_event_updates():
    a, b = AdaptiveLearningRate(), AdaptiveLearningRate()
    a.on_drift(), b.on_drift()
    a.update(0.7, 300)
    for _ in range(300):
        b.update(0.7, 1)
    assert a.scale == pytest.approx(b.scale, rel=1e-9)
    assert a.get_state()["fast"] == pytest.approx(b.get_state()["fast"], rel=1e-9)


def test_rises_gently_when_recent_loss_is_worse():
    lr = AdaptiveLearningRate(loss_ema=0.01, loss_ema_slow=0.001)
    for _ in range(100):
        lr.update(0.3, 50)  # 5000 events of a stable loss
    assert lr.scale == pytest.approx(1.0)
    lr.update(0.6, 300)  # the loss doubles for a while
    assert 1.2 < lr.scale < math.sqrt(2.0)  # gentle: at most sqrt(recent / long-term)
    lr.update(0.15, 2000)  # loss now better than the long-term mean
    assert lr.scale == pytest.approx(1.0)


def test_scale_is_clipped_and_base_applies():
    lr = AdaptiveLearningRate(base=0.5, min_scale=0.2, max_scale=2.0, drift_boost=10.0)
    assert lr.scale == 0.5
    lr.on_drift()
    assert lr.scale == pytest.approx(2.0)


def test_state_round_trip_through_json():
    lr = AdaptiveLearningRate(decay_half_life=250)
    lr.update(0.5, 100)
    lr.on_drift()
    lr.update(0.9, 40)
    again = AdaptiveLearningRate.from_state(json.loads(json.dumps(lr.get_state())))
    assert again.get_state() == lr.get_state()
    for x in (0.2, 1.3, 0.4):
        lr.update(x, 10)
        again.update(x, 10)
        assert again.scale == lr.scale


@pytest.mark.parametrize("kwargs", [
    {"base": 0.05}, {"drift_boost": 0.5}, {"decay_half_life": 0}, {"loss_ema": 0.0001},
    {"min_scale": -1.0}, {"max_scale": float("inf")},
])
def test_schedule_validates_parameters(kwargs):
    with pytest.raises(ValueError):
        AdaptiveLearningRate(**kwargs)


@pytest.mark.parametrize("loss, n", [(float("nan"), 1), (-0.1, 1), (0.3, -1), (0.3, 1.5)])
def test_schedule_validates_updates(loss, n):
    with pytest.raises(ValueError):
        AdaptiveLearningRate().update(loss, n)


def test_age_weights_halve_at_each_half_life():
    now = 1_700_000_000.0
    t = now - np.array([0.0, 3600.0, 7200.0, 36_000.0, -5.0])
    w = age_weights(t, now, half_life_s=3600.0)
    np.testing.assert_allclose(w, [1.0, 0.5, 0.25, 2.0 ** -10, 1.0])  # future stamps clip to age 0
    np.testing.assert_array_equal(age_weights(t, now, None), np.ones(5))
    with pytest.raises(ValueError, match="half_life_s"):
        age_weights(t, now, 0.0)
    with pytest.raises(ValueError, match="finite"):
        age_weights(np.array([np.nan]), now, 10.0)


def test_kind_weights():
    assert dict(KIND_WEIGHTS) == {"explicit": 1.0, "implicit": 0.5, "reward": 1.0, "other": 0.3}
    with pytest.raises(TypeError):
        KIND_WEIGHTS["explicit"] = 2.0  # read-only: shared by every caller
    assert kind_weights(["reward", "implicit", "weird"]).tolist() == [1.0, 0.5, 0.3]
    assert kind_weights(["a"], {"a": 2.0}).tolist() == [2.0]
