"""The references cstore is compared with, on the same events in the same order.

* River's in-memory online logistic regression with the optimizer matching cstore's (FTRL-Proximal,
  AdaGrad or SGD, same hyper-parameters), learning one event at a time: the "comparable settings"
  reference (``river``); and River's ``LogisticRegression()`` at its defaults (``river_default``).
  Both get the *same hashed features* as cstore (``{index: value}`` from cstore's FeatureHasher), so
  hashing collisions are identical on both sides and any gap comes from the system, not the input.
* A frozen model: the ``river`` learner copied after the first 10% of the stream and never updated
  again (before that point it *is* the river learner).
* Vowpal Wabbit (``vw``): ``--loss_function logistic`` at its defaults (adaptive, normalised and
  invariant updates, learning rate 0.5, its own constant feature), one event at a time, on the same
  hashed features (VW takes an integer feature name as its index, and its default 2^18 space holds
  cstore's 2^16 without new collisions).
* River's ADWIN at its defaults on the river learner's prequential 0/1 error: the false-alarm yardstick.
* ``replica``: cstore's own maths (the worker's per-event pass, or its summed step, with the same optimizer,
  schedule and drift detector objects) in memory, without Cassandra. It isolates what micro-batching costs from what the
  distributed system (delays, several workers, ordering) costs.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from cstore.learn import (KIND_WEIGHTS, AdaptiveLearningRate, FeatureHasher, batch_gradient, log_loss,
                          optimizer_from_config, positions, predict_proba_batch, sequential_pass)
from cstore.training._shared_state import GroupDrift  # the group's detectors, exactly as the workers run them
from cstore_dev.evaluation.deps import require_river, require_vw


def river_optimizer(river: Any, cfg: Mapping[str, Any]) -> Any:
    """River's optimizer equivalent to a cstore optimizer config."""
    name = cfg["name"]
    if name == "FTRLProximal":
        return river.optim.FTRLProximal(alpha=cfg["alpha"], beta=cfg["beta"], l1=cfg["l1"], l2=cfg["l2"])
    if name == "AdaGrad":
        return river.optim.AdaGrad(lr=cfg["lr"])
    return river.optim.SGD(lr=cfg["lr"])


def run_river(hashed: list[dict[int, float]], labels: np.ndarray, optimizer_cfg: Mapping[str, Any],
              frozen_at: int) -> dict[str, Any]:
    """Prequential predictions of River (matching optimizer, defaults), the frozen copy, and ADWIN alarms."""
    river = require_river()
    lm = river.linear_model
    model = lm.LogisticRegression(optimizer=river_optimizer(river, optimizer_cfg))
    default = lm.LogisticRegression()
    adwin = river.drift.ADWIN()
    frozen = None
    n = len(hashed)
    p_river, p_default, p_frozen = np.empty(n), np.empty(n), np.empty(n)
    adwin_at: list[int] = []
    for i, (x, y) in enumerate(zip(hashed, labels)):
        if i == frozen_at:
            frozen = copy.deepcopy(model)
        p = model.predict_proba_one(x).get(True, 0.5)
        p_river[i] = p
        p_default[i] = default.predict_proba_one(x).get(True, 0.5)
        p_frozen[i] = p if frozen is None else frozen.predict_proba_one(x).get(True, 0.5)
        target = bool(y > 0.5)
        model.learn_one(x, target)
        default.learn_one(x, target)
        adwin.update(float((p >= 0.5) != target))
        if adwin.drift_detected:
            adwin_at.append(i + 1)
    return {"river": p_river, "river_default": p_default, "frozen": p_frozen, "adwin": adwin_at}


def run_vw(hashed: list[dict[int, float]], labels: np.ndarray) -> np.ndarray:
    """Vowpal Wabbit's prequential probabilities: predict, then learn, event by event."""
    vw = require_vw().Workspace("--loss_function logistic --quiet")
    out = np.empty(len(hashed))
    try:
        for i, (x, y) in enumerate(zip(hashed, labels)):
            line = f"{1 if y > 0.5 else -1} | " + " ".join(f"{j}:{v:.7g}" for j, v in x.items())
            margin = float(vw.predict(line))  # the raw score; logistic loss learns it as a log-odds
            out[i] = 1.0 / (1.0 + np.exp(-margin))
            vw.learn(line)
    finally:
        vw.finish()
    return out


def run_replica(rows: list[Mapping[str, Any]], labels: np.ndarray, learner_cfg: Mapping[str, Any],
                block: int) -> dict[str, Any]:
    """cstore's worker maths in memory: score a block, then learn it as the worker does (per event, or
    one summed-gradient step for the block with ``update="summed"``).

    Mirrors :meth:`cstore.training.Worker._learn` and :meth:`SharedLearnerState.apply_batch` with one
    worker and no delay beyond the block itself (explicit feedback, weight 1); the drift detectors get each
    block's losses and labels (``apply_batch(..., labels=y)``).
    """
    hasher = FeatureHasher(learner_cfg["n_features"], learner_cfg["hash_seed"])
    opt = optimizer_from_config(learner_cfg["optimizer"])
    bopt = optimizer_from_config(learner_cfg["bias_optimizer"])
    state = opt.init_state(learner_cfg["n_features"])
    bstate = bopt.init_state(1)
    group = GroupDrift(learner_cfg["drift"])
    sched = AdaptiveLearningRate(**learner_cfg["schedule"])
    boost = learner_cfg["drift_response"] in ("boost", "both")
    kw = KIND_WEIGHTS["explicit"]
    out = np.empty(len(rows))
    drifts: list[int] = []
    for lo in range(0, len(rows), block):
        hi = min(lo + block, len(rows))
        indptr, idx, val = hasher.transform_many(rows[lo:hi])
        y = labels[lo:hi]
        bias = float(bstate["w"][0])
        p = predict_proba_batch(state["w"], bias, indptr, idx, val)
        out[lo:hi] = p
        losses = np.asarray(log_loss(p, y), np.float64)
        drifted = group.feed(losses, y, lo)
        if drifted:
            drifts.append(hi)
        sched.update(float(losses.mean()), int(losses.size))
        if drifted and boost:  # same order as SharedLearnerState.apply_batch
            sched.on_drift()
        s = np.full(hi - lo, kw)
        if learner_cfg.get("update", "per_event") == "per_event":
            coords, pos = positions(idx, learner_cfg["n_features"])
            res = sequential_pass(opt, bopt, {k: v[coords] for k, v in state.items()}, bstate, indptr, pos, val, y, s,
                                  sched.scale)
            for k, v in res.state.items():
                state[k][coords] = v
            bstate = res.bias_state
            continue
        g = batch_gradient(state["w"], bias, indptr, idx, val, y, s)
        new = opt.apply({k: state[k][g.indices] for k in ("w", *opt.state_params)}, g.values, sched.scale)
        for k, v in new.items():
            state[k][g.indices] = v
        for k, v in bopt.apply({k: bstate[k] for k in ("w", *bopt.state_params)}, np.array([g.bias]),
                               sched.scale).items():
            bstate[k] = v
    return {"replica": out, "replica_detections": drifts}
