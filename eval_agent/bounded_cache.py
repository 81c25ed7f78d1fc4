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


class PrefixCache(Generic[V]):
    """Environment states reached by action prefixes of a task: the one snapshot cache both environments use.

    Keys are ``(task, actions[:k])``; at most ``maxsize`` states are kept, least recently used out
    first. The rule: every state a ``reset_to_prefix`` reaches is put, and a later call starts
    from the longest cached prefix of its actions.
    """

    def __init__(self, maxsize: int):
        self._states: BoundedCache[tuple[Hashable, tuple[str, ...]], V] = BoundedCache(maxsize)

    def longest(self, task: Hashable, actions: tuple[str, ...]) -> tuple[int, V | None]:
        """``(k, state)`` of the longest cached prefix ``actions[:k]`` (``(0, None)`` when none is)."""
        k = len(actions)
        while k > 0 and (task, actions[:k]) not in self._states:
            k -= 1
        return (k, self._states.get((task, actions[:k]))) if k else (0, None)

    @property
    def enabled(self) -> bool:
        """False when the cache keeps nothing (``maxsize`` 0): callers need not build states to put."""
        return self._states.maxsize > 0

    def put(self, task: Hashable, actions: tuple[str, ...], state: V) -> None:
        self._states.put((task, actions), state)

    def drop_task(self, task: Hashable) -> None:
        """Forget every state of ``task``."""
        for key in [k for k in self._states if k[0] == task]:
            self._states.pop(key)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)
