"""A mapping that keeps at most ``maxsize`` entries and evicts the least recently used one.

The environments (loaded games, prepared tasks, prefix snapshots) and the ``hf`` backend (prompt
tokens, KV caches) keep their caches in this one class instead of hand-written LRU code.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """Least-recently-used cache of at most ``maxsize`` entries (``maxsize`` >= 0; 0 keeps nothing).

    ``get`` and ``put`` mark an entry as used; ``peek`` and ``in`` do not. ``on_evict(key, value)``
    is called for every entry pushed out by ``put`` (not for ``pop`` or ``clear``).
    """

    def __init__(self, maxsize: int, on_evict: Callable[[K, V], None] | None = None):
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._on_evict = on_evict
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._data.get(key, default)
        if key in self._data:
            self._data.move_to_end(key)
        return value

    def peek(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            old_key, old_value = self._data.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def clear(self) -> None:
        self._data.clear()

    def keys(self) -> list[K]:
        """The keys, least recently used first (a copy: safe to modify the cache while iterating)."""
        return list(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))
