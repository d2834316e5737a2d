"""Per-coordinate optimizers as pure functions on slices of state.

The store applies an update to a chunk of coordinates and, on a
compare-and-set conflict, re-reads the chunk and re-applies. So every
``step`` takes the *current* state arrays at the touched coordinates plus
the gradient there, and returns new arrays: no hidden state, no in-place
writes, bit-for-bit deterministic. State is float32 in and out; maths is
done in float64 and cast back once.

``g`` must have one entry per *distinct* coordinate (as produced by
:func:`cstore.learn.logistic.batch_gradient`); the bias can be handled as a
one-element array.

``lr_scale`` is the global multiplier from
:class:`cstore.learn.schedule.AdaptiveLearningRate`; ``1.0`` is the plain
algorithm.

Float32 state has ~7 significant digits: once a coordinate's ``n`` (or
``g2``) exceeds ~1e7 times a typical ``g**2``, further increments round
away and its step size stops shrinking (benign, but it means very hot
coordinates keep a constant rate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["AdaGrad", "FTRLProximal", "SGD", "optimizer_from_config"]


def _f64(name: str, a: np.ndarray) -> np.ndarray:
    out = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or inf; the state or gradient is corrupt")
    return out


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"state and gradient slices must have the same shape, got {shapes}")


def _f32_out(name: str, a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = a.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} overflowed float32; scale features or gradients down")
    return out


def _check_hparam(name: str, value: float, *, positive: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0.0 or (positive and v == 0.0):
        raise ValueError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number, got {value!r}")
    return v


def _check_scale(lr_scale: float) -> float:
    return _check_hparam("lr_scale", lr_scale, positive=True)


class FTRLProximal:
    """FTRL-Proximal, McMahan et al. (2013) "Ad Click Prediction", Algorithm 1.

    Per coordinate ``i`` the state is ``z_i`` and ``n_i`` (sum of squared
    gradients); the weight is *derived*::

        w_i = 0                                              if |z_i| <= l1
        w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

    and one step with gradient ``g_i`` (at ``w_i`` derived from the old state)::

        sigma_i = (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha
        z_i    += lr_scale * g_i - sigma_i * w_i
        n_i    += g_i^2

    With ``lr_scale == 1`` this is exactly Algorithm 1. ``lr_scale``
    multiplies only the gradient term of ``z`` (not ``n``): for l1 = l2 = 0
    that is exactly ``w <- w - lr_scale * alpha / (beta + sqrt(n)) * g``, i.e.
    a scaled step, whereas scaling ``alpha`` itself would rescale existing
    weights.

    >>> opt = FTRLProximal(alpha=0.5, beta=1.0)
    >>> z, n, w = opt.step(np.zeros(2, np.float32), np.zeros(2, np.float32), np.array([1.0, -2.0]))
    >>> z.tolist(), n.tolist(), [round(float(v), 4) for v in w]
    ([1.0, -2.0], [1.0, 4.0], [-0.25, 0.3333])
    >>> bool((opt.weights_from(z, n) == w).all())
    True
    """

    state_params = ("z", "n")

    def __init__(self, alpha: float = 0.05, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0) -> None:
        self.alpha = _check_hparam("alpha", alpha, positive=True)
        self.beta = _check_hparam("beta", beta)
        self.l1 = _check_hparam("l1", l1)
        self.l2 = _check_hparam("l2", l2)

    def __repr__(self) -> str:
        return f"FTRLProximal(alpha={self.alpha}, beta={self.beta}, l1={self.l1}, l2={self.l2})"

    def _weights64(self, z: np.ndarray, n: np.ndarray) -> np.ndarray:
        denom = (self.beta + np.sqrt(n)) / self.alpha + self.l2
        shrunk = z - np.sign(z) * self.l1
        active = (np.abs(z) > self.l1) & (denom > 0.0)  # denom is 0 only if beta = l2 = n = 0
        out = np.zeros_like(z)
        np.divide(-shrunk, denom, out=out, where=active)
        return out

    def weights_from(self, z: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Weights (float32) implied by the state: the closed form above.

        >>> FTRLProximal(l1=1.0).weights_from(np.array([0.5, -3.0]), np.array([1.0, 1.0])).tolist()
        [0.0, 0.05000000074505806]
        """
        _same_shape(z=z, n=n)
        return _f32_out("w", self._weights64(_f64("z", z), _f64("n", n)))

    def step(self, z: np.ndarray, n: np.ndarray, g: np.ndarray,
             lr_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One update; returns float32 ``(z_new, n_new, w_new)``.

        ``w_new == weights_from(z_new, n_new)`` exactly (computed from the
        float32-rounded state), so a stored ``w`` always agrees with ``z, n``.
        """
        _same_shape(z=z, n=n, g=g)
        s = _check_scale(lr_scale)
        z64, n64, g64 = _f64("z", z), _f64("n", n), _f64("g", g)
        if np.any(n64 < 0.0):
            raise ValueError("n (sum of squared gradients) must be >= 0; the state is corrupt")
        w = self._weights64(z64, n64)
        n_new = n64 + g64 * g64
        sigma = (np.sqrt(n_new) - np.sqrt(n64)) / self.alpha
        z_new = z64 + s * g64 - sigma * w
        z32, n32 = _f32_out("z", z_new), _f32_out("n", n_new)
        w32 = _f32_out("w", self._weights64(z32.astype(np.float64), n32.astype(np.float64)))
        return z32, n32, w32

    def apply(self, state: Mapping[str, np.ndarray], g: np.ndarray,
              lr_scale: float = 1.0) -> dict[str, np.ndarray]:
        """Uniform form of :meth:`step`: needs ``z, n``; returns ``z, n, w``."""
        z, n, w = self.step(state["z"], state["n"], g, lr_scale)
        return {"z": z, "n": n, "w": w}

    def init_state(self, size: int) -> dict[str, np.ndarray]:
        """Zero state (and weights) for ``size`` coordinates."""
        return {k: np.zeros(size, np.float32) for k in ("w", *self.state_params)}

    def get_config(self) -> dict[str, Any]:
        """Hyper-parameters as a plain dict; see :func:`optimizer_from_config`."""
        return {"name": "FTRLProximal", "alpha": self.alpha, "beta": self.beta, "l1": self.l1, "l2": self.l2}


class AdaGrad:
    """AdaGrad with optional L2 folded into the gradient.

    ``g' = g + l2 w``; ``g2 += g'^2``; ``w -= lr * lr_scale * g' / (sqrt(g2) + eps)``.

    >>> w, g2 = AdaGrad(lr=0.1).step(np.array([0.0], np.float32), np.array([0.0], np.float32), np.array([2.0]))
    >>> round(float(w[0]), 4), g2.tolist()
    (-0.1, [4.0])
    """

    state_params = ("g2",)

    def __init__(self, lr: float = 0.1, eps: float = 1e-8, l2: float = 0.0) -> None:
        self.lr = _check_hparam("lr", lr, positive=True)
        self.eps = _check_hparam("eps", eps, positive=True)
        self.l2 = _check_hparam("l2", l2)

    def __repr__(self) -> str:
        return f"AdaGrad(lr={self.lr}, eps={self.eps}, l2={self.l2})"

    def step(self, w: np.ndarray, g2: np.ndarray, g: np.ndarray,
             lr_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """One update; returns float32 ``(w_new, g2_new)``."""
        _same_shape(w=w, g2=g2, g=g)
        s = _check_scale(lr_scale)
        w64, g264, g64 = _f64("w", w), _f64("g2", g2), _f64("g", g)
        if np.any(g264 < 0.0):
            raise ValueError("g2 (sum of squared gradients) must be >= 0; the state is corrupt")
        geff = g64 + self.l2 * w64
        g2_new = g264 + geff * geff
        w_new = w64 - self.lr * s * geff / (np.sqrt(g2_new) + self.eps)
        return _f32_out("w", w_new), _f32_out("g2", g2_new)

    def apply(self, state: Mapping[str, np.ndarray], g: np.ndarray,
              lr_scale: float = 1.0) -> dict[str, np.ndarray]:
        """Uniform form of :meth:`step`: needs ``w, g2``; returns ``w, g2``."""
        w, g2 = self.step(state["w"], state["g2"], g, lr_scale)
        return {"w": w, "g2": g2}

    def init_state(self, size: int) -> dict[str, np.ndarray]:
        """Zero state (and weights) for ``size`` coordinates."""
        return {k: np.zeros(size, np.float32) for k in ("w", *self.state_params)}

    def get_config(self) -> dict[str, Any]:
        """Hyper-parameters as a plain dict; see :func:`optimizer_from_config`."""
        return {"name": "AdaGrad", "lr": self.lr, "eps": self.eps, "l2": self.l2}


class SGD:
    """Plain SGD with L2: ``w -= lr * lr_scale * (g + l2 w)``.

    >>> SGD(lr=0.5).step(np.array([1.0], np.float32), np.array([0.5])).tolist()
    [0.75]
    """

    state_params: tuple[str, ...] = ()

    def __init__(self, lr: float = 0.1, l2: float = 0.0) -> None:
        self.lr = _check_hparam("lr", lr, positive=True)
        self.l2 = _check_hparam("l2", l2)

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr}, l2={self.l2})"

    def step(self, w: np.ndarray, g: np.ndarray, lr_scale: float = 1.0) -> np.ndarray:
        """One update; returns float32 ``w_new``."""
        _same_shape(w=w, g=g)
        s = _check_scale(lr_scale)
        w64, g64 = _f64("w", w), _f64("g", g)
        return _f32_out("w", w64 - self.lr * s * (g64 + self.l2 * w64))

    def apply(self, state: Mapping[str, np.ndarray], g: np.ndarray,
              lr_scale: float = 1.0) -> dict[str, np.ndarray]:
        """Uniform form of :meth:`step`: needs ``w``; returns ``w``."""
        return {"w": self.step(state["w"], g, lr_scale)}

    def init_state(self, size: int) -> dict[str, np.ndarray]:
        """Zero weights for ``size`` coordinates."""
        return {"w": np.zeros(size, np.float32)}

    def get_config(self) -> dict[str, Any]:
        """Hyper-parameters as a plain dict; see :func:`optimizer_from_config`."""
        return {"name": "SGD", "lr": self.lr, "l2": self.l2}


_OPTIMIZERS = {"FTRLProximal": FTRLProximal, "AdaGrad": AdaGrad, "SGD": SGD}


def optimizer_from_config(config: Mapping[str, Any]) -> FTRLProximal | AdaGrad | SGD:
    """Rebuild an optimizer from ``get_config()`` output.

    >>> optimizer_from_config(FTRLProximal(l1=0.5).get_config())
    FTRLProximal(alpha=0.05, beta=1.0, l1=0.5, l2=0.0)
    """
    params = dict(config)
    name = params.pop("name", None)
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_OPTIMIZERS)}")
    try:
        optimizer: FTRLProximal | AdaGrad | SGD = _OPTIMIZERS[name](**params)
        return optimizer
    except TypeError as exc:
        raise ValueError(f"bad parameters for {name}: {exc}") from None
