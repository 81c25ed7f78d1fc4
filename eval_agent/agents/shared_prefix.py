"""Attention over a prefix shared by every row of a batch, read once per batch (cascade attention).

In a rollout batch every row starts with the same instruction prompt (about 60% of a row's
context in ALFWorld). A plain batched KV cache holds one copy of that prompt per row, and every
decoding step reads all of them: decoding a small model is limited by this memory traffic.

Here the batch cache keeps the shared prefix once, ``prefix`` of shape ``[1, kv_heads, P, d]``,
and only each row's own tokens per row, ``rows`` of shape ``[B, kv_heads, S, d]``. For a query
``q`` of row ``b`` and head ``h`` (kv head ``g = h // (heads / kv_heads)``) the attention is the
usual softmax over the row's whole context, split in two:

    s_p = scale * q . K_prefix[g]^T            (P scores: one matrix product for all rows and heads)
    s_r = scale * q . K_rows[b, g]^T           (S scores: the row's own keys, masked for padding)
    a   = softmax([s_p, s_r])
    out = a[:P] . V_prefix[g] + a[P:] . V_rows[b, g]

which equals attention over ``concat(K_prefix, K_rows[b])``: the same numbers up to floating-point
rounding, with the prefix read once per batch instead of once per row, and no copy of the keys per
query head (grouped-query heads share their kv head through a reshape).

Use: the hf backend registers :func:`shared_prefix_attention` under :data:`ATTENTION_NAME` and switches
the model to it (``TransformersInternals.use_attention``); calls whose keys are plain tensors (no shared
prefix) go to transformers' SDPA function exactly as the ``sdpa`` implementation does.
``transformers_adapter.prefixed_layer_class`` is the cache layer that stores the row part and hands
attention a :class:`PrefixedKV`. Every transformers / torch internal used lives in
:mod:`eval_agent.agents.transformers_adapter`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eval_agent.agents.transformers_adapter import cpu_flash_with_lse, sdpa_attention

logger = logging.getLogger(__name__)

ATTENTION_NAME = "steca_shared_prefix"


@dataclass(frozen=True)
class PrefixedKV:
    """Keys (or values) of a batch whose rows share a prefix: ``prefix`` ``[1, kvh, P, d]``, ``rows`` ``[B, kvh, S, d]``."""

    prefix: Any
    rows: Any


def shared_prefix_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                            dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Attention of ``query`` ``[B, H, q, d]`` over a shared prefix plus each row's own keys (module docstring).

    ``attention_mask``: boolean ``[B, 1, q, P + S]`` (True = attend) or None (causal, no padding).
    The prefix columns must be visible to every query (the rows share it and come after it).
    Returns ``[B, q, H, d]`` as transformers' attention functions do. Keys that are plain tensors
    go to transformers' SDPA attention unchanged.
    """
    if not isinstance(key, PrefixedKV):
        return sdpa_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    b, heads, q, d = query.shape
    kv_heads = key.prefix.shape[1]
    rep = heads // kv_heads
    scale = scaling if scaling is not None else d ** -0.5
    # the rep query heads of kv head g (heads g*rep ... g*rep+rep-1) become rep*q query rows of g
    qg = query.reshape(b, kv_heads, rep * q, d)
    visible = _row_visibility(attention_mask, key.prefix.shape[2], key.rows.shape[2], q, rep, query.device)
    fused = cpu_flash_with_lse() if query.device.type == "cpu" else None
    if fused is not None:
        out = _two_part_fused(fused, qg, key, value, visible, scale)
    else:
        out = _two_part_matmul(qg, key, value, visible, scale)
    return out.reshape(b, heads, q, d).transpose(1, 2).contiguous(), None


def _row_visibility(attention_mask: Any, p: int, s: int, q: int, rep: int, device: Any) -> Any:
    """Boolean ``[B or 1, 1, rep*q, S]``: which of its row's own columns each query row may see.

    From the model's mask (columns after the prefix), or causal alignment to the end (query ``i``
    of ``q`` sees row columns ``j <= S - q + i``) when there is no mask. None: everything visible.
    """
    import torch

    if attention_mask is not None:
        visible = attention_mask[..., p:]
        if visible.dtype != torch.bool:  # an additive float mask
            visible = visible == 0
    elif q > 1:
        i = torch.arange(q, device=device)[:, None]
        j = torch.arange(s, device=device)[None, :]
        visible = (j <= s - q + i)[None, None]
    else:
        return None
    return visible.repeat(1, 1, rep, 1) if rep > 1 and q > 1 else visible


def _two_part_matmul(qg: Any, key: PrefixedKV, value: PrefixedKV, visible: Any, scale: float) -> Any:
    """Reference path: ``softmax([s_p, s_r]) . [V_prefix; V_rows]`` with plain matrix products. ``[B, kvh, rep*q, d]``."""
    import torch

    b, kv_heads, m, d = qg.shape
    p = key.prefix.shape[2]
    q_flat = qg.transpose(0, 1).reshape(kv_heads, b * m, d)  # every row's queries against the one prefix
    s_p = torch.matmul(q_flat, key.prefix[0].transpose(-1, -2)).view(kv_heads, b, m, p).transpose(0, 1)
    s_r = torch.matmul(qg, key.rows.transpose(-1, -2))
    if visible is not None:
        s_r = s_r.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(torch.cat([s_p, s_r], dim=-1).float() * scale, dim=-1).to(qg.dtype)
    p_p = probs[..., :p].transpose(0, 1).reshape(kv_heads, b * m, p)
    out_p = torch.matmul(p_p, value.prefix[0]).view(kv_heads, b, m, d).transpose(0, 1)
    return out_p + torch.matmul(probs[..., p:], value.rows)


def _two_part_fused(fused: Any, qg: Any, key: PrefixedKV, value: PrefixedKV, visible: Any, scale: float) -> Any:
    """Fused path: each part by PyTorch's CPU flash kernel, merged by their log-sum-exps.

    With ``o_x, l_x`` the output and log-sum-exp of part ``x``: ``w_x = exp(l_x - max(l_p, l_r))``
    and ``out = (w_p o_p + w_r o_r) / (w_p + w_r)``, the softmax over both parts together.
    """
    import torch

    b, kv_heads, m, d = qg.shape
    q_flat = qg.transpose(0, 1).reshape(1, kv_heads, b * m, d)
    out_p, lse_p = fused(q_flat, key.prefix, value.prefix, 0.0, False, scale=scale)
    out_p = out_p.view(kv_heads, b, m, d).transpose(0, 1)
    lse_p = lse_p.view(kv_heads, b, m).transpose(0, 1)
    bias = None
    if visible is not None:
        bias = torch.zeros(visible.shape, dtype=qg.dtype, device=qg.device).masked_fill_(~visible, float("-inf"))
    out_r, lse_r = fused(qg, key.rows, value.rows, 0.0, False, attn_mask=bias, scale=scale)
    if visible is not None:  # the kernel reports 0, not -inf, for a query that sees none of its row
        lse_r = lse_r.masked_fill(~visible.any(-1), float("-inf"))
    top = torch.maximum(lse_p, lse_r)
    w_p = torch.exp(lse_p - top).unsqueeze(-1)
    w_r = torch.exp(lse_r - top).unsqueeze(-1)  # 0 where a query sees none of its row's columns
    out_r = torch.where(w_r > 0, out_r, torch.zeros_like(out_r))
    return (w_p * out_p + w_r * out_r) / (w_p + w_r)
