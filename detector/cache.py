"""Caches bounded by bytes, for everything keyed or valued by request data.

Entry counts alone do not bound memory when an attacker chooses the keys: 200,000
entries of 8 KB user agents are 1.6 GB. `ByteLRU` holds at most `max_bytes` of
(approximate) key + value size and never stores one item larger than
`max_item_bytes`; `bounded_cache` is the same for a pure function's results, in
place of `functools.lru_cache`.

Sizes are estimated by `approx_size` (characters of strings, bytes of bytes, a fixed
cost per container, number and struct), which is what grows with hostile input; the
estimate is computed on a miss only, so hits cost one dict lookup and a
`move_to_end`. Not thread-safe: the core runs on one thread per process.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import wraps
from typing import Any, Callable, Generic, Hashable, ParamSpec, TypeVar

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


class ByteLRU(Generic[K, V]):
    """A least-recently-used map holding at most `max_bytes` of keys and values.

    `put` refuses (and returns False for) an item over `max_item_bytes`: an over-long
    value is computed every time instead of being cached."""

    __slots__ = ("max_bytes", "max_item_bytes", "_data", "_bytes", "evictions", "refused")

    def __init__(self, max_bytes: int, max_item_bytes: int | None = None):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes if max_item_bytes is not None else max_bytes // 64, max_bytes)
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @property
    def bytes(self) -> int:
        """The estimated size of what is held (never above `max_bytes`)."""
        return self._bytes

    def get(self, key: K, default: V | None = None) -> V | None:
        item = self._data.get(key)
        if item is None:
            return default
        self._data.move_to_end(key)
        return item[0]

    def lookup(self, key: K) -> Any:
        """The cached value, or the module's `MISSING` sentinel (for caches whose
        values may be None)."""
        item = self._data.get(key)
        if item is None:
            return _MISSING
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, size: int | None = None) -> bool:
        """Cache `value` under `key`; `size` defaults to `approx_size(key) + approx_size(value)`."""
        if size is None:
            size = approx_size(key) + approx_size(value)
        if size > self.max_item_bytes:
            self.refused += 1
            return False
        data = self._data
        old = data.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        data[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, s) = data.popitem(last=False)
            self._bytes -= s
            self.evictions += 1
        return True

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0


MISSING: Any = _MISSING


def bounded_cache(max_bytes: int, max_item_bytes: int | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`functools.lru_cache` bounded by bytes for a pure function of hashable
    positional arguments. Raised exceptions are not cached; the cache is reachable as
    `fn.cache` (a ByteLRU) for tests and `fn.cache_clear()`."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        cache: ByteLRU[Any, R] = ByteLRU(max_bytes, max_item_bytes)
        lookup, put = cache.lookup, cache.put

        @wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs:  # not keyed: call through
                return fn(*args, **kwargs)
            found = lookup(args)
            if found is not _MISSING:
                return found  # type: ignore[no-any-return]
            value = fn(*args, **kwargs)  # kwargs is empty here
            put(args, value)
            return value

        wrapper.cache = cache  # type: ignore[attr-defined]
        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
        return wrapper

    return decorate


__all__ = ["ByteLRU", "MISSING", "approx_size", "bounded_cache"]
