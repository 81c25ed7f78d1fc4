"""Shared-prefix (cascade) attention equals ordinary attention over the concatenated keys.

``eval_agent.agents.shared_prefix`` keeps a batch's common prefix once and each row's own tokens
per row. Its output must equal PyTorch's SDPA over ``concat(prefix, rows)`` with the same mask, for
decoding (one query) and prefill (several queries, causal), with padding, with grouped-query
heads, on both of its paths (plain matrix products, and the CPU flash kernel merged by log-sum-exp).
"""
from __future__ import annotations

import pytest
import torch

from eval_agent.agents.transformers_adapter import cpu_flash_with_lse as _flash_with_lse
from eval_agent.agents.shared_prefix import (PrefixedKV, _row_visibility, _two_part_fused,
                                             _two_part_matmul, shared_prefix_attention)


class _Module:  # what transformers' SDPA wrapper reads from the attention module
    num_key_value_groups = 2
    is_causal = True
    training = False


def _case(b: int, heads: int, kv_heads: int, q: int, p: int, s: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = 8
    query = torch.randn(b, heads, q, d, generator=g)
    kp, vp = torch.randn(1, kv_heads, p, d, generator=g), torch.randn(1, kv_heads, p, d, generator=g)
    kr, vr = torch.randn(b, kv_heads, s, d, generator=g), torch.randn(b, kv_heads, s, d, generator=g)
    # left padding of the row part: row i has its first i columns masked; queries are the last q columns
    mask = torch.ones(b, 1, q, p + s, dtype=torch.bool)
    for i in range(b):
        mask[i, :, :, p:p + i] = False
    causal = torch.arange(s)[None, :] <= (s - q + torch.arange(q))[:, None]
    mask[:, :, :, p:] &= causal
    return query, kp, vp, kr, vr, mask


def _reference(query, kp, vp, kr, vr, mask):
    b, heads = query.shape[:2]
    rep = heads // kp.shape[1]
    keys = torch.cat([kp.expand(b, -1, -1, -1), kr], dim=2).repeat_interleave(rep, dim=1)
    values = torch.cat([vp.expand(b, -1, -1, -1), vr], dim=2).repeat_interleave(rep, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask)


@pytest.mark.parametrize("q", [1, 5])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_both_paths_equal_sdpa_over_the_concatenation(q, kv_heads):
    query, kp, vp, kr, vr, mask = _case(b=4, heads=4, kv_heads=kv_heads, q=q, p=11, s=9)
    expected = _reference(query, kp, vp, kr, vr, mask)  # [B, H, q, d]
    rep = 4 // kv_heads
    qg = query.reshape(4, kv_heads, rep * q, 8)
    visible = _row_visibility(mask, 11, 9, q, rep, query.device)
    scale = 8 ** -0.5
    paths = [_two_part_matmul(qg, PrefixedKV(kp, kr), PrefixedKV(vp, vr), visible, scale)]
    if _flash_with_lse() is not None:
        paths.append(_two_part_fused(_flash_with_lse(), qg, PrefixedKV(kp, kr), PrefixedKV(vp, vr), visible, scale))
    for out in paths:
        torch.testing.assert_close(out.reshape(4, 4, q, 8), expected, atol=1e-5, rtol=1e-5)
    # the registered function returns [B, q, H, d], as transformers' attention functions do
    got, _ = shared_prefix_attention(_Module(), query, PrefixedKV(kp, kr), PrefixedKV(vp, vr), mask, scaling=scale)
    torch.testing.assert_close(got, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_no_mask_means_causal_aligned_to_the_end():
    query, kp, vp, kr, vr, _ = _case(b=2, heads=4, kv_heads=2, q=3, p=6, s=7, seed=1)
    full = torch.ones(2, 1, 3, 13, dtype=torch.bool)
    full[:, :, :, 6:] &= torch.arange(7)[None, :] <= (4 + torch.arange(3))[:, None]
    got, _ = shared_prefix_attention(_Module(), query, PrefixedKV(kp, kr), PrefixedKV(vp, vr), None)
    torch.testing.assert_close(got, _reference(query, kp, vp, kr, vr, full).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_a_query_that_sees_none_of_its_row_attends_to_the_prefix_only():
    query, kp, vp, kr, vr, mask = _case(b=2, heads=2, kv_heads=2, q=1, p=5, s=4, seed=2)
    mask[1, :, :, 5:] = False  # e.g. a padded query position of a prefill
    got, _ = shared_prefix_attention(_Module(), query, PrefixedKV(kp, kr), PrefixedKV(vp, vr), mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _reference(query, kp, vp, kr, vr, mask).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_plain_tensors_go_to_sdpa_unchanged():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(2, 4, 3, 8, generator=g) for _ in range(3))
    key, value = key[:, :2], value[:, :2]
    got, _ = shared_prefix_attention(_Module(), query, key, value, None)
    expected, _ = sdpa_attention_forward(_Module(), query, key, value, None)
    assert torch.equal(got, expected)
