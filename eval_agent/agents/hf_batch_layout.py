"""How the ``hf`` backend lays out a chunk of rows that each have a cached part (see :mod:`eval_agent.agents.hf`):
input ids, attention mask and a batch KV cache holding every row's cached keys and values."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from eval_agent.agents.hf_kv_store import common_prefix_len


def _torch():
    import torch

    return torch


@dataclass
class BatchLayout:
    """A laid-out chunk: ``input_ids`` and ``mask`` ``[rows, C + S]``, the batch ``cache`` of its first ``C`` columns
    (``width_c``), and the tokens taken from the cache (``reused``) or left to compute (``prefilled``)."""

    input_ids: Any
    mask: Any
    cache: Any
    width_c: int
    reused: int
    prefilled: int


def shared_prefix_len(ids: list[list[int]], cached: list[int], min_prefix_tokens: int) -> int:
    """Leading tokens that every row has cached and that are the same in every row (0: none, or fewer
    than ``min_prefix_tokens``)."""
    if len(ids) < 2:
        return 0
    first = np.asarray(ids[0], dtype=np.int64)
    n = min(cached)
    for x in ids[1:]:
        if n == 0:
            break
        n = min(n, common_prefix_len(first, np.asarray(x, dtype=np.int64)))
    return n if n >= min_prefix_tokens else 0


def lay_out(ids: list[list[int]], sources: list[tuple[int, list[tuple[Any, Any]] | None]], pad: int, shared: int,
            new_cache: Any, reserve: int = 1) -> BatchLayout:
    """Input ids, attention mask and batch KV cache of rows whose first ``sources[r][0]`` tokens are cached.

    ``P = shared``: the tokens every row has cached and shares with every other row (the instruction
    prompt, :func:`shared_prefix_len`), kept once when shared-prefix attention is on (else ``P = 0``).
    Row ``r`` with ``c_r`` cached and ``s_r`` new tokens, ``C = P + max (c - P)``, ``S = max s``: columns
    ``[0, P)`` hold the shared prefix, ``[C - c_r + P, C)`` the rest of its cached keys/values,
    ``[C + S - s_r, C + S)`` its new tokens; all other columns are masked padding. ``new_cache(room,
    prefix)`` makes the batch cache, with room for ``S + reserve`` more columns before it reallocates.
    """
    torch = _torch()

    n = len(ids)
    cached = [c for c, _ in sources]
    width_c = shared + max(c - shared for c in cached)
    width_s = max(len(x) - c for x, c in zip(ids, cached))
    width = width_c + width_s
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, (x, c) in enumerate(zip(ids, cached)):
        input_ids[r, :shared] = torch.tensor(x[:shared], dtype=torch.long)
        mask[r, :shared] = 1
        if c > shared:
            input_ids[r, width_c - (c - shared):width_c] = torch.tensor(x[shared:c], dtype=torch.long)
            mask[r, width_c - (c - shared):width_c] = 1
        suffix = x[c:]
        input_ids[r, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
        mask[r, width - len(suffix):] = 1
    ref = next((kv for c, kv in sources if c), None)
    if shared:
        prefix = [(k0[:, :, :shared], v0[:, :, :shared]) for k0, v0 in ref]
        cache = new_cache(width_s + reserve, prefix)
    else:
        cache = new_cache(width_s + reserve, None)
    own = width_c - shared
    if own:
        for layer, (k0, v0) in enumerate(ref):
            keys = k0.new_zeros((n, k0.shape[1], own, k0.shape[3]))
            values = v0.new_zeros((n, v0.shape[1], own, v0.shape[3]))
            for r, (c, kv) in enumerate(sources):
                if c > shared:
                    keys[r, :, own - (c - shared):] = kv[layer][0][0, :, shared:c]
                    values[r, :, own - (c - shared):] = kv[layer][1][0, :, shared:c]
            cache.update(keys, values, layer)
    return BatchLayout(input_ids, mask, cache, width_c, sum(cached), sum(len(x) for x in ids) - sum(cached))
