"""Scoring: what a fraud-scoring service embeds.

* :class:`Client` — one connection per process (fork-aware), cached model handles, the prediction
  log's writer, and feedback; created before ``fork()`` it reconnects in each child.
* :class:`ModelHandle` — predictions from an immutable in-memory copy of ``weights`` and ``bias``
  (never a round trip), kept fresh by :class:`ModelCache`: it polls the model's chunk-version index,
  fetches only the chunks that moved and swaps one reference, so a prediction never mixes versions.
"""
from cstore.scoring._cache import INDEX_GRACE_S, PREDICT_PARAMS, CachedModel, ModelCache, SharedHasher, hashing_config
from cstore.scoring._client import Client, ModelHandle

__all__ = ["INDEX_GRACE_S", "PREDICT_PARAMS", "CachedModel", "Client", "ModelCache", "ModelHandle", "SharedHasher",
           "hashing_config"]
