"""How many rows the ``hf`` backend generates at once on an accelerator: sized from its free memory.

A row of a chunk holds its own key/value cache for its whole context (the shared prompt's cache is
copied per row outside shared-prefix attention), so the cache dominates what a chunk needs beyond
the weights: Llama-2-7B (32 layers x 32 KV heads x 128 dims, bf16) needs 0.5 MiB per token, and 64
rows of 2.5k tokens would need 80 GiB. The functions here are pure (no device query): the backend
passes the free bytes it measured (:meth:`eval_agent.agents.hf.HFPolicy`), and on the CPU keeps
:data:`DEFAULT_MAX_BATCH_SIZE`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BATCH_SIZE = 64  # rows per chunk on the CPU, and the most that sizing from memory gives
MEMORY_FRACTION = 0.8  # share of the free memory given to the rows' caches; the rest for activations


@dataclass(frozen=True)
class KVShape:
    """What one token's key/value cache is made of: ``layers`` x ``kv_heads`` x ``head_dim`` values of
    ``dtype_bytes`` each, once for keys and once for values."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def bytes_per_token(self) -> int:
        """``2 x layers x kv_heads x head_dim x dtype_bytes`` (keys and values)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @classmethod
    def from_config(cls, config: Any, dtype_bytes: int) -> "KVShape":
        """From a transformers model config: ``num_hidden_layers``, ``num_key_value_heads`` (grouped-query
        attention; default ``num_attention_heads``) and ``head_dim`` (default ``hidden_size /
        num_attention_heads``)."""
        heads = int(config.num_attention_heads)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
        return cls(int(config.num_hidden_layers), int(kv_heads), int(head_dim), int(dtype_bytes))


def rows_for_memory(free_bytes: int, shape: KVShape, prompt_tokens: int, new_tokens: int,
                    cap: int = DEFAULT_MAX_BATCH_SIZE, fraction: float = MEMORY_FRACTION) -> int:
    """Rows of a chunk whose caches fit in the free memory:

        rows = clamp( floor( fraction x free_bytes / ((prompt_tokens + new_tokens) x bytes_per_token) ), 1, cap )

    with ``bytes_per_token = 2 x layers x kv_heads x head_dim x dtype_bytes`` (:class:`KVShape`),
    ``prompt_tokens`` the longest prompt of the chunk and ``new_tokens`` its ``max_new_tokens``. The
    remaining ``1 - fraction`` of the free memory is left for the forward pass's activations (with
    ``logits_to_keep=1``, a few percent of the cache at these lengths). At least one row: a row that
    does not fit runs alone and fails as it would at any batch size.
    """
    if free_bytes < 0 or prompt_tokens < 0 or new_tokens < 0 or cap < 1 or not 0 < fraction <= 1:
        raise ValueError(f"rows_for_memory: bad arguments free_bytes={free_bytes}, prompt_tokens={prompt_tokens}, "
                         f"new_tokens={new_tokens}, cap={cap}, fraction={fraction}")
    per_row = max(1, prompt_tokens + new_tokens) * shape.bytes_per_token
    return max(1, min(cap, int(fraction * free_bytes) // per_row))
