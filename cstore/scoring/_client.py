"""The client a fraud-scoring service embeds: cached models that stay fresh, a prediction log, feedback.

>>> import cstore                                                            # doctest: +SKIP
>>> client = cstore.Client(keyspace="cstore")      # arguments > CSTORE_* env > cstore.toml  # doctest: +SKIP
>>> model = client.model("fraud")                  # loads weights + bias, starts the refresher  # doctest: +SKIP
>>> p = model.predict_proba({"amount": 120.0, "country": "FR"})   # from memory: no round trip  # doctest: +SKIP
>>> p = model.score("tx-42", {"amount": 120.0, "country": "FR"})  # ... and logs the features  # doctest: +SKIP
>>> client.feedback("tx-42", 1, kind="explicit")   # a chargeback, days later: no features needed  # doctest: +SKIP
>>> model.version, model.staleness                 # head version held, seconds since last refresh  # doctest: +SKIP

Freshness: each model has a thread (see ``_cache``) polling its head counter every ``refresh_interval_s``
and one its increment feed (critical labels); each swaps in new arrays copy-on-write, so a prediction
always computes with one whole state. If Cassandra goes away, predictions continue from the cached copy
and ``staleness`` grows; a model never loaded raises :class:`NotLoaded`.

Threads: one handle may be shared by any number of threads (predictions read an immutable state).
Pre-fork servers: a client created before ``fork()`` notices the new pid in the child (an
``os.register_at_fork`` hook, and a pid check on every call for forks that bypass it), drops
the parent's connections without touching them, reconnects and restarts its threads; the child
keeps predicting from the inherited copy meanwhile.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cstore.config import Config, load_config
from cstore.core import parse_model_ref
from cstore.errors import Closed, CorruptData, NotLoaded, ValidationError
from cstore.feedback import LogCounters, PredictionLog, PredictionLogWriter, ReviewCandidate, send_feedback
from cstore.learn import predict_proba, predict_proba_batch
from cstore.scoring._cache import CachedModel, ModelCache
from cstore.store import Store

__all__ = ["Client", "ModelHandle"]

log = logging.getLogger("cstore.client")

_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()
_ABANDONED: list[Any] = []   # a parent's connections, inherited by a child: never used, never closed there
_ADOPT_LOCK = threading.Lock()
_MAX_ENTITY_CHARS = 256


class _Backend:
    """One connection (a :class:`Store`) and the prediction log's reader on it; one per process."""

    def __init__(self, cfg: Config, counters: LogCounters) -> None:
        self.store = Store.from_config(cfg)
        self.pid = os.getpid()
        self.log = PredictionLog(self.store, counters)


class Client:
    """Connection, cached model handles and the prediction log of one scoring process.

    ``Client(**settings)`` takes any :class:`~cstore.config.Config` setting (``keyspace``,
    ``contact_points``, ``refresh_interval_s``, ``full_check_s``, ``prediction_log_ttl_s``…);
    the rest comes from ``CSTORE_*`` variables and the config file, as everywhere in cstore.
    """

    def __init__(self, config_file: str | None = None, *, config: Config | None = None, **settings: Any) -> None:
        self.config = config or load_config(settings, config_file=config_file)
        self._lock = threading.Lock()
        self._counters = LogCounters()
        self._backend: _Backend | None = _Backend(self.config, self._counters)  # fail now if nothing answers
        self._models: dict[str, ModelHandle] = {}
        self._writer = PredictionLogWriter(self.backend, self._counters, ttl_s=self.config.prediction_log_ttl_s,
                                           max_queue=self.config.prediction_log_queue, linger_s=0.05,
                                           max_batch=100)  # short GIL stretches
        self._writer.start()
        self._owner_pid = self._reset_pid = os.getpid()
        self._closed = False
        _CLIENTS.add(self)

    @classmethod
    def from_env(cls) -> Client:
        """Configuration from ``CSTORE_*`` variables (and ``$CSTORE_CONFIG`` / ``./cstore.toml``) only."""
        return cls()

    # -- connection and process ownership ---------------------------------------------------------
    def backend(self) -> _Backend:
        """This process's connection, created on first use after a fork (never the parent's)."""
        b = self._backend
        if b is None or b.pid != os.getpid():
            with self._lock:
                if self._closed:
                    raise Closed("this cstore Client is closed; create a new one with cstore.Client()")
                if self._backend is None or self._backend.pid != os.getpid():
                    self._backend = _Backend(self.config, self._counters)
                b = self._backend
        return b

    @property
    def store(self) -> Store:
        """The underlying :class:`~cstore.Store` (admin operations, feedback writers)."""
        return self.backend().store

    def _reset_after_fork(self) -> None:
        """In a child: new locks, no threads, no inherited connection or queue; cached arrays stay."""
        self._lock = threading.Lock()
        if self._backend is not None:
            _ABANDONED.append(self._backend)  # its sockets and threads belong to the parent
        self._backend = None
        for h in self._models.values():
            h._cache.after_fork()
        self._writer.after_fork()
        self._reset_pid = os.getpid()

    def _adopt(self) -> None:
        """First call in a new process: finish the reset and restart the refresher and log threads."""
        with _ADOPT_LOCK:
            pid = os.getpid()
            if self._owner_pid == pid or self._closed:
                return
            if self._reset_pid != pid:  # a fork that skipped the at-fork hooks (fork() from C)
                self._reset_after_fork()
            for h in self._models.values():
                h._cache.start()
            self._writer.start()
            self._owner_pid = pid
            log.info("cstore client adopted by process %d (forked): reconnecting", pid)

    # -- models --------------------------------------------------------------------------------------
    def model(self, name: str) -> ModelHandle:
        """The handle of ``name`` (one per client), loaded now if Cassandra answers.

        ``name`` is a model (``"fraud"``: its head) or an alias (``"fraud@champion"``: whatever the
        alias points to, the head or a pinned snapshot, followed as it moves). Raises
        :class:`~cstore.errors.UnknownModel` / :class:`~cstore.errors.UnknownAlias` for one that does
        not exist and :class:`~cstore.errors.ValidationError` for a model without ``weights`` and
        ``bias``. If Cassandra cannot be reached, the handle is returned unloaded and loads in the
        background.
        """
        parse_model_ref(name)
        if self._owner_pid != os.getpid():
            self._adopt()
        with self._lock:
            handle = self._models.get(name)
            if handle is not None:
                return handle
            handle = ModelHandle(self, name)
        try:
            handle._cache.refresh()
        except (ValidationError, CorruptData):
            raise
        except Exception as exc:
            handle._cache.backoff.failure(exc)
        with self._lock:
            handle = self._models.setdefault(name, handle)
        handle._cache.start()
        return handle

    def models(self) -> dict[str, ModelHandle]:
        """The model handles this client has opened, by name."""
        return dict(self._models)

    def log_counters(self, model_id: Any) -> dict[str, int]:
        """This process's prediction-log counters for a model since it started (logged, dropped, …)."""
        return self._counters.lifetime(model_id)

    @property
    def log_queue(self) -> int:
        """Predictions queued for the prediction log and not yet written."""
        return int(self._writer.queued)

    @property
    def feature_lookup(self) -> PredictionLog:
        """The prediction log's ``feature_lookup(model, entity_ids)`` for a worker in this process."""
        return self.backend().log

    # -- feedback and the log ------------------------------------------------------------------------
    def feedback(self, entity_id: str | int, label: float, *, model: str | None = None, kind: str = "explicit",
                 confidence: float | None = None, event_time: Any = None,
                 features: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
                 critical: bool = False) -> None:
        """Send one feedback event, durably; without ``features`` the worker joins the prediction log.

        ``model`` may be left out when this client has opened exactly one model. ``critical=True``
        sends it through the model's critical lane (learned within milliseconds, see ``cstore worker``).
        """
        if model is None:
            if len(self._models) != 1:
                raise ValidationError(f"feedback needs model=… (this client has opened "
                                      f"{len(self._models)} models: {', '.join(sorted(self._models)) or 'none'})")
            model = next(iter(self._models))
        send_feedback(self.backend().store, model, entity_id, label, kind=kind, confidence=confidence,
                      event_time=event_time, features=features, metadata=metadata, critical=critical)

    def flush_log(self, timeout: float = 10.0) -> bool:
        """Wait until every logged prediction queued so far is written (or failed); True if done."""
        if self._owner_pid != os.getpid():
            self._adopt()
        return self._writer.flush(timeout)

    def log_stats(self, model: str, *, since: float | None = None) -> dict[str, int]:
        """Prediction-log counters of every process (logged, dropped, write_errors, lookups, misses…)."""
        self._writer.flush(0)
        return self.backend().log.stats(model, since=since)

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the log (a few seconds at most), stop the threads and disconnect."""
        if self._closed:
            return
        for h in list(self._models.values()):
            h._cache.stop()
        if self._owner_pid == os.getpid():
            self._writer.close()
        self._closed = True
        _CLIENTS.discard(self)
        b, self._backend = self._backend, None
        if b is not None and b.pid == os.getpid():
            b.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModelHandle:
    """A cached model: predictions from memory, kept fresh in the background. Share it between threads."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name  # as asked for: "fraud" or "fraud@champion"
        self.model_name, self.alias = parse_model_ref(name)
        cfg = client.config
        self._cache = ModelCache(self.model_name, client.backend, interval_s=cfg.refresh_interval_s,
                                 full_check_s=cfg.full_check_s, alias=self.alias)
        self._bad_entity_log = -math.inf
        self._predictions = itertools.count()  # next() is atomic under the GIL: a lock-free counter
        self._shadows: tuple[ModelHandle, ...] = ()
        self.shadow_stats: dict[str, dict[str, float]] = {}

    # -- state ---------------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._cache.current is not None

    @property
    def version(self) -> int | None:
        """Head version the cached copy is at least as new as, or the snapshot version an alias pins it
        to (``None`` before the first load)."""
        s = self._cache.current
        return None if s is None else s.version

    @property
    def staleness(self) -> float:
        """Seconds since the last successful refresh (``inf`` if never loaded)."""
        return self._cache.staleness

    def _state(self) -> CachedModel:
        if self._client._owner_pid != os.getpid():
            self._client._adopt()
        s = self._cache.current
        if s is None:
            err = self._cache.backoff.last_error or "the first load has not finished"
            raise NotLoaded(f"model {self.name!r} has never been loaded in this process, so there is nothing to "
                            f"predict with (last error: {err}); it is retried in the background — check that "
                            f"Cassandra answers at {', '.join(self._client.config.contact_points)}")
        return s

    # -- predicting ----------------------------------------------------------------------------------
    def _predict(self, features: Mapping[str, Any]) -> tuple[float, CachedModel]:
        s = self._state()
        try:
            idx, val = s.hasher.transform_one(features)
        except ValueError as exc:
            raise ValidationError(f"model {self.name!r}: {exc}") from None
        next(self._predictions)
        return predict_proba(s.weights, s.bias, idx, val), s

    @property
    def model_id(self) -> Any:
        """The model's id (``None`` before the first load)."""
        s = self._cache.current
        return None if s is None else s.info.model_id

    @property
    def predictions(self) -> int:
        """Predictions made with this handle in this process (one per row of a batch)."""
        return int(repr(self._predictions)[len("count("):-1])  # count(n): the next value, i.e. how many so far

    def predict_proba(self, features: Mapping[str, float | int | bool | str]) -> float:
        """P(fraud) of one transaction (feature name → number, bool or string), from the cached copy."""
        return self._predict(features)[0]

    def predict_proba_batch(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(fraud) of many transactions at once (float64 array), all from one state of the model."""
        s = self._state()
        try:
            indptr, idx, val = s.hasher.transform_many(rows)
        except ValueError as exc:
            raise ValidationError(f"model {self.name!r}: {exc}") from None
        for _ in range(len(indptr) - 1):
            next(self._predictions)
        return predict_proba_batch(s.weights, s.bias, indptr, idx, val)

    def contributions(self, features: Mapping[str, Any]) -> dict[str, float]:
        """Each feature's term in the logit of its score (its hashed weights times its value), from the cached
        copy: why a transaction scored as it did (the logit is the bias plus their sum)."""
        s = self._state()
        try:
            return {n: float(np.dot(s.weights[i].astype(np.float64), v)) for n, x in features.items()
                    for i, v in [s.hasher.transform_one({n: x})]}
        except ValueError as exc:
            raise ValidationError(f"model {self.name!r}: {exc}") from None

    def score(self, entity_id: str | int, features: Mapping[str, Any], *, log: bool = True) -> float:
        """:meth:`predict_proba`, and (``log=True``) record the features for a label that comes later.

        Logging is asynchronous and best effort: it never blocks or fails the prediction; losses
        are counted (:meth:`Client.log_stats`) and logged with back-off.
        """
        p, s = self._predict(features)
        loggable = (type(entity_id) is str and 0 < len(entity_id) <= _MAX_ENTITY_CHARS) or type(entity_id) is int
        if log:
            if loggable:
                self._client._writer.submit(s.info.model_id, str(entity_id), dict(features), p, s.version)
            else:
                self._reject_entity(s, entity_id)
        for shadow in self._shadows:
            self._score_shadow(shadow, entity_id, features, p, log and loggable)
        return p

    # -- shadow scoring ------------------------------------------------------------------------------
    def shadow(self, *names: str) -> list[ModelHandle]:
        """Also score every :meth:`score` with these models or aliases (challengers), logging their
        predictions under their own model, without changing the answer: a failing or unloaded shadow
        only counts an error. Call with no names to stop. Returns the shadow handles."""
        handles = [self._client.model(n) for n in names]
        if any(h is self for h in handles):
            raise ValidationError(f"model {self.name!r} cannot shadow itself")
        self.shadow_stats = {h.name: {"scored": 0, "errors": 0, "abs_diff_sum": 0.0, "disagreements": 0}
                             for h in handles}
        self._shadows = tuple(handles)
        return handles

    def _score_shadow(self, shadow: ModelHandle, entity_id: Any, features: Mapping[str, Any], p: float,
                      log: bool) -> None:
        st = self.shadow_stats.get(shadow.name)
        if st is None:
            return
        try:
            ps, ss = shadow._predict(features)
        except Exception:  # noqa: BLE001 - a shadow never changes or fails the answer
            st["errors"] += 1
            return
        st["scored"] += 1
        st["abs_diff_sum"] += abs(ps - p)
        st["disagreements"] += (ps >= 0.5) != (p >= 0.5)
        if log:
            self._client._writer.submit(ss.info.model_id, str(entity_id), dict(features), ps, ss.version)

    def _reject_entity(self, s: CachedModel, entity_id: Any) -> None:
        self._client._counters.record(s.info.model_id, write_errors=1)
        if time.monotonic() - self._bad_entity_log > 60:
            self._bad_entity_log = time.monotonic()
            log.warning("model %r: prediction not logged: entity_id must be a str of 1-%d characters or an int, "
                        "got %r (counted as write_errors)", self.name, _MAX_ENTITY_CHARS, entity_id)

    # -- the rest ------------------------------------------------------------------------------------
    def review_candidates(self, n: int = 20, *, since: Any = None) -> list[ReviewCandidate]:
        """Recent logged predictions this model was least sure about (for analysts to label)."""
        return self._client.backend().log.review_candidates(self.model_name, n, since=since)

    def feedback(self, entity_id: str | int, label: float, **kwargs: Any) -> None:
        """:meth:`Client.feedback` for this model."""
        self._client.feedback(entity_id, label, model=self.model_name, **kwargs)

    def refresh(self, *, full: bool = False) -> int:
        """Refresh now (normally the background thread does); returns the version held."""
        return self._cache.refresh(full=full).version

    def wait_for_version(self, version: int, timeout: float = 5.0) -> bool:
        """Wait until the cached copy is at least ``version`` (e.g. after a commit); True if it is."""
        deadline = time.monotonic() + timeout
        while (self.version or 0) < version:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def status(self) -> dict[str, Any]:
        """What an operator needs: version, staleness, refresh errors, fetch and log counters."""
        c, s = self._cache, self._cache.current
        return {"model": self.name, "loaded": s is not None, "version": None if s is None else s.version,
                "pinned": None if s is None else s.pinned,
                "staleness_s": round(c.staleness, 3) if s is not None else None,
                "refresh_errors": c.backoff.errors, "failing_streak": c.backoff.streak,
                "last_error": c.backoff.last_error, **c.counters, "log_queue": self._client._writer.queued,
                "log": self._client._counters.totals(s.info.model_id) if s is not None else {},
                "shadows": {n: {"scored": int(v["scored"]), "errors": int(v["errors"]),
                                "disagreements": int(v["disagreements"]),
                                "mean_abs_diff": v["abs_diff_sum"] / v["scored"] if v["scored"] else None}
                            for n, v in self.shadow_stats.items()}}


def _after_fork_in_child() -> None:
    global _ADOPT_LOCK
    _ADOPT_LOCK = threading.Lock()
    for client in list(_CLIENTS):
        if not client._closed:
            client._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

