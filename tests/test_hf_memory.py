"""The ``hf`` backend's rows per chunk sized from free accelerator memory, on real model configs:
Llama-2-7B (32 KV heads, no grouped-query attention) and Mistral-7B (8 KV heads)."""
from __future__ import annotations

import pytest

from eval_agent.agents.hf_memory import DEFAULT_MAX_BATCH_SIZE, KVShape, rows_for_memory

GIB = 2**30


def _llama2_7b():
    from transformers import LlamaConfig

    # the values of meta-llama/Llama-2-7b-chat-hf's config.json
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)


def _mistral_7b():
    from transformers import MistralConfig

    return MistralConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)


def test_kv_bytes_per_token_from_configs():
    assert KVShape.from_config(_llama2_7b(), 2) == KVShape(32, 32, 128, 2)
    assert KVShape.from_config(_llama2_7b(), 2).bytes_per_token == 2**19  # 0.5 MiB per token in bf16
    assert KVShape.from_config(_mistral_7b(), 2).bytes_per_token == 2**17  # grouped-query attention: a quarter
    assert KVShape.from_config(_llama2_7b(), 4).bytes_per_token == 2**20  # float32: twice bf16


def test_rows_for_memory_llama2_and_gqa():
    llama, mistral = KVShape.from_config(_llama2_7b(), 2), KVShape.from_config(_mistral_7b(), 2)
    # an 80 GB GPU with 7B bf16 weights loaded: ~60 GiB free; 2k-token prompt + 512 new tokens = 1.25 GiB per row
    assert rows_for_memory(60 * GIB, llama, 2048, 512) == 38  # floor(0.8 * 60 / 1.25)
    assert rows_for_memory(8 * GIB, llama, 2048, 512) == 5  # floor(0.8 * 8 / 1.25)
    assert rows_for_memory(8 * GIB, mistral, 2048, 512) == 20  # 320 MiB per row
    assert rows_for_memory(60 * GIB, mistral, 2048, 512) == DEFAULT_MAX_BATCH_SIZE  # 153 rows fit: capped
    assert rows_for_memory(GIB // 2, llama, 2048, 512) == 1  # not even one row fits: one row at a time
    assert rows_for_memory(60 * GIB, llama, 2048, 512, cap=16) == 16
    assert rows_for_memory(60 * GIB, llama, 2048, 512, fraction=1.0) == 48
    # shorter contexts fit more rows
    assert rows_for_memory(60 * GIB, llama, 512, 512) > rows_for_memory(60 * GIB, llama, 2048, 512)


def test_rows_for_memory_refuses_bad_arguments():
    shape = KVShape(1, 1, 1, 2)
    for kwargs in ({"free_bytes": -1}, {"cap": 0}, {"fraction": 0.0}, {"fraction": 1.5}, {"new_tokens": -1}):
        args = {"free_bytes": GIB, "shape": shape, "prompt_tokens": 10, "new_tokens": 10, **kwargs}
        with pytest.raises(ValueError, match="rows_for_memory"):
            rows_for_memory(**args)
