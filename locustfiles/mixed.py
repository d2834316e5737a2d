"""The whole loop under load: scoring users (score + log), label users (delayed labels without
features, which the workers join to the prediction log) and feedback producers, with
``--cstore-workers`` worker processes learning meanwhile (default 1; 0 when a fleet already runs,
as with the Helm chart's Deployment). The Helm chart's optional Locust Job runs this file.

    locust -f locustfiles/mixed.py --headless -u 20 -r 5 -t 1m --only-summary

Reported as ``cstore score``, ``predict_batch``, ``label``, ``feedback_batch``, ``feedback_one``,
``critical_label`` (a ``critical=True`` label, durable on return), ``critical_freshness`` (from sending
that label until this process's cached model predicts differently for the feature it carried: the
critical lane's freshness as a scorer sees it; a failure if it takes more than 10 s), and
``model_version`` (how far the scorers' cached model is behind the head, checked every few seconds:
a failure if it is more than 30 s stale or if a worker process this run started has exited).
"""
from __future__ import annotations

import itertools
import math
import os
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
_probes = itertools.count()
CRITICAL_TIMEOUT_S = 10.0  # beyond this the lane is down, not slow


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


class CriticalLabelUser(CstoreUser):
    """Critical labels (a confirmed chargeback) and how soon the scorers' cached model reflects them.

    Each label is a real one: a transaction's features (so it touches as many chunks as a chargeback
    would) plus one feature no other event carries, which is what the freshness check looks at."""

    weight = 1

    @task
    def critical_label(self) -> None:
        feature = f"critical_probe_{os.getpid()}_{next(_probes)}"  # a feature no other event carries
        features = {**self.stream.sample(1, prefix=self.prefix)[0]["features"], feature: 1.0}
        sent = time.perf_counter()
        durable: list[bool] = []

        def send() -> None:
            self.cs.client.feedback(f"{self.prefix}-crit-{feature}", 1, model=self.cs.model_name, kind="explicit",
                                    features=features, critical=True)
            durable.append(True)
        self.call("critical_label", send)
        if not durable:
            return  # reported as a failed critical_label already
        exc: BaseException | None = None
        while not self._moved(feature):
            if time.perf_counter() - sent > CRITICAL_TIMEOUT_S:
                exc = TimeoutError(f"a critical label was not visible to the scorer within {CRITICAL_TIMEOUT_S:.0f} s")
                break
            time.sleep(0.002)
        self.environment.events.request.fire(request_type="cstore", name="critical_freshness",
                                             response_time=(time.perf_counter() - sent) * 1000.0,
                                             response_length=0, exception=exc, context={})
        time.sleep(0.5)  # a few critical labels per second per user, not a flood

    def _moved(self, feature: str) -> bool:
        """Whether the cached weight of ``feature`` is non-zero (its label was learned), from one state."""
        with_f, without = self.cs.model.predict_proba_batch([{feature: 1.0}, {}])
        return abs(math.log(with_f / (1 - with_f)) - math.log(without / (1 - without))) > 1e-4
