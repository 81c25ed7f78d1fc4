"""The transformers adapter: the hf backend's fast path (transformers internals) and its public-API
fallback give the same greedy and seeded outputs; an untested transformers falls back with one warning."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from eval_agent.agents.policy import SamplingParams
from eval_agent.types import Message

from engine_fixtures import build_tiny_chat_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, alfworld_sft_sample) -> Path:
    return build_tiny_chat_model(tmp_path_factory.getbasetemp() / "tiny_chat_model", alfworld_sft_sample)


@pytest.fixture(scope="module")
def chats(alfworld_sft_sample) -> list[list[Message]]:
    records = json.loads(Path(alfworld_sft_sample).read_text())[:4]
    return [[Message(m["role"], m["content"]) for m in r["conversations"]] for r in records]


def test_fast_path_and_public_fallback_generate_the_same(model_dir, chats):
    from eval_agent.agents.hf import HFPolicy
    from eval_agent.agents.shared_prefix import ATTENTION_NAME
    from eval_agent.agents.transformers_adapter import attention_implementation, growing_layer_class

    fast = HFPolicy(str(model_dir), device="cpu", transformers_internals=True)
    slow = HFPolicy(str(model_dir), device="cpu", transformers_internals=False)
    assert fast.shared_prefix and attention_implementation(fast.model) == ATTENTION_NAME
    assert not slow.shared_prefix and attention_implementation(slow.model) == "sdpa"
    assert slow.reuse_cache  # the fallback keeps conversation reuse, on plain cache layers
    assert not isinstance(slow.internals.new_cache(slow.model.config, 4).layers[0], growing_layer_class())
    batch = [chats[0][:5], chats[1][:3], chats[2][:7], chats[3][:3], chats[0][:5]]
    turns = [chats[0][:7], chats[2][:9]]  # continue two conversations: served from the kept caches
    for params in (SamplingParams(max_new_tokens=12),
                   [SamplingParams(temperature=1.0, max_new_tokens=12, seed=s) for s in range(len(batch))]):
        got = fast.generate(batch, params), slow.generate(batch, params)
        assert got[0] == got[1]
        assert len(set(got[0])) > 2
    greedy = SamplingParams(max_new_tokens=12)
    assert fast.generate(turns, greedy) == slow.generate(turns, greedy)
    assert fast.n_reused_tokens > 0 and slow.n_reused_tokens > 0


def test_untested_transformers_falls_back_with_one_warning(monkeypatch, caplog):
    import transformers

    from eval_agent.agents import transformers_adapter as adapter

    adapter.fast_path_supported.cache_clear()
    assert adapter.fast_path_supported()  # the pinned release is in the tested range
    monkeypatch.setattr(transformers, "__version__", "9.0.0")
    adapter.fast_path_supported.cache_clear()
    with caplog.at_level(logging.WARNING, logger=adapter.__name__):
        assert not adapter.internals().enabled
        assert not adapter.internals().enabled
    assert len([r for r in caplog.records if "outside the tested range" in r.message]) == 1
    adapter.fast_path_supported.cache_clear()


def test_cache_argument_follows_the_models_signature(model_dir):
    import inspect

    from transformers import AutoModelForCausalLM

    from eval_agent.agents.transformers_adapter import cache_kwargs

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    (name,) = cache_kwargs(model, None)
    assert name in inspect.signature(type(model).forward).parameters


@pytest.mark.parametrize("heads,kv_heads,q_len,s_len", [(4, 2, 1, 300), (4, 2, 9, 37), (8, 2, 1, 1100), (8, 4, 64, 600)])
def test_grouped_heads_attend_without_the_copy_bit_for_bit(monkeypatch, heads, kv_heads, q_len, s_len):
    """adapter.sdpa_attention skips transformers' repeat_kv on a CPU and gives its outputs exactly (padded rows, causal)."""
    import types

    import torch
    from transformers.integrations import sdpa_attention as transformers_sdpa

    from eval_agent.agents.transformers_adapter import sdpa_attention

    g = torch.Generator().manual_seed(heads * 1000 + s_len)
    b, d = 5, 32
    query = torch.randn(b, q_len, heads, d, generator=g).transpose(1, 2)  # the layout the Llama layer hands over
    key, value = (torch.randn(b, s_len, kv_heads, d, generator=g).transpose(1, 2) for _ in range(2))
    padding = torch.arange(s_len)[None, :] >= torch.tensor([0, 3, s_len // 3, 1, 7])[:, None]
    causal = torch.arange(s_len)[None, :] <= (s_len - q_len + torch.arange(q_len))[:, None]
    mask = (padding[:, None, :] & causal[None])[:, None]
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    copies = []
    real_repeat = transformers_sdpa.repeat_kv
    monkeypatch.setattr(transformers_sdpa, "repeat_kv", lambda x, n_rep: copies.append(n_rep) or real_repeat(x, n_rep))

    expected, _ = transformers_sdpa.sdpa_attention_forward(module, query, key, value, mask, scaling=d ** -0.5)
    assert copies == [heads // kv_heads] * 2  # transformers copies the keys and the values
    copies.clear()
    got, _ = sdpa_attention(module, query, key, value, mask, scaling=d ** -0.5)
    assert copies == []
    assert got.shape == expected.shape == (b, q_len, heads, d)
    assert torch.equal(got, expected)
