"""Caches bounded by bytes, for everything keyed or valued by request data.

Entry counts alone do not bound memory when an attacker chooses the keys: 200,000
entries of 8 KB user agents are 1.6 GB. `ByteCache` holds at most `max_bytes` of
(approximate) key + value size and never stores one item larger than
`max_item_bytes`; `bounded_cache` is the same for a pure function's results, in
place of `functools.lru_cache`.

Sizes are estimated by `approx_size` (characters of strings, bytes of bytes, a fixed
cost per container, number and struct), which is what grows with hostile input; the
estimate is computed on a miss only, so a hit costs one dict lookup. Not
thread-safe: the core runs on one thread per process.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from functools import wraps
from typing import Any, Generic, ParamSpec, TypeVar

import msgspec

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
P = ParamSpec("P")
R = TypeVar("R")

_OVERHEAD = 56  # per object: a Python object header and its slot in its container
_MISSING: Any = object()


def approx_size(obj: object, _depth: int = 0) -> int:
    """An estimate of the memory `obj` holds, growing with its strings and items."""
    if isinstance(obj, str):
        return _OVERHEAD + len(obj)
    if isinstance(obj, (bytes, bytearray)):
        return _OVERHEAD + len(obj)
    if obj is None or isinstance(obj, (bool, int, float)):
        return 16
    if _depth > 8:  # deeper structures are not produced here; count them flat
        return _OVERHEAD
    if isinstance(obj, (tuple, list, frozenset, set)):
        return _OVERHEAD + sum(approx_size(x, _depth + 1) + 8 for x in obj)
    if isinstance(obj, dict):
        return _OVERHEAD + sum(approx_size(k, _depth + 1) + approx_size(v, _depth + 1) + 16 for k, v in obj.items())
    if isinstance(obj, msgspec.Struct):
        return _OVERHEAD + sum(approx_size(x, _depth + 1) + 8 for x in msgspec.structs.astuple(obj))
    return _OVERHEAD


class ByteCache(Generic[K, V]):
    """A memo map holding at most `max_bytes` of keys and values; when full, the
    oldest entries go first.

    A hit is one C-level dict lookup (`get` is the dict's own bound method; there is
    no recency bookkeeping on the hot path, so eviction is oldest-inserted first, which
    for memoised pure results only costs a recomputation). `put` refuses (and returns
    False for) an item over `max_item_bytes`: an over-long value is computed every time
    instead of being cached."""

    __slots__ = ("max_bytes", "max_item_bytes", "_data", "_sizes", "_bytes", "evictions", "refused", "get")

    def __init__(self, max_bytes: int, max_item_bytes: int | None = None):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes if max_item_bytes is not None else max_bytes // 64, max_bytes)
        self._data: dict[K, V] = {}
        self._sizes: dict[K, int] = {}
        self._bytes = 0
        self.evictions = 0
        self.refused = 0
        # `get(key)` / `get(key, default)`: the dict's own method, no Python frame
        self.get: Callable[..., Any] = self._data.get

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @property
    def bytes(self) -> int:
        """The estimated size of what is held (never above `max_bytes`)."""
        return self._bytes

    def put(self, key: K, value: V, size: int | None = None) -> bool:
        """Cache `value` under `key`; `size` defaults to `approx_size(key) + approx_size(value)`."""
        if size is None:
            size = approx_size(key) + approx_size(value)
        if size > self.max_item_bytes:
            self.refused += 1
            return False
        data, sizes = self._data, self._sizes
        if key in data:  # re-inserted at the end
            del data[key]
            self._bytes -= sizes.pop(key)
        data[key] = value
        sizes[key] = size
        self._bytes += size
        while self._bytes > self.max_bytes:
            oldest = next(iter(data))
            del data[oldest]
            self._bytes -= sizes.pop(oldest)
            self.evictions += 1
        return True

    def clear(self) -> None:
        self._data.clear()  # the same dict: `get` stays bound to it
        self._sizes.clear()
        self._bytes = 0


MISSING: Any = _MISSING


def bounded_cache(max_bytes: int, max_item_bytes: int | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`functools.lru_cache` bounded by bytes for a pure function of hashable
    positional arguments. Raised exceptions are not cached; the cache is reachable as
    `fn.cache` (a ByteCache) for tests and `fn.cache_clear()`."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        cache: ByteCache[Any, R] = ByteCache(max_bytes, max_item_bytes)
        get, put = cache.get, cache.put

        @wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs:  # not keyed: call through
                return fn(*args, **kwargs)
            found = get(args, _MISSING)
            if found is not _MISSING:
                return found  # type: ignore[no-any-return]
            value = fn(*args, **kwargs)  # kwargs is empty here
            put(args, value)
            return value

        wrapper.cache = cache  # type: ignore[attr-defined]
        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
        return wrapper

    return decorate


__all__ = ["ByteCache", "MISSING", "approx_size", "bounded_cache"]
