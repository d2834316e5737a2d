"""The whole loop under load: scoring users (score + log), label users (delayed labels without
features, which the workers join to the prediction log) and feedback producers, with
``--cstore-workers`` worker processes learning meanwhile (default 1; 0 when a fleet already runs,
as with the Helm chart's Deployment). The Helm chart's optional Locust Job runs this file.

    locust -f locustfiles/mixed.py --headless -u 20 -r 5 -t 1m --only-summary

Reported as ``cstore score``, ``predict_batch``, ``label``, ``feedback_batch``, ``feedback_one``, and
``model_version`` (how far the scorers' cached model is behind the head, checked every few seconds:
a failure if it is more than 30 s stale or if a worker process this run started has exited).
"""
from __future__ import annotations

import time

from locust import events, task
from cstore_locust import CstoreUser, check_workers, start_workers, stop_workers
from feedback import FeedbackUser
from scoring import ScoringUser

events.test_start.add_listener(lambda environment, **_: start_workers(environment))
events.test_stop.add_listener(stop_workers)
events.quitting.add_listener(stop_workers)

ScoringUser.weight = 3
FeedbackUser.weight = 1


class LabelUser(CstoreUser):
    """Labels arriving later for transactions scored at least a second ago (a review team, chargebacks)."""

    weight = 1

    @task(10)
    def label(self) -> None:
        scored = self.cs.scored
        if not scored or time.monotonic() - scored[0][0] < 1.0:
            return  # nothing old enough yet: the prediction log is written asynchronously
        _, entity_id, label = scored.popleft()
        self.call("label", self.cs.client.feedback, entity_id, label, model=self.cs.model_name,
                  kind="explicit")

    @task(1)
    def model_version(self) -> None:
        self.call("model_version", self._check_fresh)

    def _check_fresh(self) -> None:
        check_workers()
        staleness = self.cs.model.staleness
        if staleness > 30:
            raise RuntimeError(f"the cached model has not refreshed for {staleness:.0f} s")
