"""One bounded least-recently-used map, for the caches that `functools.lru_cache` can't be:
entries that hold files to delete when dropped, or that must never be dropped."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `size` entries; storing one more drops the least recently used first.

    `on_evict(key, value)` runs for each entry dropped to make room (to delete its files);
    entries with `pinned(key)` true are never dropped for room. Not thread-safe: callers hold
    their own lock, as they guard more than the map."""

    def __init__(
        self,
        size: int,
        on_evict: Callable[[K, V], object] | None = None,
        pinned: Callable[[K], bool] | None = None,
    ) -> None:
        self.size, self.on_evict, self.pinned = size, on_evict, pinned
        self._d: OrderedDict[K, V] = OrderedDict()  # least recently used first

    def get(self, key: K) -> V | None:
        """The value for `key`, now the most recently used; None when absent."""
        if key not in self._d:
            return None
        self._d.move_to_end(key)
        return self._d[key]

    def put(self, key: K, value: V) -> list[K]:
        """Store `key` as the most recently used; returns the keys dropped to make room
        (never `key` itself)."""
        self._d[key] = value
        self._d.move_to_end(key)
        dropped: list[K] = []
        if len(self._d) <= self.size:  # the common case: nothing to drop, no key list copied
            return dropped
        for old in list(self._d):
            if len(self._d) <= self.size:
                break
            if old == key or (self.pinned is not None and self.pinned(old)):
                continue
            dropped.append(old)
            v = self._d.pop(old)
            if self.on_evict is not None:
                self.on_evict(old, v)
        return dropped

    def pop(self, key: K) -> V:
        """Remove `key` and return its value (no `on_evict`: the caller disposes of it)."""
        return self._d.pop(key)

    def items(self) -> list[tuple[K, V]]:
        """Every entry, least recently used first, without marking any used."""
        return list(self._d.items())

    def __contains__(self, key: object) -> bool:  # without marking it used
        return key in self._d

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._d))

    def __len__(self) -> int:
        return len(self._d)
