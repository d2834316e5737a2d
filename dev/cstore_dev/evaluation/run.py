"""One evaluation: a dataset through cstore and the references, scored prequentially, as one dict."""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from cstore.learn import FeatureHasher
from cstore_dev.evaluation import metrics
from cstore_dev.evaluation.datasets import Stream, load
from cstore_dev.evaluation.references import run_replica, run_river, run_vw
from cstore_dev.evaluation.system import DEFAULT_BLOCK, SystemSettings, run_system

#: The goals: AUC at least the better reference's minus this, log loss at most the better one's plus this.
AUC_TOLERANCE = 0.003
LOGLOSS_TOLERANCE = 0.003
MAX_DELAY = 1000
REFERENCES = ("river", "vw")


def learner_settings(stream: Stream, *, n_features: int = 2**16, alpha: float = 0.3, beta: float = 1.0,
                     l1: float = 0.0, l2: float = 0.0, drift_warmup: int | None = None,
                     update: str | None = None) -> dict[str, Any]:
    """create_learner() arguments: cstore's defaults (per-event update, drift warm-up) except a smaller
    hashed space; ``drift_warmup`` and ``update`` only when given."""
    out: dict[str, Any] = {"n_features": n_features, "optimizer": "ftrl", "alpha": alpha, "beta": beta, "l1": l1,
                           "l2": l2}
    if drift_warmup is not None:
        out["drift_warmup"] = drift_warmup
    if update is not None:
        out["update"] = update
    return out


def evaluate(cfg, dataset: str, *, events: int | None = None, seed: int = 1, workers: int = 1,
             processes: bool = False, block: int = DEFAULT_BLOCK, learner: Mapping[str, Any] | None = None,
             stream: Stream | None = None) -> dict[str, Any]:
    """Run ``dataset`` through cstore (on the cluster of ``cfg``) and the references; return the report."""
    t0 = time.monotonic()
    stream = stream or load(dataset, events, seed)
    settings = learner_settings(stream, **(learner or {}))
    sys_res = run_system(cfg, stream, SystemSettings(workers=workers, processes=processes, block=block,
                                                     learner=settings))
    lcfg = sys_res.learner_config
    hasher = FeatureHasher(lcfg["n_features"], lcfg["hash_seed"])
    hashed = [dict(zip(*(a.tolist() for a in hasher.transform_one(f)))) for f in stream.features]
    frozen_at = stream.n // 10
    ref = run_river(hashed, stream.labels, lcfg["optimizer"], frozen_at)
    rep = run_replica(stream.features, stream.labels, lcfg, block)
    proba = {"cstore": sys_res.proba, "river": ref["river"], "vw": run_vw(hashed, stream.labels),
             "frozen": ref["frozen"], "river_default": ref["river_default"], "replica": rep["replica"]}
    y = stream.labels
    # "After drift": from the first drift's start; without a drift, after the frozen model's window.
    after = (stream.drift_points[0] - stream.drift_widths[0] // 2) if stream.drift_points else frozen_at
    out: dict[str, Any] = {"dataset": stream.name, "description": stream.description, "events": stream.n,
                           "positives": round(float(y.mean()), 4)}
    for who, p in proba.items():
        s_all, s_after = metrics.summary(y, p), metrics.summary(y, p, after)
        out[f"{who}_auc"], out[f"{who}_logloss"], out[f"{who}_accuracy"] = s_all["auc"], s_all["logloss"], \
            s_all["accuracy"]
        out[f"{who}_auc_after"] = s_after["auc"]
        out[f"{who}_logloss_after"] = s_after["logloss"]
    ours = metrics.score_detections(sys_res.detections, stream.drift_points, stream.drift_widths, stream.n,
                                    max_delay=MAX_DELAY)
    adwin = metrics.score_detections(ref["adwin"], stream.drift_points, stream.drift_widths, stream.n,
                                     max_delay=MAX_DELAY)
    out.update(_gaps(out))
    out.update({
        "after_from": after,
        "drift_points": stream.drift_points,
        "drift_widths": stream.drift_widths,
        "detections": ours.detections,
        "detection_delays": [m["delay"] for m in ours.matched],
        "detected_within_max_delay": ours.max_delay_ok,
        "false_alarms": ours.false_alarms,
        "river_adwin_detections": adwin.detections,
        "river_adwin_delays": [m["delay"] for m in adwin.matched],
        "river_adwin_false_alarms": adwin.false_alarms,
        "replica_detections": rep["replica_detections"],
        "window": stream.window,
        "windowed_auc": {who: metrics.windowed(y, p, stream.window)["auc"] for who, p in proba.items()},
        "windowed_t": metrics.windowed(y, proba["cstore"], stream.window)["t"],
        "settings": {"workers": workers, "worker_mode": "processes" if processes else "threads", "block": block,
                     "learner": settings, "seed": seed, "river_features": "cstore FeatureHasher indices (same "
                     "hashing as cstore)", "frozen_after": frozen_at, "river_adwin_input": "0/1 error of river"},
        "system": {"model": sys_res.model, "seconds": round(sys_res.seconds, 2), "blocks": sys_res.blocks,
                   "stale_blocks": sys_res.stale_blocks, "head_version": sys_res.head_version,
                   "workers": sys_res.worker_stats},
        "seconds": round(time.monotonic() - t0, 2),
    })
    return out


def _gaps(r: Mapping[str, Any]) -> dict[str, Any]:
    """cstore minus each reference and minus the better of them (AUC: higher is better; log loss: lower),
    overall and after drift, and whether the goals hold."""
    out: dict[str, Any] = {}
    for metric, better in (("auc", max), ("logloss", min)):
        for part in ("", "_after"):
            mine = r[f"cstore_{metric}{part}"]
            refs = [r[f"{who}_{metric}{part}"] for who in REFERENCES if r[f"{who}_{metric}{part}"] is not None]
            for who in REFERENCES:
                theirs = r[f"{who}_{metric}{part}"]
                gap = None if mine is None or theirs is None else round(mine - theirs, 4)
                out[f"{metric}{part}_gap_vs_{who}"] = gap
            out[f"{metric}{part}_gap_vs_best"] = None if mine is None or not refs else round(mine - better(refs), 4)
    out["auc_within_tolerance"] = out["auc_gap_vs_best"] is not None and out["auc_gap_vs_best"] >= -AUC_TOLERANCE
    out["logloss_within_tolerance"] = out["logloss_gap_vs_best"] is not None and \
        out["logloss_gap_vs_best"] <= LOGLOSS_TOLERANCE
    return out


def summary_line(r: Mapping[str, Any]) -> str:
    """One human line per dataset (the CLI's non-JSON output)."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    return (f"{r['dataset']}: {r['events']} events | AUC cstore {f(r['cstore_auc'])} river {f(r['river_auc'])} "
            f"vw {f(r['vw_auc'])} frozen {f(r['frozen_auc'])} (after drift: {f(r['cstore_auc_after'])} / "
            f"{f(r['river_auc_after'])} / {f(r['vw_auc_after'])} / {f(r['frozen_auc_after'])}) | logloss cstore "
            f"{f(r['cstore_logloss'])} river {f(r['river_logloss'])} vw {f(r['vw_logloss'])} | "
            f"drifts {r['drift_points']} detections {r['detections']} delays {r['detection_delays']} false alarms "
            f"{r['false_alarms']} (river ADWIN {r['river_adwin_false_alarms']}) | {r['seconds']} s")


def as_array(values: list) -> np.ndarray:
    """Windowed values with None (a window with one class only) as NaN, for plotting."""
    return np.array([np.nan if v is None else v for v in values], np.float64)
