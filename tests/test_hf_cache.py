"""The ``hf`` backend's conversation KV reuse (``reuse_cache``) on a real tiny transformers model.

Greedy (and seeded sampled) outputs must be the same with the reuse on and off: through the
rollout engine on real ALFWorld dev games (multi-turn episodes whose histories grow every turn),
and for batches that mix rows with different cached lengths. The model is the random-weights
nano Llama of ``engine_fixtures`` (varied outputs, so equal outputs are not trivially equal).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from eval_agent.agents.policy import SamplingParams
from eval_agent.types import Message

from engine_fixtures import build_tiny_chat_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, alfworld_sft_sample) -> Path:
    return build_tiny_chat_model(tmp_path_factory.getbasetemp() / "tiny_chat_model", alfworld_sft_sample)


@pytest.fixture(scope="module")
def chats(alfworld_sft_sample) -> list[list[Message]]:
    """Real expert conversations (instruction, example, task and turns) from the shared SFT sample."""
    records = json.loads(Path(alfworld_sft_sample).read_text())[:6]
    return [[Message(m["role"], m["content"]) for m in r["conversations"]] for r in records]


def _policy(model_dir: Path, **kw):
    """A policy whose sampled rows go through the batched, cached path these tests check (with the
    default ``batch_invariant`` they are computed alone: tests/test_reliability_sampling.py)."""
    from eval_agent.agents.hf import HFPolicy

    return HFPolicy(str(model_dir), device="cpu", **{"batch_invariant": False, **kw})


def test_common_prefix_len():
    from eval_agent.agents.hf import common_prefix_len

    a = np.array([1, 2, 3, 4])
    assert common_prefix_len(a, np.array([1, 2, 3, 4, 5])) == 4
    assert common_prefix_len(a, np.array([1, 2, 9, 4])) == 2
    assert common_prefix_len(a, np.array([7])) == 0
    assert common_prefix_len(a, np.array([], dtype=np.int64)) == 0
    assert common_prefix_len(a, a) == 4


def test_engine_episodes_identical_with_and_without_reuse(model_dir, alfworld_data, alfworld_sft_sample):
    from eval_agent.engine import RolloutEngine, RolloutJob
    from eval_agent.envs.alfworld_env import AlfWorldEnv
    from eval_agent.prompts import build_prompt, instruction_from_sft

    prompt = build_prompt(instruction_from_sft(alfworld_sft_sample))
    factory = functools.partial(AlfWorldEnv, str(alfworld_data), "dev")
    env = factory()
    task = env.task_ids()[0]
    env.close()
    jobs = [RolloutJob("greedy", task, prompt, params=SamplingParams(max_new_tokens=10), max_steps=3),
            RolloutJob("sampled", task, prompt, params=SamplingParams(temperature=1.0, max_new_tokens=10),
                       n=2, max_steps=3, seed=5)]

    def play(policy):
        with RolloutEngine(policy, factory, num_workers=0, max_active=8, show_progress=False) as engine:
            results = engine.run(jobs)
        return sorted((r.job_id, r.rollout, r.episode.steps, tuple(m.content for m in r.episode.messages))
                      for r in results)

    on = _policy(model_dir, reuse_cache=True)
    off = _policy(model_dir, reuse_cache=False)
    with_reuse, without = play(on), play(off)
    assert with_reuse == without
    assert all(steps == 3 for _, _, steps, _ in with_reuse)
    replies = [m for _, _, _, msgs in with_reuse for m in msgs[len(prompt) + 1::2]]
    assert len(set(replies)) > len(replies) // 2, "replies should vary between turns and episodes"
    # later turns were served from the kept caches: most tokens were not prefilled again
    assert on.n_reused_tokens > 3 * on.n_prefilled_tokens
    assert len(on.kv_store.conversations) == 3  # one entry per episode: each turn replaced the entry it continued
    assert off.n_reused_tokens == 0 and len(off.kv_store.conversations) == 0


def test_mixed_cached_lengths_in_one_batch_and_bounded_store(model_dir, chats):
    params = SamplingParams(max_new_tokens=10)
    # six rows: some continue a conversation the policy has seen, at different depths, others are new
    warm = [chats[0][:5], chats[1][:3], chats[2][:7]]
    batch = [chats[0][:9], chats[3][:5], chats[1][:5], chats[2][:7], chats[4][:3], chats[5][:7]]
    on = _policy(model_dir, max_batch_size=4, conv_cache_size=5)
    for conv in warm:
        on.generate([conv], params)
    assert len(on.kv_store.conversations) == 3
    reused_before = on.n_reused_tokens
    got = on.generate(batch, params)
    assert on.n_reused_tokens > reused_before
    assert len(on.kv_store.conversations) <= 5  # bounded; the three continued entries were replaced, not added to
    off = _policy(model_dir, reuse_cache=False)
    expected = [off.generate([c], params)[0] for c in batch]
    assert got == expected
    assert len(set(got)) > 3
    # a conversation that continues from an entry replaces it: the store does not grow
    size = len(on.kv_store.conversations)
    on.generate([chats[0][:11]], params)
    assert len(on.kv_store.conversations) == size


def test_reuse_is_off_without_prompt_cache_and_configurable(model_dir):
    from eval_agent.agents import load_agent_config

    assert load_agent_config("hf")["reuse_cache"] == "auto"
    assert _policy(model_dir).reuse_cache  # auto: on for CPU
    assert not _policy(model_dir, prefix_cache_size=0).reuse_cache
    assert _policy(model_dir, max_batch_size=3).conv_cache_size == 6


def test_identical_rows_share_one_prefill(model_dir, chats):
    """The N rollouts of one state arrive as identical rows: one prefill, then each samples with its own seed."""
    conv = chats[1][:7]
    rows = [SamplingParams(temperature=1.0, max_new_tokens=12, seed=s) for s in (11, 12, 13)]
    other = SamplingParams(temperature=1.0, max_new_tokens=12, seed=14)
    on = _policy(model_dir)
    got = on.generate([conv, chats[2][:5], conv, conv], [rows[0], other, rows[1], rows[2]])
    off = _policy(model_dir, reuse_cache=False)
    expected = [off.generate([c], p)[0] for c, p in
                [(conv, rows[0]), (chats[2][:5], other), (conv, rows[1]), (conv, rows[2])]]
    assert got == expected
    assert len({got[0], got[2], got[3]}) > 1, "identical rows with different seeds should sample differently"
    n_conv = len(on.encode(conv))
    n_prompt = on._prompt_split(conv, on.encode(conv))
    # the three copies were prefilled once (plus one token each), not three times
    assert on.n_prefilled_tokens < len(on.encode(chats[2][:5])) - n_prompt + (n_conv - n_prompt) + 3 + 1


def test_shared_prompt_is_read_once_and_outputs_do_not_change(model_dir, chats, monkeypatch):
    """Rows sharing the instruction prompt decode through shared-prefix attention (the prompt's keys
    once per batch), in the policy's own decoding loop; greedy, sampled and stop-string outputs equal
    ``model.generate`` one conversation at a time with no cache."""
    from transformers import AttentionInterface

    from eval_agent.agents.shared_prefix import ATTENTION_NAME, PrefixedKV

    on = _policy(model_dir)
    assert on.shared_prefix and on.model.config._attn_implementation == ATTENTION_NAME
    seen = {"prefixed": 0, "prefix_len": 0}
    inner = AttentionInterface._global_mapping[ATTENTION_NAME]

    def counting(module, query, key, value, mask, **kw):
        if isinstance(key, PrefixedKV):
            seen["prefixed"] += 1
            seen["prefix_len"] = max(seen["prefix_len"], key.prefix.shape[2])
        return inner(module, query, key, value, mask, **kw)

    monkeypatch.setitem(AttentionInterface._global_mapping, ATTENTION_NAME, counting)
    off = _policy(model_dir, reuse_cache=False)
    assert not off.shared_prefix
    batch = [chats[0][:5], chats[1][:3], chats[2][:7], chats[3][:5]]
    greedy = SamplingParams(max_new_tokens=16)
    got = on.generate(batch, greedy)
    assert got == [off.generate([c], greedy)[0] for c in batch]
    prompt_len = on._prompt_split(batch[0], on.encode(batch[0]))
    assert seen["prefixed"] > 0 and seen["prefix_len"] == prompt_len > 0
    sampled = [SamplingParams(temperature=1.0, max_new_tokens=16, seed=s) for s in range(4)]
    assert on.generate(batch, sampled) == [off.generate([c], p)[0] for c, p in zip(batch, sampled)]
    # a stop string taken from the middle of a greedy reply ends that reply early, on both paths
    word = next(t[len(t) // 2:len(t) // 2 + 2] for t in got if len(t) > 6 and t[len(t) // 2:len(t) // 2 + 2].strip())
    stopped = SamplingParams(max_new_tokens=16, stop=(word,))
    got_stop = on.generate(batch, stopped)
    assert got_stop == [off.generate([c], stopped)[0] for c in batch]
    assert any(len(a) < len(b) for a, b in zip(got_stop, got))


def test_row_sampler_draws_from_each_rows_distribution():
    """Inverse-transform sampling with per-row generators: softmax(z / T), nucleus-restricted, seed-determined."""
    import torch

    from eval_agent.agents.hf import RowSampler

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0], [0.0, 3.0, 0.0, 0.0, 0.0], [1.0, 0.9, 0.0, 0.0, 0.0]])
    sampler = RowSampler([1.0, 0.0, 0.5], [1.0, 1.0, 0.6], [1, 2, 3], "cpu")
    n = 600  # the generators are seeded: the draws, and so this test, are deterministic
    counts = torch.zeros(3, 5)
    for _ in range(n):
        out = sampler(None, logits)
        assert torch.equal(out[1], logits[1])  # greedy rows are left alone
        picked = out[[0, 2]] == 0
        assert picked.sum(-1).tolist() == [1, 1] and torch.isinf(out[[0, 2]]).sum() == 8
        counts[[0, 2]] += picked.float()
    freq = counts / n
    assert torch.allclose(freq[0], torch.softmax(logits[0], -1), atol=0.06)
    assert freq[0, 4] == 0  # (practically) zero probability: never drawn
    # row 2: T = 0.5 gives p = (0.55, 0.45, ...); top_p 0.6 keeps the two most likely tokens only
    p2 = torch.softmax(logits[2, :2] / 0.5, -1)
    assert torch.allclose(freq[2, :2], p2, atol=0.06) and freq[2, 2:].sum() == 0
    # same seeds, same draws
    a = RowSampler([1.0], [1.0], [7], "cpu")
    b = RowSampler([1.0], [1.0], [7], "cpu")
    draws_a = [int(a(None, logits[:1]).argmax()) for _ in range(20)]
    assert draws_a == [int(b(None, logits[:1]).argmax()) for _ in range(20)] and len(set(draws_a)) > 1


def test_every_row_of_a_chunk_keeps_its_entry_when_one_token_is_drawn(model_dir, chats):
    """With one new token no generated KV is computed (each row keeps 0 generated tokens): every row's
    entry is still stored, not only the first row's."""
    on = _policy(model_dir)
    on.generate([chats[0][:3], chats[1][:3], chats[2][:3]], SamplingParams(0.0, 1.0, 1, (), None))
    assert len(on.kv_store.conversations) == 3
