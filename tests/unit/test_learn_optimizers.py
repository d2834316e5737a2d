"""Optimizers: hand-computed single steps, exact L1 zeros, learning a stream."""
from __future__ import annotations

import numpy as np
import pytest

from cstore.learn.logistic import batch_gradient, predict_proba_batch
from cstore.learn.optimizers import SGD, AdaGrad, FTRLProximal, optimizer_from_config

f32 = np.float32


def test_ftrl_single_step_by_hand():
    opt = FTRLProximal(alpha=0.1, beta=1.0, l1=0.5, l2=0.2)
    z = np.array([1.2, -0.3, 2.0], f32)
    n = np.array([4.0, 1.0, 0.0], f32)
    g = np.array([0.5, -0.2, 1.0])
    # coord 0: w = -(1.2 - 0.5) / ((1 + sqrt 4)/0.1 + 0.2) = -0.7/30.2 = -0.0231788079
    #          n' = 4.25; sigma = (sqrt 4.25 - 2)/0.1 = 0.6155281281
    #          z' = 1.2 + 0.5 - 0.6155281281 * -0.0231788079 = 1.7142672083
    #          w' = -(1.7142672083 - 0.5) / ((1 + sqrt 4.25)/0.1 + 0.2) = -0.0394043939
    # coord 1: |z| = 0.3 <= l1 so w = 0; n' = 1.04; z' = -0.3 - 0.2 - sigma*0 = -0.5 -> w' = 0
    # coord 2: w = -(2 - 0.5)/((1 + 0)/0.1 + 0.2) = -1.5/10.2 = -0.1470588235
    #          n' = 1; sigma = (1 - 0)/0.1 = 10; z' = 2 + 1 + 1.470588235 = 4.4705882353
    #          w' = -(4.4705882353 - 0.5)/((1 + 1)/0.1 + 0.2) = -3.9705882353/20.2 = -0.1965637740
    z2, n2, w2 = opt.step(z, n, g)
    assert z2.dtype == n2.dtype == w2.dtype == np.float32
    np.testing.assert_allclose(n2, [4.25, 1.04, 1.0], rtol=1e-7)
    np.testing.assert_allclose(z2, [1.7142672083, -0.5, 4.4705882353], rtol=1e-6)
    np.testing.assert_allclose(w2, [-0.0394043939, 0.0, -0.1965637740], rtol=1e-6)
    assert w2[1] == 0.0
    # (z is float32, so 1.2 is really 1.2000000477: compare to ~1e-7.)
    np.testing.assert_allclose(opt.weights_from(z, n), [-0.0231788079, 0.0, -0.1470588235], rtol=2e-7)
    np.testing.assert_array_equal(opt.weights_from(z2, n2), w2)  # stored w always agrees with z, n


def test_ftrl_lr_scale_scales_the_step_not_the_weights():
    # With l1 = l2 = 0, lr_scale s gives exactly w' = w - s * alpha / (beta + sqrt(n')) * g.
    opt = FTRLProximal(alpha=0.2, beta=0.5)
    rng = np.random.default_rng(0)
    z, n = rng.normal(size=5).astype(f32), rng.uniform(0, 4, size=5).astype(f32)
    g = rng.normal(size=5)
    w = opt.weights_from(z, n).astype(np.float64)
    for s in (1.0, 2.5):
        _, n2, w2 = opt.step(z, n, g, lr_scale=s)
        expected = w - s * 0.2 / (0.5 + np.sqrt(n.astype(np.float64) + g * g)) * g
        np.testing.assert_allclose(w2, expected, rtol=1e-5, atol=1e-7)


def test_adagrad_single_step_by_hand():
    opt = AdaGrad(lr=0.1, eps=1e-8, l2=0.1)
    # g' = 0.2 + 0.1 * 0.5 = 0.25; g2' = 1 + 0.0625 = 1.0625
    # w' = 0.5 - 0.1 * 0.25 / (sqrt(1.0625) + 1e-8) = 0.5 - 0.025 / 1.0307764164 = 0.4757464377
    w2, g22 = opt.step(np.array([0.5], f32), np.array([1.0], f32), np.array([0.2]))
    assert w2.dtype == g22.dtype == np.float32
    assert g22[0] == pytest.approx(1.0625, rel=1e-7)
    assert w2[0] == pytest.approx(0.4757464377, rel=1e-7)


def test_sgd_single_step_by_hand():
    # w' = 1.0 - 0.5 * 2 * (0.25 + 0.1 * 1.0) = 1.0 - 0.35 = 0.65
    w2 = SGD(lr=0.5, l2=0.1).step(np.array([1.0], f32), np.array([0.25]), lr_scale=2.0)
    assert w2[0] == pytest.approx(0.65, rel=1e-7)


def test_steps_are_pure_and_deterministic():
    opt = FTRLProximal(l1=0.1, l2=0.1)
    rng = np.random.default_rng(1)
    z, n, g = rng.normal(size=50).astype(f32), rng.uniform(0, 3, 50).astype(f32), rng.normal(size=50)
    z0, n0 = z.copy(), n.copy()
    a, b = opt.step(z, n, g), opt.step(z, n, g)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(n, n0)
    new = opt.apply({"z": z, "n": n}, g)
    assert set(new) == {"z", "n", "w"} and new["w"].tobytes() == a[2].tobytes()


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based AUC (Mann-Whitney U) with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def test_auc_helper():
    assert _auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert _auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


def _stream(rng, m, d=200, k=8):
    true_w = rng.normal(size=d)
    indptr = np.arange(0, (m + 1) * k, k, dtype=np.int64)
    indices = np.concatenate([rng.choice(d, size=k, replace=False) for _ in range(m)]).astype(np.int64)
    values = rng.normal(size=m * k).astype(f32)
    margins = np.add.reduceat(true_w[indices] * values, indptr[:-1])
    return indptr, indices, values, (margins > 0).astype(np.float64)  # linearly separable


def test_ftrl_learns_a_separable_stream():
    rng = np.random.default_rng(42)
    d, batch = 200, 8
    indptr, indices, values, y = _stream(rng, 4000, d)
    opt = FTRLProximal(alpha=0.5, beta=1.0, l1=0.01, l2=0.01)
    state = {"z": np.zeros(d, f32), "n": np.zeros(d, f32), "w": np.zeros(d, f32)}
    bias = {"z": np.zeros(1, f32), "n": np.zeros(1, f32)}
    k = 8  # active features per row
    for start in range(0, 3000, batch):
        sl = slice(start * k, (start + batch) * k)
        b = float(opt.weights_from(bias["z"], bias["n"])[0])  # the bias is a 1-coordinate FTRL too
        g = batch_gradient(state["w"], b, indptr[start:start + batch + 1] - start * k, indices[sl], values[sl],
                           y[start:start + batch])
        idx = g.indices
        z2, n2, w2 = opt.step(state["z"][idx], state["n"][idx], g.values)
        state["z"][idx], state["n"][idx], state["w"][idx] = z2, n2, w2
        bias["z"], bias["n"], _ = opt.step(bias["z"], bias["n"], np.array([g.bias]))
    np.testing.assert_array_equal(opt.weights_from(state["z"], state["n"]), state["w"])
    b = float(opt.weights_from(bias["z"], bias["n"])[0])
    test = slice(3000 * k, 4000 * k)
    p = predict_proba_batch(state["w"], b, indptr[3000:] - 3000 * k, indices[test], values[test])
    auc = _auc(p, y[3000:])
    assert auc > 0.95, auc


def test_ftrl_l1_gives_exact_zeros_on_noise_features():
    rng = np.random.default_rng(7)
    d, k, m = 200, 8, 2000
    indptr, indices, values, _ = _stream(rng, m, d, k)
    # Only feature 0 matters; the other 199 are noise.
    indices[::k] = 0
    y = (values[::k] > 0).astype(np.float64)
    opt = FTRLProximal(alpha=0.3, l1=5.0)
    z, n = np.zeros(d, f32), np.zeros(d, f32)
    for start in range(0, m, 16):
        g = batch_gradient(opt.weights_from(z, n), 0.0, indptr[start:start + 17] - start * k,
                           indices[start * k:(start + 16) * k], values[start * k:(start + 16) * k],
                           y[start:start + 16])
        z[g.indices], n[g.indices], _ = opt.step(z[g.indices], n[g.indices], g.values)
    w = opt.weights_from(z, n)
    assert w[0] > 0.5
    n_zero = np.count_nonzero(w[1:] == 0.0)
    assert n_zero >= 180, n_zero  # exact zeros, not just small
    assert np.all((w == 0.0) == (np.abs(z) <= 5.0))


@pytest.mark.parametrize("call, match", [
    (lambda: FTRLProximal().step(np.zeros(2, f32), np.zeros(3, f32), np.zeros(2)), "same shape"),
    (lambda: FTRLProximal().step(np.zeros(2, f32), np.zeros(2, f32), np.array([np.nan, 0])), "g contains NaN"),
    (lambda: FTRLProximal().step(np.zeros(2, f32), -np.ones(2, f32), np.zeros(2)), "corrupt"),
    (lambda: AdaGrad().step(np.zeros(1, f32), np.zeros(1, f32), np.array([1e30])), "overflowed float32"),
    (lambda: SGD().step(np.zeros(1, f32), np.zeros(1), lr_scale=0.0), "lr_scale"),
    (lambda: FTRLProximal(alpha=0.0), "alpha"),
    (lambda: AdaGrad(l2=-1.0), "l2"),
    (lambda: optimizer_from_config({"name": "Adam"}), "unknown optimizer"),
])
def test_optimizers_validate(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_config_round_trip_and_init_state():
    for opt in (FTRLProximal(alpha=0.1, l1=1.0), AdaGrad(lr=0.3), SGD(l2=0.5)):
        again = optimizer_from_config(opt.get_config())
        assert again.get_config() == opt.get_config()
        st = opt.init_state(4)
        assert set(st) == {"w", *opt.state_params} and all(a.dtype == f32 for a in st.values())
