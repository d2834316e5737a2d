"""Feature hashing: turn a feature mapping into sparse ``(indices, values)``.

The hash of a feature name is part of the stored model format: a weight at
index ``i`` only means something if every process maps the same name to
``i``. We therefore use keyed BLAKE2b (seeded, stable across processes and
Python versions) and never Python's salted ``hash()``. Changing the hash
function, ``n_features`` or ``seed`` invalidates every stored weight.

Exact definition (reproducible in any language)::

    index(token) = u64_le(blake2b(utf8(token), digest_size=8,
                                  key=u64_le(seed))) mod n_features
    token = name             for numbers and bools
    token = name + "=" + value   for strings
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping
from typing import Any
from numbers import Real

import numpy as np

__all__ = ["FeatureHasher"]

# Values are stored as float32; anything larger would silently become inf.
_F32_MAX = float(np.finfo(np.float32).max)
_MIN_LOG2, _MAX_LOG2 = 4, 26


class FeatureHasher:
    """Hash ``{name: number | str | bool}`` mappings into a fixed-size space.

    * numbers (and bools, as 1.0/0.0) go to ``hash(name)`` with their value;
    * strings are one-hot: 1.0 at ``hash(f"{name}={value}")``.

    Features that land on the same index are summed. Output indices keep the
    order in which they first appear in the mapping.

    Parameters
    ----------
    n_features
        Size of the hashed space; a power of two in ``[2**4, 2**26]``.
    seed
        Key for the hash, ``0 <= seed < 2**64``. Different seeds give
        independent collision patterns.
    cache_size
        Maximum number of cached entries per cache (numeric names, and
        ``(name, value)`` pairs of string features); 0 disables caching.
        When a cache is full its oldest half is dropped (FIFO-ish, cheaper
        than true LRU), so memory stays bounded and hot names come back fast.

    Examples
    --------
    >>> h = FeatureHasher(n_features=2**4)
    >>> idx, val = h.transform_one({"amount": 12.5, "country": "FR", "new": True})
    >>> idx.dtype, val.dtype, len(idx)
    (dtype('int64'), dtype('float32'), 3)
    >>> sorted(val.tolist())
    [1.0, 1.0, 12.5]
    >>> bool((h.transform_one({"amount": 12.5, "country": "FR", "new": True})[0] == idx).all())
    True
    """

    def __init__(self, n_features: int = 2**20, seed: int = 0, cache_size: int = 1_000_000) -> None:
        if (
            isinstance(n_features, bool)
            or not isinstance(n_features, int)
            or n_features < 2**_MIN_LOG2
            or n_features > 2**_MAX_LOG2
            or n_features & (n_features - 1)
        ):
            raise ValueError(
                f"n_features must be a power of two between 2**{_MIN_LOG2} and 2**{_MAX_LOG2}, "
                f"got {n_features!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {cache_size!r}")
        self.n_features = n_features
        self.seed = seed
        self.cache_size = cache_size
        self._mask = n_features - 1
        self._key = seed.to_bytes(8, "little")
        # Two caches so that a cache hit never formats a string, and so that
        # a (bogus) tuple-valued *name* can never hit a string feature's key:
        # only validated str names are ever inserted.
        self._num_cache: dict[str, int] = {}
        self._str_cache: dict[tuple[str, str], int] = {}
        self._bytes_cache: dict[str, dict[bytes, int]] = {}  # ASCII column values, by feature name

    def __repr__(self) -> str:
        return f"FeatureHasher(n_features={self.n_features}, seed={self.seed})"

    # -- hashing ---------------------------------------------------------------

    def hash_token(self, token: str) -> int:
        """Index of a raw token (a name, or ``"name=value"``), uncached.

        >>> FeatureHasher(2**4).hash_token("a") == FeatureHasher(2**4).hash_token("a")
        True
        """
        # surrogatepass: never fail on odd but valid Python strings.
        digest = hashlib.blake2b(
            token.encode("utf-8", "surrogatepass"), digest_size=8, key=self._key
        ).digest()
        return int.from_bytes(digest, "little") & self._mask

    def _miss(self, name: object, value: str | None) -> int:
        """Slow path: validate the name, hash it, remember the result."""
        if not isinstance(name, str):
            raise ValueError(f"feature names must be str, got {type(name).__name__} {name!r}")
        if value is None:
            key: object = name
            cache: dict[Any, int] = self._num_cache
            idx = self.hash_token(name)
        else:
            key = (name, value)
            cache = self._str_cache
            idx = self.hash_token(f"{name}={value}")
        if self.cache_size:
            if len(cache) >= self.cache_size:
                # Dicts keep insertion order: drop the oldest half (FIFO-ish).
                for k in list(itertools.islice(cache, max(1, len(cache) // 2))):
                    del cache[k]
            cache[key] = idx
        return idx

    @staticmethod
    def _number(name: object, value: object, shown: object) -> float:
        """Validate and convert a non-str value; ``shown`` is used in errors."""
        if isinstance(value, np.bool_):
            return 1.0 if value else 0.0
        if isinstance(value, (Real, np.number)) and not isinstance(value, (complex, np.complexfloating)):
            try:
                v = float(value)
            except OverflowError:
                v = float("inf")
            if -_F32_MAX <= v <= _F32_MAX:
                return v
            raise ValueError(
                f"feature {name!r} has non-finite or float32-overflowing value {shown!r}; "
                "drop it, clip it, or encode it as a string"
            )
        raise ValueError(
            f"feature {name!r} has unsupported value {shown!r} ({type(shown).__name__}); "
            "use a number, bool or str (drop missing values)"
        )

    def _row(self, x: Mapping[str, Any]) -> tuple[list[int], list[float]]:
        """Hash one mapping into parallel (indices, values) lists, deduplicated.

        This is the hot loop: exact-type checks and ``try`` on the cache are
        the cheapest dispatch CPython offers; anything unusual goes to the
        slow, validating path.
        """
        if type(x) is not dict and not isinstance(x, Mapping):
            raise ValueError(
                f"each row must be a mapping of feature name -> value, got {type(x).__name__}"
            )
        num_cache = self._num_cache
        str_cache = self._str_cache
        idx: list[int] = []
        vals: list[float] = []
        add_i = idx.append
        add_v = vals.append
        for name, value in x.items():
            t = type(value)
            if t is str:
                try:
                    add_i(str_cache[(name, value)])
                except KeyError:
                    add_i(self._miss(name, value))
                add_v(1.0)
                continue
            try:
                add_i(num_cache[name])
            except KeyError:
                add_i(self._miss(name, None))
            if t is float or t is int:
                # Chained comparison is also False for NaN: catches NaN, inf
                # and values that would overflow float32.
                if not -_F32_MAX <= value <= _F32_MAX:
                    self._number(name, float("nan"), value)
                add_v(value)
            elif t is bool:
                add_v(1.0 if value else 0.0)
            elif isinstance(value, str):  # str subclasses: one-hot as well
                idx.pop()
                add_i(self._miss(name, str(value)))
                add_v(1.0)
            else:
                add_v(self._number(name, value, value))
        if len(set(idx)) < len(idx):
            idx, vals = self.merge_row(idx, vals)
        return idx, vals

    @staticmethod
    def merge_row(idx: list[int], vals: list[float]) -> tuple[list[int], list[float]]:
        """One row's colliding indices summed, in the order they first appear (the rare path of
        ``transform_*`` and of :func:`~cstore.learn.hash_columns`); ``ValueError`` when a sum leaves
        the float32 range."""
        acc: dict[int, float] = {}
        for i, v in zip(idx, vals):
            acc[i] = acc.get(i, 0.0) + v
        total = list(acc.values())
        if any(not -_F32_MAX <= v <= _F32_MAX for v in total):
            raise ValueError(
                "colliding features summed past the float32 range; scale down large feature values"
            )
        return list(acc.keys()), total

    # -- public API ------------------------------------------------------------

    def transform_one(self, x: Mapping[str, float | int | bool | str]) -> tuple[np.ndarray, np.ndarray]:
        """Hash one mapping into ``(indices int64[k], values float32[k])``.

        >>> h = FeatureHasher(2**4)
        >>> idx, val = h.transform_one({"city": "Paris"})
        >>> int(idx[0]) == h.hash_token("city=Paris"), float(val[0])
        (True, 1.0)
        """
        idx, vals = self._row(x)
        return np.array(idx, dtype=np.int64), np.array(vals, dtype=np.float32)

    def transform_many(
        self, xs: Iterable[Mapping[str, float | int | bool | str]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hash a micro-batch into CSR arrays ``(indptr, indices, values)``.

        Row ``r`` is ``indices[indptr[r]:indptr[r+1]]`` / ``values[...]``.

        >>> indptr, idx, val = FeatureHasher(2**4).transform_many([{"a": 1.0}, {}, {"a": 2, "b": "x"}])
        >>> indptr.tolist(), val.tolist()
        ([0, 1, 1, 3], [1.0, 2.0, 1.0])
        """
        indptr = [0]
        all_idx: list[int] = []
        all_val: list[float] = []
        for x in xs:
            idx, vals = self._row(x)
            all_idx.extend(idx)
            all_val.extend(vals)
            indptr.append(len(all_idx))
        return (
            np.array(indptr, dtype=np.int64),
            np.array(all_idx, dtype=np.int64),
            np.array(all_val, dtype=np.float32),
        )

    def ascii_indices(self, name: str, col: np.ndarray, n: int) -> list[int] | None:
        """Indices of the ``n`` values of an ASCII bytes column of string feature ``name`` (None if it is
        not ASCII or not ``n`` long), through a cache keyed by the bytes: no decoding, no tuple key
        (high-cardinality columns such as ids make most of a block's values).

        >>> h = FeatureHasher(2**4)
        >>> h.ascii_indices("city", np.array([b"Paris"]), 1) == [h.index("city", "Paris")]
        True
        """
        if col.shape != (n,):
            return None
        cache = self._bytes_cache.get(name)
        if cache is None or len(cache) >= max(self.cache_size, 1):
            cache = self._bytes_cache[name] = {}
        values = col.tolist()
        get = cache.get
        codes = [get(v, -1) for v in values]
        if -1 in codes:
            for r, v in enumerate(values):
                if codes[r] == -1:
                    try:
                        codes[r] = self.index(name, v.decode("ascii"))
                    except UnicodeDecodeError:
                        return None
                    if self.cache_size:
                        cache[v] = codes[r]
        return codes

    def index(self, name: str, value: str | None = None) -> int:
        """The (cached) index of numeric feature ``name``, or of string feature ``name`` = ``value``.

        >>> h = FeatureHasher(2**4)
        >>> h.index("city", "Paris") == h.hash_token("city=Paris"), h.index("amount") == h.hash_token("amount")
        (True, True)
        """
        try:
            return self._num_cache[name] if value is None else self._str_cache[(name, value)]
        except KeyError:
            return self._miss(name, value)

    def clear_cache(self) -> None:
        """Forget cached name -> index entries (results are unchanged)."""
        self._num_cache.clear()
        self._str_cache.clear()
        self._bytes_cache.clear()

    @property
    def cache_len(self) -> int:
        """Number of cached entries (for monitoring)."""
        return len(self._num_cache) + len(self._str_cache)
