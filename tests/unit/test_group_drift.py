"""The group's drift detection (loss detector + label-rate CUSUM, one cool-down), as the workers feed it."""
from __future__ import annotations

import msgpack
import numpy as np

from cstore.training._shared_state import DEFAULT_LABEL_RATE, GroupDrift, make_detector, make_label_detector

DEFAULTS = {"detector": "page_hinkley", "params": {}, "confirmations": 2, "within": 2000, "warmup": 1000}
BLOCK = 20


def _blocks(rates: list[tuple[int, float]], seed: int) -> list[np.ndarray]:
    """Blocks of BLOCK labels: ``n`` labels at each ``rate`` in turn."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([(rng.random(n) < r).astype(float) for n, r in rates])
    return [labels[lo:lo + BLOCK] for lo in range(0, labels.size, BLOCK)]


def _run(group: GroupDrift, blocks: list[np.ndarray], order: list[int] | None = None) -> list[int]:
    """Feed the blocks (in ``order``) with a flat loss; the events scored when the group reported a drift."""
    seen, out = 0, []
    for i in order if order is not None else range(len(blocks)):
        y = blocks[i]
        if group.feed(np.full(y.size, 0.5), y, seen):
            out.append(seen + y.size)
        seen += y.size
    return out


def _interleaved(n_blocks: int, workers: int, seed: int) -> list[int]:
    """The order in which ``workers`` workers, each learning every ``workers``-th block at its own pace, could
    feed the blocks: within each round of 4 blocks per worker, any order."""
    rng = np.random.default_rng(seed)
    span = 4 * workers
    return [int(i) for lo in range(0, n_blocks, span) for i in rng.permutation(np.arange(lo, min(lo + span, n_blocks)))]


def test_defaults_watch_the_loss_and_the_label_rate():
    group = GroupDrift(DEFAULTS)
    assert group.detector is not None and group.labels is not None
    assert group.labels.get_state()["params"] == DEFAULT_LABEL_RATE
    assert make_label_detector({**DEFAULTS, "label_rate": False}) is None
    assert make_label_detector({**DEFAULTS, "detector": "none"}) is None and make_detector({"detector": "none"}) is None
    assert make_label_detector({**DEFAULTS, "label_rate": {"threshold": 12.0}}).threshold == 12.0


def test_a_change_of_the_label_rate_is_reported_once_whatever_the_workers_order():
    blocks = _blocks([(6000, 0.38), (4000, 0.2)], seed=1)
    for workers in (1, 2, 4):
        for seed in range(3):
            order = None if workers == 1 else _interleaved(len(blocks), workers, seed)
            hits = _run(GroupDrift(DEFAULTS), blocks, order)
            assert len(hits) == 1 and 6000 < hits[0] <= 6500, (workers, seed, hits)


def test_labels_of_a_fixed_rate_raise_nothing_whatever_the_workers_order():
    for seed in range(3):
        blocks = _blocks([(30_000, 0.3)], seed=10 + seed)
        for workers in (1, 2, 4):
            order = None if workers == 1 else _interleaved(len(blocks), workers, seed)
            assert _run(GroupDrift(DEFAULTS), blocks, order) == [], (seed, workers)


def test_the_other_detector_finding_the_same_change_within_the_cool_down_is_not_a_second_drift():
    cfg = {**DEFAULTS, "params": {"threshold": 5.0, "min_instances": 30}, "confirmations": 1, "warmup": 0}
    group = GroupDrift(cfg)
    blocks = _blocks([(4000, 0.3), (3000, 0.7)], seed=2)
    seen, reported, loss_alarms = 0, [], 0
    for y in blocks:
        losses = np.full(y.size, 0.3 if seen < 4000 else 1.5)  # the loss jumps at the same change
        before = group.detector.n_detections
        if group.feed(losses, y, seen):
            reported.append(seen)
        loss_alarms += group.detector.n_detections - before
        seen += y.size
    assert group.labels.n_detections >= 1 and loss_alarms >= 1  # both detectors saw the change...
    assert len(reported) == 1 and 4000 <= reported[0] < 4400  # ...the group reports it once


def test_labels_are_optional_and_only_the_last_events_of_a_batch_need_them():
    group = GroupDrift(DEFAULTS)
    assert not group.feed(np.full(50, 0.4), None, 0)  # a batch without labels: the loss detector only
    assert group.labels.n == 0
    group.feed(np.full(50, 0.4), np.ones(30), 50)  # 20 deferred losses first, then this batch's 30 events
    assert group.labels.n == 30


def test_state_survives_msgpack_and_a_state_from_before_the_label_detector_gets_one():
    group = GroupDrift(DEFAULTS)
    blocks = _blocks([(3000, 0.4)], seed=4)
    _run(group, blocks)
    copy = GroupDrift(DEFAULTS, msgpack.unpackb(msgpack.packb(group.get_state()), raw=False))
    assert copy.get_state() == group.get_state() and copy.score == group.score
    old = {"detector": group.detector.get_state(), "schedule": {}}  # a row written before labels were watched
    upgraded = GroupDrift(DEFAULTS, old)
    assert upgraded.labels is not None and upgraded.labels.n == 0 and upgraded.quiet_until == 0
    off = GroupDrift({**DEFAULTS, "label_rate": False}, old)
    assert off.labels is None and off.get_state()["labels"] is None


def test_score_is_the_closer_of_the_two_detectors_to_an_alarm():
    group = GroupDrift(DEFAULTS)
    _run(group, _blocks([(2000, 0.5)], seed=5))  # flat losses: the loss detector stays at 0
    assert group.score == 0.0 or group.score == round(group.labels.statistic / group.labels.threshold, 6)
    group.feed(np.full(40, 0.5), np.ones(40), 2000)  # 40 positives in a row: ~5.6 of the label CUSUM's 10 nats
    assert group.labels.n_detections == 0 and 0.3 < group.score < 1.0
    assert group.score == round(group.labels.statistic / group.labels.threshold, 6)
