"""A synthetic, fraud-like transaction stream with a known labelling rule (tests, demo, benchmarks).

The rule is a logistic model over a few of the features, so a hashed logistic regression can learn
it; the label is drawn from it with noise (``deterministic=False``) or thresholded.

>>> gen = FraudStream(seed=1)
>>> tx = gen.sample(3)
>>> sorted(tx[0]["features"])[:3], tx[0]["label"] in (0, 1)
(['amount_log', 'card_present', 'country'], True)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

COUNTRIES = ["FR", "DE", "ES", "IT", "GB", "US", "NL", "BE", "PL", "PT", "XX", "YY"]
RISKY_COUNTRIES = {"XX", "YY", "PL"}
MCCS = [f"mcc{i:02d}" for i in range(20)]
RISKY_MCCS = {"mcc03", "mcc07", "mcc11", "mcc17"}


class FraudStream:
    """Draws transactions ``{"entity_id", "label", "features", "logit"}`` from a fixed rule."""

    def __init__(self, seed: int = 0, *, deterministic: bool = False, shift: float = 0.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.deterministic = deterministic
        self.shift = shift  # added to the logit: a concept drift knob
        self.counter = 0

    def logit(self, f: dict[str, Any]) -> float:
        return (-3.0 + 2.0 * (f["country"] in RISKY_COUNTRIES) + 1.8 * (f["mcc"] in RISKY_MCCS)
                + 1.0 * (f["hour"] < 6) + 1.6 * f["device_new"] - 1.4 * f["card_present"]
                + 0.6 * (f["amount_log"] - 4.0) + self.shift)

    def sample(self, n: int, prefix: str = "tx") -> list[dict[str, Any]]:
        r = self.rng
        countries = r.choice(COUNTRIES, size=n)
        mccs = r.choice(MCCS, size=n)
        hours = r.integers(0, 24, size=n)
        amount_log = r.normal(4.0, 1.0, size=n)
        device_new = r.random(n) < 0.2
        card_present = r.random(n) < 0.5
        noise = r.normal(size=(n, 3))
        u = r.random(n)
        out = []
        for i in range(n):
            f = {"country": str(countries[i]), "mcc": str(mccs[i]), "hour": int(hours[i]),
                 "amount_log": round(float(amount_log[i]), 4), "device_new": bool(device_new[i]),
                 "card_present": bool(card_present[i]), "noise_a": round(float(noise[i, 0]), 4),
                 "noise_b": round(float(noise[i, 1]), 4), "noise_c": round(float(noise[i, 2]), 4),
                 "hour_bucket": f"h{int(hours[i]) // 6}"}
            z = self.logit(f)
            p = 1.0 / (1.0 + math.exp(-z))
            label = int(z > 0) if self.deterministic else int(u[i] < p)
            out.append({"entity_id": f"{prefix}-{self.counter}", "label": label, "features": f, "p": p})
            self.counter += 1
        return out


def constant_log_loss(labels: np.ndarray, base_rate: float) -> float:
    """Log loss of always predicting ``base_rate``."""
    p = min(max(base_rate, 1e-15), 1 - 1e-15)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * math.log(p) + (1 - y) * math.log(1 - p)).mean())
