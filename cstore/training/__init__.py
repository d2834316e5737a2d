"""Training: the worker fleet that turns feedback into committed model updates.

* :func:`create_learner` — a hashed logistic-regression model whose weights *and* optimizer state are
  stored parameters, with its feedback layout; :class:`Learner` builds the chunk transforms that apply
  one optimizer step (or a federated delta) to the touched coordinates.
* :class:`Worker` — leases feedback partitions, learns micro-batches (prequential loss first),
  commits them through the chunk engine, and checkpoints conditioned on its leases. Delivery is at
  least once; a batch is duplicated only by a crash between commit and checkpoint.
* :class:`LeaseManager` — partition leases and the worker registry, coordinated only through
  Cassandra (compare-and-set with TTLs); :class:`SharedLearnerState` — the consumer group's drift
  detector and learning-rate schedule, one compare-and-set row.
"""
from cstore.training._learner import (DRIFT_DETECTORS, DRIFT_RESPONSES, LEARNER_CHUNK_SIZE, OPTIMIZERS, Learner,
                                      LearnerConfig, commit_federated, create_learner, learner_config)
from cstore.training._leases import Lease, LeaseManager, new_worker_id
from cstore.training._shared_state import DEFAULT_WARMUP, BatchOutcome, SharedLearnerState, drift_score, make_detector
from cstore.training._batching import FeatureLookup, WorkerOptions, select_segments
from cstore.training._worker import Worker

__all__ = ["DEFAULT_WARMUP", "DRIFT_DETECTORS", "DRIFT_RESPONSES", "LEARNER_CHUNK_SIZE", "OPTIMIZERS",
           "BatchOutcome", "FeatureLookup", "Learner", "LearnerConfig", "Lease", "LeaseManager",
           "SharedLearnerState", "Worker", "WorkerOptions", "commit_federated", "create_learner", "drift_score",
           "learner_config", "make_detector", "new_worker_id", "select_segments"]
