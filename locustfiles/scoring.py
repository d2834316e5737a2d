"""A fraud-scoring service under load: each request scores one transaction from the cached model
and logs its features for the label that comes later (``model.score(entity_id, features)``).

    locust -f locustfiles/scoring.py --headless -u 20 -r 5 -t 1m --only-summary

Reported as ``cstore score`` (and ``cstore predict_batch`` for the occasional batch of 50).
"""
from __future__ import annotations

import time

from locust import task
from cstore_locust import CstoreUser


class ScoringUser(CstoreUser):
    """One request thread of a scoring service."""

    @task(20)
    def score(self) -> None:
        tx = self.stream.sample(1, prefix=self.prefix)[0]
        self.call("score", self.cs.model.score, tx["entity_id"], tx["features"])
        # Remember it: the mixed workload's label users send its (delayed) label without features.
        self.cs.scored.append((time.monotonic(), tx["entity_id"], tx["label"]))

    @task(1)
    def predict_batch(self) -> None:
        rows = [tx["features"] for tx in self.stream.sample(50, prefix=self.prefix)]
        self.call("predict_batch", self.cs.model.predict_proba_batch, rows)
