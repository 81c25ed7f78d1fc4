"""The KV caches the ``hf`` backend keeps between calls (see :mod:`eval_agent.agents.hf`): each distinct
prompt's, and each conversation's, with the lookup of the longest reusable one for a new row."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from eval_agent.bounded_cache import BoundedCache


def _torch():
    import torch

    return torch


def row_kv(cache: Any, r: int, cols: Any) -> list[tuple[Any, Any]]:
    """Per layer ``(keys, values)`` ``[1, kv_heads, len(cols), d]`` of row ``r`` at batch columns ``cols``.

    ``cols`` are columns of the whole batch layout (ascending). With a shared prefix of ``P``
    columns (every row sees all of them, so ``cols`` starts with ``0 .. P-1``) the prefix comes
    from the layer's single copy and the other columns from the row part, shifted by ``P``.
    """
    torch = _torch()
    out = []
    for layer in cache.layers:
        p = int(layer.prefix_keys.shape[-2]) if hasattr(layer, "prefix_keys") else 0
        own = cols[p:] - p
        k = layer.keys[r:r + 1].index_select(2, own)
        v = layer.values[r:r + 1].index_select(2, own)
        if p:
            k = torch.cat([layer.prefix_keys, k], dim=2)
            v = torch.cat([layer.prefix_values, v], dim=2)
        out.append((k, v))
    return out


@dataclass
class KVEntry:
    """The KV cache of one token sequence: ``kv[layer] = (keys, values)``, each ``[1, heads, len, dim]``."""

    tokens: np.ndarray
    kv: list[tuple[Any, Any]]
    prompt_len: int  # tokens that were the row's input (the rest were generated)


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays: the largest ``l`` with ``a[:l] == b[:l]``."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    eq = a[:n] == b[:n]
    return n if bool(eq.all()) else int(np.argmin(eq))


class KVStore:
    """Two bounded LRUs (:class:`~eval_agent.bounded_cache.BoundedCache`): ``prefixes`` (a prompt's token ids
    -> its batch-1 KV cache, ``prefix_cache_size`` entries) and ``conversations`` (entry id -> :class:`KVEntry`,
    ``conv_cache_size`` entries)."""

    def __init__(self, prefix_cache_size: int, conv_cache_size: int):
        self.prefixes: BoundedCache[tuple[int, ...], Any] = BoundedCache(max(prefix_cache_size, 0))
        self.conversations: BoundedCache[int, KVEntry] = BoundedCache(max(conv_cache_size, 0))
        self._entry_ids = itertools.count()

    def prefix_kv(self, prefix: tuple[int, ...], compute: Callable[[tuple[int, ...]], Any]) -> Any:
        """The KV cache of ``prefix`` (batch 1): ``compute(prefix)`` once, then kept in the LRU."""
        cache = self.prefixes.get(prefix)
        if cache is None:
            cache = compute(prefix)
            self.prefixes.put(prefix, cache)
        return cache

    def best_source(self, ids: list[int], split: int,
                    compute: Callable[[tuple[int, ...]], Any]) -> tuple[int, list[tuple[Any, Any]] | None, int | None]:
        """The longest reusable KV for ``ids``: ``(length, kv, continued)``, at most ``len(ids) - 1`` tokens.

        ``continued`` is the id of the entry when ``ids`` continues that entry's conversation (it
        starts with the entry's whole input), else None: only such an entry is superseded by the
        row's new one. An entry sharing just the instruction prompt stays for its own conversation.
        The prompt's KV (its first ``split`` tokens, :meth:`prefix_kv`) is taken when it is longer.
        """
        x = np.asarray(ids, dtype=np.int64)
        best, kv, key = 0, None, None
        for k in self.conversations:
            entry = self.conversations.peek(k)
            n = common_prefix_len(entry.tokens, x)
            if n > best:
                best, kv, key = n, entry.kv, (k if n >= entry.prompt_len else None)
        if split > best:
            cache = self.prefix_kv(tuple(ids[:split]), compute)
            best, kv, key = split, [(layer.keys, layer.values) for layer in cache.layers], None
        return min(best, len(ids) - 1), kv, key

    def store(self, continued: Sequence[int | None], entries: Sequence[KVEntry]) -> None:
        """Keep each row's new entry, dropping the entry it continued (the new one holds that prefix too)."""
        for used, entry in zip(continued, entries):
            if used is not None:
                self.conversations.pop(used)
            self.conversations.put(next(self._entry_ids), entry)

    def clear(self) -> None:
        self.prefixes.clear()
        self.conversations.clear()
