"""Feedback ingestion under load: labelled transactions with their features, through the buffered
writer (``--cstore-feedback-batch`` events sent, then ``flush()``: the response time is until they are
durable), the same as columns (``send_batch``: numpy arrays, one call), and the occasional single
durable event (``client.feedback``).

    locust -f locustfiles/feedback.py --headless -u 10 -r 5 -t 1m --only-summary

Reported as ``cstore feedback_batch``, ``cstore feedback_columns`` and ``cstore feedback_one``.
"""
from __future__ import annotations

import numpy as np
from locust import task
from cstore_locust import CstoreUser


class FeedbackUser(CstoreUser):
    """A producer of labelled feedback (e.g. a chargeback feed)."""

    @task(10)
    def feedback_batch(self) -> None:
        self._send_a_batch("feedback_batch", self._send)

    @task(5)
    def feedback_columns(self) -> None:
        self._send_a_batch("feedback_columns", self._send_columns)

    def _send_a_batch(self, name: str, send) -> None:
        n = int(self.environment.parsed_options.cstore_feedback_batch)
        self.call(name, send, self.stream.sample(n, prefix=self.prefix))

    def _send(self, txs: list[dict]) -> None:
        w = self.cs.writer
        for tx in txs:
            w.send(tx["entity_id"], tx["label"], kind="explicit", features=tx["features"])
        w.flush()

    def _send_columns(self, txs: list[dict]) -> None:
        columns = {name: np.array([tx["features"][name] for tx in txs]) for name in txs[0]["features"]}
        w = self.cs.writer
        w.send_batch([tx["entity_id"] for tx in txs], [tx["label"] for tx in txs], kind="explicit",
                     features=columns)
        w.flush()

    @task(1)
    def feedback_one(self) -> None:
        tx = self.stream.sample(1, prefix=self.prefix)[0]
        self.call("feedback_one", self.cs.client.feedback, tx["entity_id"], tx["label"],
                  model=self.cs.model_name, features=tx["features"])
