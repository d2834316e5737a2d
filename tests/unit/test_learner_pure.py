"""Learner transforms against hand computations (no database)."""
from __future__ import annotations

import uuid

import numpy as np

from cstore.learn import AdaGrad, FTRLProximal
from cstore.training import Learner, LearnerConfig
from cstore.training._learner import _param_names
from cstore.core import ModelInfo
from cstore.core import ChunkRow

CS = 16


def _learner(opt) -> tuple[Learner, dict[int, dict[str, ChunkRow]]]:
    wnames, bnames = _param_names(opt.get_config()["name"])
    params = {**{p: (64,) for p in wnames.values()}, **{p: (1,) for p in bnames.values()}}
    info = ModelInfo("m", uuid.uuid4(), CS, "float32", params)
    cfg = LearnerConfig(64, 0, opt.get_config(), opt.get_config(), {"explicit": 1.0}, None, {}, "none", {})
    rng = np.random.default_rng(0)
    rows = {}
    for k in range(4):
        rows[k] = {}
        for p in params:
            if k < info.n_chunks(p):
                size = info.chunk_bounds(p, k)[1] - info.chunk_bounds(p, k)[0]
                data = rng.random(size).astype(np.float32) if p.endswith("n") or p.endswith("g2") else \
                    rng.normal(size=size).astype(np.float32)
                rows[k][p] = ChunkRow(p, data, 1, None)
    return Learner(info, cfg), rows


def test_ftrl_transform_matches_a_direct_step_per_chunk():
    opt = FTRLProximal(alpha=0.3, beta=1.0, l1=0.1)
    learner, rows = _learner(opt)
    idx = np.array([3, 17, 18, 63])
    g = np.array([0.5, -1.0, 2.0, 0.25])
    assert learner.chunks_of(idx) == [0, 1, 3]
    t = learner.gradient_transform(idx, g, bias_grad=-0.75, lr_scale=2.0)
    out1 = t(1, rows[1])
    z, n, w = opt.step(rows[1]["z"].data[[1, 2]], rows[1]["n"].data[[1, 2]], g[1:3], 2.0)
    assert set(out1) == {"weights", "z", "n"}
    np.testing.assert_array_equal(out1["z"][0][[1, 2]], z)
    np.testing.assert_array_equal(out1["n"][0][[1, 2]], n)
    np.testing.assert_array_equal(out1["weights"][0][[1, 2]], w)
    untouched = np.setdiff1d(np.arange(CS), [1, 2])
    np.testing.assert_array_equal(out1["z"][0][untouched], rows[1]["z"].data[untouched])
    out0 = t(0, rows[0])  # chunk 0 also carries the bias
    bz, bn, bw = opt.step(rows[0]["bias_z"].data, rows[0]["bias_n"].data, np.array([-0.75]), 2.0)
    assert out0["bias"][0][0] == bw[0] and out0["bias_z"][0][0] == bz[0] and out0["bias_n"][0][0] == bn[0]
    assert t(2, rows[2]) == {}  # nothing in chunk 2


def test_federated_delta_moves_ftrl_weights_and_keeps_state_consistent():
    opt = FTRLProximal(alpha=0.3, beta=1.0, l1=0.05)
    learner, rows = _learner(opt)
    idx = np.array([0, 5])
    delta = np.array([0.5, -0.25])
    out = learner.delta_transform(idx, delta, bias_delta=0.1)(0, rows[0])
    before = opt.weights_from(rows[0]["z"].data[[0, 5]], rows[0]["n"].data[[0, 5]])
    np.testing.assert_allclose(out["weights"][0][[0, 5]], before + delta, atol=1e-5)
    np.testing.assert_array_equal(out["weights"][0][[0, 5]],
                                  opt.weights_from(out["z"][0][[0, 5]], rows[0]["n"].data[[0, 5]]))
    assert "n" not in out  # the squared-gradient sums are not touched by an external delta


def test_adagrad_transform_uses_g2():
    opt = AdaGrad(lr=0.1)
    learner, rows = _learner(opt)
    out = learner.gradient_transform(np.array([40]), np.array([1.0]), 0.0, 1.0)(2, rows[2])
    w, g2 = opt.step(rows[2]["weights"].data[[8]], rows[2]["g2"].data[[8]], np.array([1.0]))
    assert out["weights"][0][8] == w[0] and out["g2"][0][8] == g2[0]


def test_history_bucket_of_an_op_is_exact_at_bucket_boundaries():
    from cstore.core import uuid_at
    info = ModelInfo("m", uuid.uuid4(), CS, "float32", {"w": (CS,)}, history_bucket_s=60)
    edge = 29_666_666 * 60 * 10_000_000  # a minute boundary in 2026, in 100 ns ticks
    assert info.history_bucket_of(uuid_at(edge - 1), 3600) == 29_666_665  # one tick before: previous bucket
    assert info.history_bucket_of(uuid_at(edge), 3600) == 29_666_666
    legacy = ModelInfo("m", uuid.uuid4(), CS, "float32", {"w": (CS,)})  # no stored bucket: the default
    assert legacy.history_bucket_seconds(3600) == 3600 and info.history_bucket_seconds(3600) == 60


def test_the_cli_creates_learners_with_the_api_chunk_size():
    """`cstore model create-learner` and cstore.create_learner() default to the same chunk size."""
    import inspect

    from cstore.cli._worker import create_learner_cmd
    from cstore.training import LEARNER_CHUNK_SIZE, create_learner
    cli_default = next(p.default for p in create_learner_cmd.params if p.name == "chunk_size")
    assert cli_default == inspect.signature(create_learner).parameters["chunk_size"].default == LEARNER_CHUNK_SIZE
