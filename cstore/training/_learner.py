"""Learner models: hashed logistic regression whose weights *and optimizer state* are parameters.

>>> from cstore.training import create_learner                     # doctest: +SKIP
>>> create_learner(store, "fraud", n_features=2**20, optimizer="ftrl", alpha=0.3, l1=1.0)  # doctest: +SKIP

Parameters per optimizer (all chunked alike, so chunk ``k`` of each lives in one partition and a
commit updates weights and state together, atomically):

* ``ftrl``: ``weights``, ``z``, ``n`` and ``bias``, ``bias_z``, ``bias_n``;
* ``adagrad``: ``weights``, ``g2`` and ``bias``, ``bias_g2``;
* ``sgd``: ``weights`` and ``bias``.

The learner configuration (hashing, optimizer, kind weights, age half-life, drift detection and its
response, learning-rate schedule) is stored in the model's metadata under ``"learner"``. Because
the optimizer state is stored, a restarted or replacement worker continues exactly where the last
commit left off.

Micro-batches (``update``): by default (``"per_event"``) a worker learns its batch's events one after
another, as an in-memory per-event learner would (:mod:`cstore.learn.sequential`; batches of more than
``MAX_STEPS`` events in that many steps of consecutive events), and commits the result. Its commit
transform, re-applied on a compare-and-set conflict, replays the pass's per-coordinate steps on the
fresher rows: the other writer's update is kept and ours is applied on top, with the residuals our
pass computed (the staleness a summed gradient has too); without a conflict the committed state is
exactly the pass's. ``"summed"`` takes one summed-gradient step per batch instead (the behaviour before
per-event passes): each coordinate takes one step per batch instead of one per event, which costs
learning quality (see ``benchmarks/QUALITY.md``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cstore.core import ChunkRow, CommitMeta, ModelInfo, Transform, UpdateResult
from cstore.errors import ValidationError
from cstore.feedback import DEFAULT_PRIORITIES, KINDS, check_layout, context
from cstore.learn import (KIND_WEIGHTS, SGD, AdaGrad, AdaptiveLearningRate, FeatureHasher, FTRLProximal,
                          SequentialResult, batch_gradient, fedavg, fedavg_sparse, optimizer_from_config, positions,
                          replay, sequential_pass)
from cstore.store import Amounts, Store, amounts_of
from cstore.training._shared_state import DEFAULT_WARMUP, make_detector

__all__ = ["DRIFT_DETECTORS", "DRIFT_RESPONSES", "LEARNER_CHUNK_SIZE", "OPTIMIZERS", "UPDATES", "Learner",
           "LearnerConfig", "commit_federated", "create_learner", "learner_config"]

# Weights per chunk of a learner (a chunk is one compare-and-set). A label of ~30 hashed features
# touches up to min(30, chunks) chunks (a transaction of the bench's pool: 23.0 of 64, 13.0 of 16, 4.0 of
# 4) and a bulk batch touches every chunk, so each commit of a 2^20-feature model makes ~4 Paxos rounds at
# 262,144 where it made 16 (bulk) or ~13 (critical) at 65,536. A commit's bytes do not grow with the
# chunk (delta entries carry only the touched coordinates; a fold rewrites a chunk after a few of them:
# about the same bytes per second at any size). Beside 5,000 bulk events/s with realistic critical
# labels (benchmarks/RESULTS.md, "Critical labels with their features"), 262,144 against 65,536: bulk
# freshness p50 0.85-0.94 against 1.0-1.6 s, conflicts 436-466 against 1,831-3,026, critical labels
# level. 524,288 measured a little better still, but its cells (2 MiB per parameter row) pass
# Cassandra's practical ~1 MB per blob; 262,144 float32 weights are 1 MiB. A plain model's chunks
# (create_model: atomic updates of a few coordinates) stay at DEFAULT_CHUNK_SIZE.
LEARNER_CHUNK_SIZE = 262144

OPTIMIZERS = {"ftrl": "FTRLProximal", "adagrad": "AdaGrad", "sgd": "SGD"}
DRIFT_DETECTORS = ("page_hinkley", "adwin", "none")
DRIFT_RESPONSES = ("boost", "snapshot", "both", "none")
UPDATES = ("per_event", "summed")


@dataclass(frozen=True)
class LearnerConfig:
    n_features: int
    hash_seed: int
    optimizer: Mapping[str, Any]
    bias_optimizer: Mapping[str, Any]
    kind_weights: Mapping[str, float]
    half_life_s: float | None
    drift: Mapping[str, Any]
    drift_response: str
    schedule: Mapping[str, Any]
    update: str = "per_event"  # models created before it existed learn per event too
    window_s: float | None = None  # learn only from events at most this old (event time); None: all

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()}


def learner_config(info: ModelInfo) -> LearnerConfig:
    raw = info.metadata.get("learner") if isinstance(info.metadata, Mapping) else None
    if not raw:
        raise ValidationError(f"model {info.name!r} is not a learner (no 'learner' metadata); create one with "
                              f"`cstore model create-learner` or cstore.create_learner()")
    return LearnerConfig(**raw)


def _param_names(opt_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Optimizer state key -> parameter name, for the weights and for the bias."""
    keys = ("w", *{"FTRLProximal": ("z", "n"), "AdaGrad": ("g2",), "SGD": ()}[opt_name])
    return ({k: ("weights" if k == "w" else k) for k in keys},
            {k: ("bias" if k == "w" else f"bias_{k}") for k in keys})


def create_learner(store: Store, name: str, *, n_features: int = 2**20, optimizer: str = "ftrl", alpha: float = 0.3,
                   beta: float = 1.0, l1: float = 0.0, l2: float = 0.0, lr: float = 0.1, hash_seed: int = 0,
                   chunk_size: int = LEARNER_CHUNK_SIZE, kind_weights: Mapping[str, float] | None = None,
                   half_life_s: float | None = None, drift: str = "page_hinkley",
                   drift_params: Mapping[str, Any] | None = None, drift_confirmations: int = 2,
                   drift_within: int = 2000, drift_warmup: int = DEFAULT_WARMUP, drift_response: str = "boost",
                   schedule: Mapping[str, Any] | None = None, partitions: int | None = None,
                   bucket_s: int | None = None, ttl_s: int | None = None, lateness_s: int | None = None,
                   priorities: Mapping[str, int] | None = None, update: str = "per_event",
                   window_s: float | None = None) -> ModelInfo:
    """Create a learner model and fix its feedback layout; everything is validated before writing."""
    if optimizer not in OPTIMIZERS:
        raise ValidationError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    try:
        FeatureHasher(n_features, hash_seed, cache_size=0)
        builders: dict[str, Callable[[], FTRLProximal | AdaGrad | SGD]] = {
            "ftrl": lambda: FTRLProximal(alpha, beta, l1, l2), "adagrad": lambda: AdaGrad(lr, l2=l2),
            "sgd": lambda: SGD(lr, l2)}
        bias_builders: dict[str, Callable[[], FTRLProximal | AdaGrad | SGD]] = {
            "ftrl": lambda: FTRLProximal(alpha, beta), "adagrad": lambda: AdaGrad(lr), "sgd": lambda: SGD(lr)}
        opt, bias_opt = builders[optimizer](), bias_builders[optimizer]()
        AdaptiveLearningRate(**(schedule or {}))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"invalid learner settings: {exc}") from None
    weights = dict(KIND_WEIGHTS if kind_weights is None else kind_weights)
    if set(weights) != set(KINDS) or any(not isinstance(v, (int, float)) or not 0 <= v <= 100
                                         for v in weights.values()):
        raise ValidationError(f"kind_weights must give a weight in [0, 100] to each of {', '.join(KINDS)}")
    if half_life_s is not None and not (isinstance(half_life_s, (int, float)) and half_life_s > 0):
        raise ValidationError(f"half_life_s must be a positive number of seconds or None, got {half_life_s!r}")
    if window_s is not None and (isinstance(window_s, bool) or not isinstance(window_s, (int, float))
                                 or not window_s > 0):
        raise ValidationError(f"window_s must be a positive number of seconds or None, got {window_s!r}")
    if update not in UPDATES:
        raise ValidationError(f"update {update!r} is not one of {', '.join(UPDATES)}")
    if drift not in DRIFT_DETECTORS:
        raise ValidationError(f"drift detector {drift!r} is not one of {', '.join(DRIFT_DETECTORS)}")
    if isinstance(drift_warmup, bool) or not isinstance(drift_warmup, int) or drift_warmup < 0:
        raise ValidationError(f"drift_warmup must be a number of events >= 0, got {drift_warmup!r}")
    if drift_response not in DRIFT_RESPONSES:
        raise ValidationError(f"drift_response {drift_response!r} is not one of {', '.join(DRIFT_RESPONSES)}")
    drift_cfg = {"detector": drift, "params": dict(drift_params or {}), "confirmations": drift_confirmations,
                 "within": drift_within, "warmup": drift_warmup}
    try:  # validates the detector settings
        make_detector(drift_cfg)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"invalid drift settings: {exc}") from None
    c = store.config
    layout: dict[str, Any] = {"partitions": partitions or c.feedback_partitions,
                              "bucket_s": bucket_s or c.feedback_bucket_s, "ttl_s": ttl_s or c.feedback_ttl_s,
                              "lateness_s": lateness_s or c.feedback_lateness_s,
                              "priorities": dict(priorities or DEFAULT_PRIORITIES)}
    check_layout(**layout)
    cfg = LearnerConfig(n_features, hash_seed, opt.get_config(), bias_opt.get_config(), weights, half_life_s,
                        drift_cfg, drift_response, dict(schedule or {}), update, window_s)
    wnames, bnames = _param_names(opt.get_config()["name"])
    params = {**{p: (n_features,) for p in wnames.values()}, **{p: (1,) for p in bnames.values()}}
    info = store.create_model(name, params, chunk_size=chunk_size, metadata={"learner": cfg.to_dict()})
    context(store).layout(name, **layout)
    return info


@dataclass(frozen=True)
class _Pass:
    """A batch learned event by event: the chunk of each of its sorted distinct coordinates and where each
    chunk's run starts (``bounds``), per touched chunk its span among them and their chunk-local indices,
    the state the pass started from (weights' and bias's) and its result."""

    chunk_of: np.ndarray
    bounds: np.ndarray
    spans: dict[int, tuple[int, int]]
    local: dict[int, np.ndarray]
    start: dict[str, np.ndarray]
    bstart: dict[str, np.ndarray]
    res: SequentialResult


class Learner:
    """Binds a learner config to its hasher, optimizers and parameter names; builds commit transforms."""

    def __init__(self, info: ModelInfo, cfg: LearnerConfig) -> None:
        self.info = info
        self.cfg = cfg
        self.hasher = FeatureHasher(cfg.n_features, cfg.hash_seed)
        self.opt = optimizer_from_config(cfg.optimizer)
        self.bias_opt = optimizer_from_config(cfg.bias_optimizer)
        self.wparams, self.bparams = _param_names(cfg.optimizer["name"])
        self.bias_chunk = 0  # (1,)-shaped parameters live in chunk 0

    def chunks_of(self, indices: np.ndarray) -> list[int]:
        return sorted(set((indices // self.info.chunk_size).tolist()) | {self.bias_chunk})

    def batch_transform(self, current: Mapping[int, Mapping[str, ChunkRow]], weights: np.ndarray, bias: float,
                        indptr: np.ndarray, idx: np.ndarray, val: np.ndarray, y: np.ndarray, s: np.ndarray,
                        lr_scale: float) -> Transform:
        """The commit transform learning one batch, as the config's ``update`` says. ``current``: the
        touched chunks' rows; ``weights``/``bias``: the same weights, dense (the summed step's input)."""
        if self.cfg.update == "summed":
            g = batch_gradient(weights, bias, indptr, idx, val, y, s)
            return self.gradient_transform(g.indices, g.values, g.bias, lr_scale)
        return self.sequential_transform(current, indptr, idx, val, y, s, lr_scale)

    def increments(self, current: Mapping[int, Mapping[str, ChunkRow]], weights: np.ndarray, bias: float,
                   indptr: np.ndarray, idx: np.ndarray, val: np.ndarray, y: np.ndarray, s: np.ndarray,
                   lr_scale: float) -> Amounts:
        """What learning the batch from ``current`` changes, as amounts to add at the touched coordinates,
        per chunk and parameter (the critical lane's increment): the per-event pass's result minus where
        it started, with no chunk copied (the summed step goes through its transform)."""
        if self.cfg.update == "summed":
            transform = self.batch_transform(current, weights, bias, indptr, idx, val, y, s, lr_scale)
            return amounts_of(transform, current)
        ps = self._pass(current, indptr, idx, val, y, s, lr_scale)
        out: Amounts = {}
        for k, (lo, hi) in ps.spans.items():
            out[k] = {p: (ps.local[k], ps.res.state[key][lo:hi] - ps.start[key][lo:hi])
                      for key, p in self.wparams.items()}
        out.setdefault(self.bias_chunk, {}).update(
            {p: (np.zeros(1, np.int32), ps.res.bias_state[key] - ps.bstart[key]) for key, p in self.bparams.items()})
        return out

    def _pass(self, current: Mapping[int, Mapping[str, ChunkRow]], indptr: np.ndarray, idx: np.ndarray,
              val: np.ndarray, y: np.ndarray, s: np.ndarray, lr_scale: float) -> _Pass:
        """The batch learned event by event from ``current`` (see :class:`_Pass`)."""
        cs, bk = self.info.chunk_size, self.bias_chunk
        coords, pos = positions(idx, self.cfg.n_features)
        chunk_of = coords // cs
        bounds = np.searchsorted(chunk_of, np.arange(self.info.n_chunks("weights") + 1))
        spans = {k: (int(bounds[k]), int(bounds[k + 1])) for k in range(len(bounds) - 1) if bounds[k + 1] > bounds[k]}
        local = {k: (coords[lo:hi] - k * cs).astype(np.int32) for k, (lo, hi) in spans.items()}
        start: dict[str, np.ndarray] = {}
        for key, p in self.wparams.items():
            start[key] = np.empty(coords.size, np.float32)
            for k, (lo, hi) in spans.items():
                start[key][lo:hi] = current[k][p].data[local[k]]
        bstart = {key: np.asarray(current[bk][p].data[:1], np.float32) for key, p in self.bparams.items()}
        res = sequential_pass(self.opt, self.bias_opt, start, bstart, indptr, pos, val, y, s, lr_scale)
        return _Pass(chunk_of, bounds, spans, local, start, bstart, res)

    def sequential_transform(self, current: Mapping[int, Mapping[str, ChunkRow]], indptr: np.ndarray,
                             idx: np.ndarray, val: np.ndarray, y: np.ndarray, s: np.ndarray,
                             lr_scale: float) -> Transform:
        """Learn the batch event by event from ``current``; a transform committing the result (or, on
        rows that moved meanwhile, replaying the pass's steps on them)."""
        bk = self.bias_chunk
        ps = self._pass(current, indptr, idx, val, y, s, lr_scale)
        chunk_of, bounds, spans, local, start, bstart, res = (ps.chunk_of, ps.bounds, ps.spans, ps.local, ps.start,
                                                              ps.bstart, ps.res)
        plans = {k: (local[k], {key: a[lo:hi] for key, a in start.items()},
                     {key: a[lo:hi] for key, a in res.state.items()}, current[k]) for k, (lo, hi) in spans.items()}
        bias_plan = (np.zeros(1, np.int32), bstart, res.bias_state, current[bk])
        split: list[tuple[np.ndarray, np.ndarray]] = []

        def steps_of(chunk: int, bias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """The pass's steps at this chunk's coordinates (only a conflict needs them)."""
            if bias:
                return np.zeros(res.steps, np.int64), np.arange(res.steps), res.bias_grad
            if not split:
                by_chunk = np.argsort(chunk_of[res.entry_pos], kind="stable")
                split.append((by_chunk, np.searchsorted(chunk_of[res.entry_pos][by_chunk], np.arange(len(bounds)))))
            by_chunk, e_bounds = split[0]
            sel = by_chunk[e_bounds[chunk]:e_bounds[chunk + 1]]
            return res.entry_pos[sel] - spans[chunk][0], res.entry_step[sel], res.entry_grad[sel]
        opt, bias_opt, wparams, bparams = self.opt, self.bias_opt, self.wparams, self.bparams

        def transform(chunk: int, rows: Mapping[str, ChunkRow]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
            out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for names, optimizer, plan in ((wparams, opt, plans.get(chunk)),
                                           (bparams, bias_opt, bias_plan if chunk == bk else None)):
                if plan is None:
                    continue
                loc, before, after, read = plan
                # Unmoved rows (the very arrays the pass read, or equal at our coordinates): the pass's own
                # result. Moved ones (a conflict): its steps replayed on them.
                if all(rows[p].data is read[p].data for p in names.values()):
                    new = after
                else:
                    now = {key: rows[p].data[loc] for key, p in names.items()}
                    new = after if all(np.array_equal(now[key], before[key]) for key in now) else \
                        replay(optimizer, now, *steps_of(chunk, names is bparams), lr_scale=lr_scale)
                _place(out, rows, names, new, loc)
            return out
        return transform

    def gradient_transform(self, indices: np.ndarray, grad: np.ndarray, bias_grad: float,
                           lr_scale: float) -> Transform:
        """A pure chunk transform applying one optimizer step at ``indices`` (and to the bias)."""
        return self._transform(indices, grad, np.array([bias_grad]), lambda opt, st, g: opt.apply(st, g, lr_scale))

    def delta_transform(self, indices: np.ndarray, delta: np.ndarray, bias_delta: float) -> Transform:
        """A pure transform adding ``delta`` to the weights (federated updates), keeping state consistent."""
        return self._transform(indices, delta, np.array([bias_delta]), _add_delta)

    def _transform(self, indices: np.ndarray, values: np.ndarray, bias_values: np.ndarray,
                   step: Callable[[Any, dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]) -> Transform:
        cs = self.info.chunk_size
        order = np.argsort(indices, kind="stable")
        idx, vals = np.asarray(indices, np.int64)[order], np.asarray(values, np.float64)[order]
        bounds = np.searchsorted(idx // cs, np.arange(self.info.n_chunks("weights") + 1))
        per_chunk = {k: ((idx[bounds[k]:bounds[k + 1]] - k * cs).astype(np.int32), vals[bounds[k]:bounds[k + 1]])
                     for k in range(len(bounds) - 1) if bounds[k + 1] > bounds[k]}
        opt, bias_opt, wparams, bparams, bias_chunk = self.opt, self.bias_opt, self.wparams, self.bparams, \
            self.bias_chunk

        def transform(chunk: int, rows: Mapping[str, ChunkRow]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
            out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for names, optimizer, sel in ((wparams, opt, per_chunk.get(chunk)),
                                          (bparams, bias_opt, (np.zeros(1, np.int32), bias_values)
                                           if chunk == bias_chunk else None)):
                if sel is None:
                    continue
                local, g = sel
                state = {k: rows[p].data[local] for k, p in names.items()}
                _place(out, rows, names, step(optimizer, state, g), local)
            return out
        return transform


def _place(out: dict[str, tuple[np.ndarray, np.ndarray]], rows: Mapping[str, ChunkRow], names: Mapping[str, str],
           new: Mapping[str, np.ndarray], local: np.ndarray) -> None:
    """A transform's output: each parameter's chunk with ``new`` at ``local``, and the touched positions."""
    for key, arr in new.items():
        full = rows[names[key]].data.copy()
        full[local] = arr
        out[names[key]] = (full, local)


def _add_delta(opt: Any, state: Mapping[str, np.ndarray], delta: np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(opt, FTRLProximal):
        # FTRL's weights are a function of (z, n): move them by editing z, starting from the truth.
        target = opt.weights_from(state["z"], state["n"]).astype(np.float64) + delta
        # Invert w = -(z - sign(z) l1) / D for z, so FTRL's next step starts from the new weights.
        denom = (opt.beta + np.sqrt(state["n"].astype(np.float64))) / opt.alpha + opt.l2
        z = np.where(target != 0, -target * denom - np.sign(target) * opt.l1, 0.0).astype(np.float32)
        return {"z": z, "w": opt.weights_from(z, state["n"])}
    return {"w": (state["w"].astype(np.float64) + delta).astype(np.float32)}


def commit_federated(store: Store, name: str, updates: list[Mapping[str, Any]], *,
                     metadata: Mapping[str, Any] | None = None) -> UpdateResult:
    """FedAvg client deltas ``{"indices", "values", "count"[, "bias"]}`` and commit them as ``federated``.

    Same commit path as the workers (one transform per touched chunk, LWT, history); returns the
    :class:`~cstore.core.UpdateResult`.
    """
    info = store.model_info(name)
    learner = Learner(info, learner_config(info))
    if not updates:
        raise ValidationError("commit_federated needs at least one client update")
    try:
        idx, vals = fedavg_sparse([(np.asarray(u["indices"]), np.asarray(u["values"]), u["count"]) for u in updates])
        bias = float(fedavg([np.array([float(u.get("bias", 0.0))]) for u in updates],
                            [u["count"] for u in updates])[0])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"invalid federated update: {exc}") from None
    if idx.size and idx.max() >= learner.cfg.n_features:
        raise ValidationError(f"federated indices must be below n_features={learner.cfg.n_features}")
    meta = {"clients": len(updates), "samples": int(sum(u["count"] for u in updates)), **(metadata or {})}
    commit = CommitMeta("federated", None, "federated", json.dumps(meta, sort_keys=True, default=str))
    return store.chunks.commit(info, learner.chunks_of(idx), learner.delta_transform(idx, vals, bias), commit)
