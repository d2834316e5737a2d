"""Evaluation streams: River's bundled and synthetic datasets, and cstore's fraud-like generator.

Every stream is materialised up front (a few thousand to a few tens of thousands of events) so that
cstore and the references see exactly the same events in exactly the same order.

Preprocessing is the same for every learner and is done here, once: numbers are standardised with a
mean and standard deviation fitted on the *features* of the first 10% of the stream (the frozen
model's training window; no labels are used), and each number also gets a one-hot "bin" token
(``name~k``, half a standard deviation wide, clipped to ±3). The bins let a linear model learn rules
that are not monotonic in one feature (Agrawal's ``age < 40 or age >= 60``), as one-hot binned features
do in fraud scoring. Strings and booleans pass through unchanged.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cstore_dev.evaluation.deps import require_river

Features = dict[str, Any]


@dataclass
class Stream:
    """A labelled stream and what is known about its drifts."""

    name: str
    description: str
    features: list[Features]
    labels: np.ndarray                     # 0/1 float64
    drift_points: list[int] = field(default_factory=list)
    drift_widths: list[int] = field(default_factory=list)   # 1 = abrupt
    window: int = 1000                     # sliding window of the windowed metrics

    @property
    def n(self) -> int:
        return len(self.features)


# -- preprocessing ---------------------------------------------------------------------------------
def _fit_scaler(rows: list[Features]) -> dict[str, tuple[float, float]]:
    cols: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                cols.setdefault(k, []).append(float(v))
    return {k: (float(np.mean(v)), float(np.std(v)) or 1.0) for k, v in cols.items()}


def preprocess(rows: list[Features], fit_fraction: float = 0.1) -> list[Features]:
    """Standardise numbers (scaler fitted on the first ``fit_fraction``) and add a bin token to each."""
    scaler = _fit_scaler(rows[:max(1, int(len(rows) * fit_fraction))])
    out = []
    for r in rows:
        f: Features = {}
        for k, v in r.items():
            if k in scaler:
                mean, sd = scaler[k]
                z = (float(v) - mean) / sd
                z = max(-10.0, min(10.0, z))  # a wild value must not dominate a linear model
                f[k] = round(z, 5)
                f[f"{k}~bin"] = str(max(-6, min(6, math.floor(z * 2))))
            else:
                f[k] = v
        out.append(f)
    return out


def _take(it: Iterable[tuple[dict, Any]], n: int) -> tuple[list[Features], np.ndarray]:
    xs, ys = [], []
    for x, y in itertools.islice(it, n):
        xs.append({str(k): v for k, v in x.items()})
        ys.append(float(bool(y)))
    return xs, np.asarray(ys, np.float64)


# -- River datasets --------------------------------------------------------------------------------
def phishing(n: int | None, seed: int) -> Stream:
    """River's bundled Phishing dataset (1,250 web pages; ships inside the package, nothing downloaded)."""
    river = require_river()
    xs, ys = _take(river.datasets.Phishing(), n or 1250)
    return Stream("phishing", "River Phishing (bundled, 1,250 events, no known drift)", preprocess(xs), ys,
                  window=250)


def _drift_stream(make: Callable[[int, int], Any], n: int, seed: int, width: int):
    river = require_river()
    pos = n // 2
    return river.datasets.synth.ConceptDriftStream(stream=make(0, seed), drift_stream=make(1, seed + 1),
                                                   position=pos, width=width, seed=seed), pos


def _agrawal(before: int, after: int) -> Callable[[int, int], Any]:
    def make(which: int, seed: int):
        river = require_river()
        return river.datasets.synth.Agrawal(classification_function=(before, after)[which], seed=seed,
                                             balance_classes=False, perturbation=0.05)
    return make


def _hyperplane(which: int, seed: int):
    river = require_river()
    return river.datasets.synth.Hyperplane(seed=seed, n_features=10, n_drift_features=0, noise_percentage=0.05)


def synthetic(kind: str, gradual: bool) -> Callable[[int | None, int], Stream]:
    """ConceptDriftStream over Agrawal (function 0 -> 6: age rule -> disposable income) or Hyperplane."""
    def build(n: int | None, seed: int) -> Stream:
        n = n or 20000
        # River's sigmoid overflows math.exp for width < ~4 * position / 709: "abrupt" is the narrowest
        # width it accepts (under 1% of the stream), still a jump for a learner that sees 100s of events.
        width = max(1, n // 10) if gradual else math.ceil(4 * (n // 2) / 700)
        make = _agrawal(0, 6) if kind == "agrawal" else _hyperplane
        stream, pos = _drift_stream(make, n, seed, width)
        xs, ys = _take(stream, n)
        what = "Agrawal f0 -> f6" if kind == "agrawal" else "Hyperplane (10 features) -> another hyperplane"
        desc = f"River ConceptDriftStream, {what}, {'gradual' if gradual else 'abrupt'} at {pos} (width {width})"
        return Stream(f"{kind}-{'gradual' if gradual else 'abrupt'}", desc, preprocess(xs), ys, [pos], [width],
                      window=max(500, n // 20))
    return build


# -- more River generators: other functions, variants and seeds; and stationary controls --------------
def _gen(kind: str, arg: Any, seed: int) -> Any:
    synth = require_river().datasets.synth
    if kind == "sine":
        return synth.Sine(classification_function=arg, seed=seed, has_noise=False)
    if kind == "sea":
        return synth.SEA(variant=arg, noise=0.1, seed=seed)
    if kind == "stagger":
        return synth.STAGGER(classification_function=arg, seed=seed, balance_classes=False)
    if kind == "agrawal":
        return synth.Agrawal(classification_function=arg, seed=seed, balance_classes=False, perturbation=0.05)
    if kind == "rbf":
        return synth.RandomRBF(seed_model=seed, seed_sample=seed + 1, n_features=10, n_centroids=50)
    if kind == "hyperplane":
        return synth.Hyperplane(seed=seed, n_features=10, n_drift_features=0, noise_percentage=0.05)
    raise ValueError(kind)


def drifting(label: str, kind: str, before: Any, after: Any, what: str,
             default_n: int = 10000) -> Callable[[int | None, int], Stream]:
    """An abrupt change at the middle of the stream from one generator setting to another."""
    def build(n: int | None, seed: int) -> Stream:
        n = n or default_n
        width = math.ceil(4 * (n // 2) / 700)
        stream, pos = _drift_stream(lambda which, sd: _gen(kind, (before, after)[which], sd), n, seed, width)
        xs, ys = _take(stream, n)
        return Stream(label, f"River ConceptDriftStream, {what}, abrupt at {pos} (width {width})", preprocess(xs),
                      ys, [pos], [width], window=max(500, n // 20))
    return build


def stationary(label: str, kind: str, what: str, default_n: int = 10000) -> Callable[[int | None, int], Stream]:
    """No drift at all: any detection on it is a false alarm (the control)."""
    def build(n: int | None, seed: int) -> Stream:
        n = n or default_n
        xs, ys = _take(iter(_gen(kind, None, seed)), n)
        return Stream(label, f"River {what}, stationary (no drift; the false-alarm control)", preprocess(xs), ys,
                      window=max(500, n // 20))
    return build


# -- cstore's fraud-like stream ---------------------------------------------------------------------
# The fraudsim rule with its logit shifted to ~1% positives; after the drift the fraudsters move: other
# countries and merchant categories become risky and new devices stop being a signal.
_FRAUD_SHIFT = -3.75


def fraud(n: int | None, seed: int) -> Stream:
    """cstore_dev.fraudsim with ~1% positives and an abrupt change of the fraud pattern half-way."""
    from cstore_dev import fraudsim

    n = n or 40000
    pos = n // 2
    gen = fraudsim.FraudStream(seed=seed, shift=_FRAUD_SHIFT)
    before = gen.sample(pos)
    moved_countries, moved_mccs = {"FR", "DE", "GB"}, {"mcc01", "mcc05", "mcc13", "mcc19"}

    def moved(f: Features) -> float:
        return (-3.0 + 2.0 * (f["country"] in moved_countries) + 1.8 * (f["mcc"] in moved_mccs)
                + 1.0 * (f["hour"] >= 18) - 1.4 * f["card_present"] + 0.6 * (f["amount_log"] - 4.0) + _FRAUD_SHIFT)

    rng = np.random.default_rng(seed + 7)
    after = gen.sample(n - pos)
    for ev in after:
        ev["label"] = int(rng.random() < 1.0 / (1.0 + math.exp(-moved(ev["features"]))))
    rows = [dict(ev["features"]) for ev in before + after]
    ys = np.asarray([float(ev["label"]) for ev in before + after])
    return Stream("fraud", f"cstore fraudsim, {ys.mean():.2%} positives, abrupt pattern change at {pos}",
                  preprocess(rows), ys, [pos], [1], window=max(2000, n // 10))


DATASETS: dict[str, Callable[[int | None, int], Stream]] = {
    "phishing": phishing,
    "agrawal-abrupt": synthetic("agrawal", gradual=False),
    "agrawal-gradual": synthetic("agrawal", gradual=True),
    "hyperplane-abrupt": synthetic("hyperplane", gradual=False),
    "hyperplane-gradual": synthetic("hyperplane", gradual=True),
    "fraud": fraud,
    "sine-flip": drifting("sine-flip", "sine", 0, 1, "Sine f0 -> f1 (the rule flips: labels reversed)"),
    "sea-abrupt": drifting("sea-abrupt", "sea", 0, 2, "SEA variant 0 -> 2 (threshold 8 -> 7, 10% noise)"),
    "stagger-abrupt": drifting("stagger-abrupt", "stagger", 0, 2, "STAGGER f0 -> f2 (categorical rules)"),
    "agrawal-f1-f4": drifting("agrawal-f1-f4", "agrawal", 1, 4, "Agrawal f1 -> f4 (age and salary -> loan)"),
    "hyperplane-stationary": stationary("hyperplane-stationary", "hyperplane", "Hyperplane (10 features, 5% noise)"),
    "rbf-stationary": stationary("rbf-stationary", "rbf", "RandomRBF (10 features, 50 centroids)"),
}


def load(name: str, n: int | None = None, seed: int = 1) -> Stream:
    """Build dataset ``name`` with ``n`` events (its default when None)."""
    try:
        return DATASETS[name](n, seed)
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
