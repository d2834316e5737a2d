"""Per-event semantics inside a micro-batch: the batch's events learned one after another.

FTRL-Proximal, AdaGrad and SGD are per coordinate: an event changes only the coordinates it touches
(and the bias), and how it changes them depends on the event's residual ``p - y``, which depends on
the weights the earlier events of the batch left. :func:`sequential_pass` walks the batch in order on
a compact copy of the touched coordinates' state, so a batch learned with it ends exactly where a
per-event learner would (float64 inside the pass, float32 at the end), instead of taking one summed
step per batch.

The pass records, per step, the gradient it applied at each coordinate. Given those gradients the
coordinates are independent again, so :func:`replay` can apply the same sequence of steps to any
other state of a *subset* of the coordinates (one storage chunk, after a compare-and-set conflict
moved it): the result is what the steps give on the fresher state, with the residuals the pass
computed (the same staleness a summed gradient has).

Batches longer than ``max_steps`` events are learned in ``max_steps`` steps of consecutive events
(their gradients summed within a step), which bounds the Python loop's cost; a batch of at most
``max_steps`` events is exactly per event.

>>> from cstore.learn.optimizers import FTRLProximal
>>> opt = FTRLProximal(alpha=0.5)
>>> st = opt.init_state(2)
>>> res = sequential_pass(opt, opt, st, opt.init_state(1), np.array([0, 1, 2]), np.array([0, 1]),
...                       np.array([1.0, 1.0]), np.array([1.0, 0.0]), np.ones(2))
>>> [round(float(v), 4) for v in res.state["w"]], res.steps
([0.1667, -0.1757], 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cstore.learn.optimizers import SGD, AdaGrad, FTRLProximal

__all__ = ["MAX_STEPS", "SequentialResult", "positions", "replay", "sequential_pass"]

#: Steps per batch at most (a batch of more events groups consecutive events into one step). Each step
#: costs ~10-30 µs of Python; at 128 a 20,000-event batch learns as fast as one summed step did in
#: ``cstore bench apply``, and the worker's usual batches (100-ish events) stay exactly per event.
MAX_STEPS = 128

Optimizer = FTRLProximal | AdaGrad | SGD
State = dict[str, np.ndarray]
Index = np.ndarray


@dataclass(frozen=True)
class SequentialResult:
    """What :func:`sequential_pass` leaves: the new float32 state of the touched coordinates and of
    the bias, and the record of the steps (``entry_pos`` into the coordinates, ``entry_step``,
    ``entry_grad``: one entry per coordinate and step, in step order;
    ``bias_grad`` per step) that :func:`replay` re-applies."""

    state: State
    bias_state: State
    entry_pos: np.ndarray   # int64
    entry_step: np.ndarray  # int64
    entry_grad: np.ndarray  # float64
    bias_grad: np.ndarray   # float64[steps]
    steps: int


class _Kernel:
    """One optimizer's step on float64 state arrays at positions ``c``, in place, unchecked.

    Same maths as the optimizer's ``step``. FTRL with ``l1 == 0`` uses its closed form
    ``w' = w - s alpha g / (beta + alpha l2 + sqrt(n'))``, which is Algorithm 1 exactly in real
    arithmetic, and keeps ``z = -w D`` implicit until the end of the pass. ``step`` is a closure
    bound once per pass: the loop calls it per event, so no dispatch happens inside.
    """

    def __init__(self, opt: Optimizer, s: float, state: Mapping[str, np.ndarray]) -> None:
        self.opt, self.s = opt, float(s)
        self.arr = {k: np.asarray(v, np.float64).copy() for k, v in state.items()}
        self.w = self.arr["w"]
        self.ftrl_l1 = isinstance(opt, FTRLProximal) and opt.l1 > 0.0
        self.step = self._bind()

    def _bind(self) -> Callable[[Index, np.ndarray, np.ndarray], None]:
        a, opt, s, w = self.arr, self.opt, self.s, self.w
        if isinstance(opt, FTRLProximal):
            n, z, alpha = a["n"], a["z"], opt.alpha
            if self.ftrl_l1:
                def ftrl_l1(c: Index, g: np.ndarray, w0: np.ndarray) -> None:
                    n0 = n[c]
                    n1 = n0 + g * g
                    z1 = z[c] + s * g - (np.sqrt(n1) - np.sqrt(n0)) / alpha * w0
                    z[c], n[c] = z1, n1
                    w[c] = opt._weights64(z1, n1)
                return ftrl_l1
            sa, bl = s * alpha, opt.beta + alpha * opt.l2

            def ftrl(c: Index, g: np.ndarray, w0: np.ndarray) -> None:
                n1 = n[c] + g * g
                n[c] = n1
                w[c] = w0 - sa * g / (bl + np.sqrt(n1))
            return ftrl
        if isinstance(opt, AdaGrad):
            g2, lrs, l2, eps = a["g2"], opt.lr * s, opt.l2, opt.eps

            def adagrad(c: Index, g: np.ndarray, w0: np.ndarray) -> None:
                geff = g + l2 * w0 if l2 else g
                g21 = g2[c] + geff * geff
                g2[c] = g21
                w[c] = w0 - lrs * geff / (np.sqrt(g21) + eps)
            return adagrad
        lrs, l2 = opt.lr * s, opt.l2

        def sgd(c: Index, g: np.ndarray, w0: np.ndarray) -> None:
            w[c] = w0 - lrs * (g + l2 * w0)
        return sgd

    def result(self) -> State:
        a, opt = self.arr, self.opt
        out = {k: v.astype(np.float32) for k, v in a.items()}
        if isinstance(opt, FTRLProximal):
            if not self.ftrl_l1:  # z from the closed form, then w exactly as weights_from(z, n) gives it
                denom = (opt.beta + np.sqrt(out["n"].astype(np.float64))) / opt.alpha + opt.l2
                out["z"] = (-a["w"] * denom).astype(np.float32)
            out["w"] = opt.weights_from(out["z"], out["n"])
        for k, v in out.items():
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{k} overflowed float32 in the sequential pass; scale features down")
        return out


def _same_rule(opt: Optimizer, bias_opt: Optimizer) -> bool:
    """Whether the bias learns with the weights' rule (then it is one more coordinate of the pass)."""
    return type(opt) is type(bias_opt) and opt.get_config() == bias_opt.get_config()


def _sigmoid(m: float) -> float:
    if m >= 0.0:
        return 1.0 / (1.0 + math.exp(-m))
    e = math.exp(m)
    return e / (1.0 + e)


def positions(indices: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """``(coords, pos)``: the sorted distinct indices and each entry's position among them
    (``np.unique(..., return_inverse=True)``, over a dense mark when the space is small).

    >>> [a.tolist() for a in positions(np.array([5, 2, 5]), 8)]
    [[2, 5], [1, 0, 1]]
    """
    idx = np.asarray(indices, np.int64)
    if n_features <= 32 * max(idx.size, 1):
        mark = np.zeros(n_features, bool)
        mark[idx] = True
        coords = np.flatnonzero(mark)
        lut = np.empty(n_features, np.int64)
        lut[coords] = np.arange(coords.size)
        return coords, lut[idx]
    coords, pos = np.unique(idx, return_inverse=True)
    return coords.astype(np.int64), pos.ravel().astype(np.int64)


def sequential_pass(opt: Optimizer, bias_opt: Optimizer, state: Mapping[str, np.ndarray],
                    bias_state: Mapping[str, np.ndarray], indptr: np.ndarray, pos: np.ndarray,
                    values: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray,
                    lr_scale: float = 1.0, max_steps: int = MAX_STEPS) -> SequentialResult:
    """Learn a CSR micro-batch event by event (``max_steps`` steps at most).

    ``state``: float32 arrays (``w`` and the optimizer's state) of the batch's ``K`` distinct
    coordinates; ``pos`` gives each entry's position among them (``0 <= pos < K``; duplicates
    inside a row are summed, see :func:`positions`). ``bias_state``: the bias's one-element arrays.
    """
    indptr = np.asarray(indptr, np.int64)
    pos = np.asarray(pos, np.int64)
    vals = np.asarray(values, np.float64)
    y = np.asarray(labels, np.float64)
    sw = np.asarray(sample_weights, np.float64)
    m = indptr.size - 1
    k = len(state["w"])
    if pos.size != vals.size or (pos.size and (pos.min() < 0 or pos.max() >= k)) or y.shape != (m,) \
            or sw.shape != (m,) or indptr[-1] != pos.size:
        raise ValueError("indptr, pos, values, labels and sample_weights do not describe the same batch")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    merged = _same_rule(opt, bias_opt)
    steps = min(m, max_steps)
    row = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
    st = {key: np.concatenate([np.asarray(v), np.asarray(bias_state[key])]) for key, v in state.items()} \
        if merged else dict(state)  # a merged bias is coordinate k
    if steps == m:
        if merged:  # ... with value 1 in every row, so one event is one vector step
            row = np.concatenate([row, np.arange(m, dtype=np.int64)])
            pos = np.concatenate([pos, np.full(m, k, np.int64)])
            vals = np.concatenate([vals, np.ones(m)])
        # Sort each row by coordinate and sum its duplicates (the bias sorts last).
        key = row * (k + 1) + pos
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = np.ones(key.size, bool)
        first[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(first)
        e_pos = pos[order][starts]
        e_val = np.add.reduceat(vals[order], starts) if starts.size else vals[:0]
        ent_bounds = np.searchsorted(row[order][starts], np.arange(m + 1)).tolist()
        row_bounds = list(range(m + 1))
    else:  # rows are in order already; each step sums the gradients of its rows' coordinates
        e_pos, e_val = pos, vals
        step_of_row = (np.arange(m, dtype=np.int64) * steps) // m
        rb = np.searchsorted(step_of_row, np.arange(steps + 1))
        ent_bounds, row_bounds = indptr[rb].tolist(), rb.tolist()
        row = row - rb[step_of_row[row]]  # each entry's row within its step
    kern = _Kernel(opt, lr_scale, st)
    bkern = None if merged else _Kernel(bias_opt, lr_scale, bias_state)
    w, step, ys, sws = kern.w, kern.step, y.tolist(), sw.tolist()
    rec_pos: list[np.ndarray] = []
    rec_grad: list[np.ndarray] = []
    bias_grad = np.empty(steps)
    b0 = np.zeros(1, np.int64)
    slot = np.empty(k + 1, np.int64) if steps < m else b0
    ar = np.arange(max((ent_bounds[t + 1] - ent_bounds[t] for t in range(steps)), default=0), dtype=np.int64)
    kk = np.array([k], np.int64)
    for t in range(steps):
        lo, hi = ent_bounds[t], ent_bounds[t + 1]
        rlo, rhi = row_bounds[t], row_bounds[t + 1]
        c, v = e_pos[lo:hi], e_val[lo:hi]
        if steps == m:  # one event: a scalar residual
            b = 0.0 if bkern is None else float(bkern.w[0])
            w0 = w[c]
            r = sws[rlo] * (_sigmoid(float(np.dot(w0, v)) + b) - ys[rlo])
            g = r * v
            rsum = r
        else:
            b = float(w[k]) if bkern is None else float(bkern.w[0])
            # Distinct coordinates of the step without sorting: the scratch slot of a coordinate
            # ends up holding its last entry; an entry that is its own slot is the first of a kind.
            n_ent = hi - lo
            slot[c] = ar[:n_ent]
            last = slot[c]
            own = last == ar[:n_ent]
            c = c[own]
            inv = (np.cumsum(own) - 1)[last]
            w0 = w[c]
            local = row[lo:hi]
            margins = np.bincount(local, weights=w0[inv] * v, minlength=rhi - rlo) + b
            with np.errstate(over="ignore"):  # exp(-m) = inf for m < -709 gives p = 0, which is right
                rr = sw[rlo:rhi] * (1.0 / (1.0 + np.exp(-margins)) - y[rlo:rhi])
            g = np.bincount(inv, weights=rr[local] * v, minlength=c.size)
            rsum = float(rr.sum())
            if bkern is None:  # the merged bias joins the step as its last coordinate
                c, g, w0 = np.concatenate([c, kk]), np.append(g, rsum), np.append(w0, b)
        step(c, g, w0)
        rec_pos.append(c)
        rec_grad.append(g)
        if bkern is None:  # the bias is the step's last coordinate
            bias_grad[t] = g[-1]
        else:
            bias_grad[t] = rsum
            bkern.step(b0, np.array([rsum]), bkern.w[b0])
    out = kern.result()
    lens = np.array([a.size for a in rec_pos], np.int64)
    u_pos = np.concatenate(rec_pos) if rec_pos else np.zeros(0, np.int64)
    u_grad = np.concatenate(rec_grad) if rec_grad else np.zeros(0)
    u_step = np.repeat(np.arange(steps, dtype=np.int64), lens)
    if bkern is None:
        bias_out = {key: v[k:] for key, v in out.items()}
        out = {key: v[:k] for key, v in out.items()}
        keep = u_pos < k
        u_pos, u_step, u_grad = u_pos[keep], u_step[keep], u_grad[keep]
    else:
        bias_out = bkern.result()
    return SequentialResult(out, bias_out, u_pos, u_step, u_grad, bias_grad, steps)


def replay(opt: Optimizer, state: Mapping[str, np.ndarray], pos: np.ndarray, step: np.ndarray, grad: np.ndarray,
           lr_scale: float = 1.0) -> State:
    """Apply recorded steps to ``state`` (float32 arrays of some coordinates): entry ``i`` is the
    gradient ``grad[i]`` at position ``pos[i]`` in step ``step[i]``; per coordinate the steps are
    applied in step order. Coordinates are independent given the gradients, so this is vectorised
    over coordinates, one iteration per step a coordinate took.

    >>> opt = FTRLProximal(alpha=0.5)
    >>> st = replay(opt, opt.init_state(1), np.array([0, 0]), np.array([0, 1]), np.array([-0.5, 0.4]))
    >>> round(float(st["w"][0]), 4)
    0.0447
    """
    pos, step, grad = (np.asarray(a) for a in (pos, step, grad))
    kern = _Kernel(opt, lr_scale, state)
    if pos.size:
        order = np.lexsort((step, pos))
        p, g = pos[order], np.asarray(grad, np.float64)[order]
        first = np.ones(p.size, bool)
        first[1:] = p[1:] != p[:-1]
        starts = np.flatnonzero(first)
        rank = np.arange(p.size) - np.repeat(starts, np.diff(np.append(starts, p.size)))
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
        for r in range(bounds.size - 1):
            sel = by_rank[bounds[r]:bounds[r + 1]]
            c = p[sel]
            kern.step(c, g[sel], kern.w[c])
    return kern.result()
