"""Per-event passes over a micro-batch against a plain per-event learner (the optimizers' own step, one
event at a time), their replay on moved state, and the learner's commit transform built on them."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from cstore.core import ChunkRow, ModelInfo
from cstore.learn import SGD, AdaGrad, FTRLProximal, batch_gradient, positions, replay, sequential_pass
from cstore.training import Learner, LearnerConfig
from cstore.training._learner import _param_names

OPTIMIZERS = [
    (FTRLProximal(0.3, 1.0), FTRLProximal(0.3, 1.0)),
    (FTRLProximal(0.3, 1.0, l1=0.1, l2=0.5), FTRLProximal(0.3, 1.0)),  # bias learned apart from the weights
    (AdaGrad(0.1), AdaGrad(0.1)),
    (AdaGrad(0.1, l2=0.1), AdaGrad(0.1)),
    (SGD(0.1), SGD(0.1)),
]
IDS = ["ftrl", "ftrl-l1-l2", "adagrad", "adagrad-l2", "sgd"]


def _batch(seed: int, m: int = 300, k: int = 40):
    rng = np.random.default_rng(seed)
    nnz = rng.integers(0, 8, m)  # empty rows and duplicate coordinates inside a row included
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    pos = rng.integers(0, k, indptr[-1])
    vals = rng.normal(size=indptr[-1])
    y = (rng.random(m) < 0.4).astype(float)
    s = rng.random(m) + 0.5
    return indptr, pos, vals, y, s, k


def _per_event(opt, bopt, k, indptr, pos, vals, y, s, lr, group: int = 1):
    """The reference: the optimizers' own float32 step, one event (or ``group`` events summed) at a time."""
    st, bst = opt.init_state(k), bopt.init_state(1)
    for lo in range(0, len(y), group):
        hi = min(lo + group, len(y))
        ip = indptr[lo:hi + 1] - indptr[lo]
        g = batch_gradient(st["w"], float(bst["w"][0]), ip, pos[indptr[lo]:indptr[hi]], vals[indptr[lo]:indptr[hi]],
                           y[lo:hi], s[lo:hi])
        for key, a in opt.apply({key: st[key][g.indices] for key in st}, g.values, lr).items():
            st[key][g.indices] = a
        bst = bopt.apply(bst, np.array([g.bias]), lr)
    return st, bst


@pytest.mark.parametrize(("opt", "bopt"), OPTIMIZERS, ids=IDS)
def test_the_pass_ends_where_a_per_event_learner_does(opt, bopt):
    indptr, pos, vals, y, s, k = _batch(1, m=120)
    ref, bref = _per_event(opt, bopt, k, indptr, pos, vals, y, s, 1.3)
    res = sequential_pass(opt, bopt, opt.init_state(k), bopt.init_state(1), indptr, pos, vals, y, s, 1.3)
    assert res.steps == len(y)
    for key in ref:  # float64 inside the pass, float32 per step in the reference
        np.testing.assert_allclose(res.state[key], ref[key], rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(res.bias_state[key], bref[key], rtol=1e-4, atol=2e-5)
    # Far from the summed step: the batch really was learned event by event.
    summed, _ = _per_event(opt, bopt, k, indptr, pos, vals, y, s, 1.3, group=len(y))
    assert np.abs(summed["w"] - ref["w"]).max() > 0.05


@pytest.mark.parametrize(("opt", "bopt"), OPTIMIZERS, ids=IDS)
def test_a_long_batch_is_learned_in_max_steps_steps_of_consecutive_events(opt, bopt):
    indptr, pos, vals, y, s, k = _batch(2, m=300)
    ref, bref = _per_event(opt, bopt, k, indptr, pos, vals, y, s, 0.7, group=10)
    res = sequential_pass(opt, bopt, opt.init_state(k), bopt.init_state(1), indptr, pos, vals, y, s, 0.7,
                          max_steps=30)
    assert res.steps == 30
    for key in ref:
        np.testing.assert_allclose(res.state[key], ref[key], rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(res.bias_state[key], bref[key], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("max_steps", [1000, 30])
@pytest.mark.parametrize(("opt", "bopt"), OPTIMIZERS, ids=IDS)
def test_replay_from_the_same_state_gives_the_pass_bit_for_bit(opt, bopt, max_steps):
    indptr, pos, vals, y, s, k = _batch(3)
    start = {key: np.random.default_rng(4).random(k).astype(np.float32) for key in opt.init_state(k)}
    if isinstance(opt, FTRLProximal):
        start["w"] = opt.weights_from(start["z"], start["n"])
    res = sequential_pass(opt, bopt, start, bopt.init_state(1), indptr, pos, vals, y, s, 1.1, max_steps=max_steps)
    again = replay(opt, start, res.entry_pos, res.entry_step, res.entry_grad, 1.1)
    for key in again:
        np.testing.assert_array_equal(again[key], res.state[key])
    bias = replay(bopt, bopt.init_state(1), np.zeros(res.steps, np.int64), np.arange(res.steps), res.bias_grad, 1.1)
    np.testing.assert_array_equal(bias["w"], res.bias_state["w"])


def test_replay_on_moved_state_applies_the_recorded_steps_in_order():
    opt = FTRLProximal(0.3, 1.0, l1=0.05)
    moved = {"z": np.array([0.5, -2.0, 0.0], np.float32), "n": np.array([1.0, 4.0, 0.0], np.float32)}
    moved["w"] = opt.weights_from(moved["z"], moved["n"])
    pos, step, grad = np.array([2, 0, 0, 1]), np.array([3, 5, 1, 2]), np.array([0.2, -0.4, 0.3, 1.0])
    out = replay(opt, moved, pos, step, grad, 2.0)
    st = {k: v.copy() for k, v in moved.items()}
    for i in np.lexsort((step, pos)):  # coordinate by coordinate, in step order
        c = pos[i:i + 1]
        for key, a in opt.apply({key: st[key][c] for key in st}, grad[i:i + 1], 2.0).items():
            st[key][c] = a
    for key in st:
        np.testing.assert_allclose(out[key], st[key], rtol=1e-6, atol=1e-7)


def test_positions_and_validation():
    for n in (8, 2**20):  # dense mark and np.unique agree
        coords, pos = positions(np.array([5, 2, 5, 7]), n)
        assert coords.tolist() == [2, 5, 7] and pos.tolist() == [1, 0, 1, 2]
    opt = FTRLProximal()
    with pytest.raises(ValueError, match="same batch"):
        sequential_pass(opt, opt, opt.init_state(2), opt.init_state(1), np.array([0, 1]), np.array([2]),
                        np.array([1.0]), np.array([1.0]), np.ones(1))
    with pytest.raises(ValueError, match="max_steps"):
        sequential_pass(opt, opt, opt.init_state(2), opt.init_state(1), np.array([0, 1]), np.array([1]),
                        np.array([1.0]), np.array([1.0]), np.ones(1), max_steps=0)


def _learner(opt, update="per_event"):
    wnames, bnames = _param_names(opt.get_config()["name"])
    params = {**{p: (64,) for p in wnames.values()}, **{p: (1,) for p in bnames.values()}}
    info = ModelInfo("m", uuid.uuid4(), 16, "float32", params)
    cfg = LearnerConfig(64, 0, opt.get_config(), opt.get_config(), {"explicit": 1.0}, None, {}, "none", {}, update)
    rows = {k: {p: ChunkRow(p, opt.init_state(16 if p in wnames.values() else 1)[key].copy(), 1, None)
                for key, p in [*wnames.items(), *([(kk, pp) for kk, pp in bnames.items()] if k == 0 else [])]}
            for k in range(4)}
    return Learner(info, cfg), rows


def test_the_commit_transform_is_the_pass_on_unmoved_rows_and_a_replay_on_moved_ones():
    opt = FTRLProximal(0.3, 1.0)
    learner, rows = _learner(opt)
    rng = np.random.default_rng(5)
    indptr = np.arange(0, 61, 3)
    idx = rng.integers(0, 64, 60)
    vals, y = rng.normal(size=60), (rng.random(20) < 0.5).astype(float)
    t = learner.batch_transform(rows, np.zeros(64, np.float32), 0.0, indptr, idx, vals, y, np.ones(20), 1.0)
    # The reference learner on the dense space (chunks are only storage).
    ref, bref = _per_event(opt, opt, 64, indptr, idx, vals, y, np.ones(20), 1.0)
    for k in learner.chunks_of(idx):
        out = t(k, rows[k])
        np.testing.assert_allclose(out["weights"][0], ref["w"][16 * k:16 * k + 16], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(t(0, rows[0])["bias"][0], bref["w"], rtol=1e-4, atol=2e-5)
    # Another writer moved chunk 1 (a conflict): its update is kept, ours applied on top of it.
    moved = dict(rows[1])
    moved["n"] = ChunkRow("n", np.full(16, 9.0, np.float32), 2, None)
    moved["z"] = ChunkRow("z", np.full(16, -0.3, np.float32), 2, None)
    moved["weights"] = ChunkRow("weights", opt.weights_from(moved["z"].data, moved["n"].data), 2, None)
    out = t(1, moved)
    touched = out["n"][1]
    assert np.all(out["n"][0][touched] > 9.0)  # the other writer's squared gradients are still in n
    untouched = np.setdiff1d(np.arange(16), touched)
    np.testing.assert_array_equal(out["weights"][0][untouched], moved["weights"].data[untouched])
    summed = _learner(opt, "summed")[0].batch_transform(rows, np.zeros(64, np.float32), 0.0, indptr, idx, vals, y,
                                                        np.ones(20), 1.0)
    assert np.abs(summed(1, rows[1])["weights"][0] - t(1, rows[1])["weights"][0]).max() > 1e-3
