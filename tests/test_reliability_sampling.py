"""Reliability of sampling (failure 11, the last item): with ``batch_invariant`` the ``hf`` backend's
sampled replies, and so the Monte Carlo records, do not depend on how many episodes are in flight.

A batched forward pass rounds differently from a single-row one; the test shows that difference on
the tiny model's logits, so the bit-for-bit equality below is not trivially true."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from engine_fixtures import build_tiny_chat_model

from eval_agent.agents.hf import HFPolicy
from eval_agent.agents.policy import SamplingParams
from eval_agent.engine import RolloutEngine
from eval_agent.envs import make_env
from eval_agent.types import Message
from steca.records import load_sft, load_steps
from steca.sampling.stages import expert_steps, monte_carlo


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, alfworld_sft_sample: Path) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("det") / "tiny", alfworld_sft_sample)


def test_batched_rows_round_differently_from_single_rows(tiny: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(5, model.config.vocab_size, (1, 300), generator=g)
    b = torch.randint(5, model.config.vocab_size, (1, 340), generator=g)
    with torch.no_grad():
        alone = model(input_ids=a).logits[0, -1]
        ids = torch.cat([torch.cat([torch.zeros((1, 40), dtype=torch.long), a], 1), b])
        mask = (torch.arange(340)[None, :] >= torch.tensor([[40], [0]])).long()
        batched = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[0, -1]
    assert torch.allclose(alone, batched, atol=1e-4) and not torch.equal(alone, batched)


def test_a_batch_invariant_reply_depends_only_on_its_conversation_and_seed(tiny: Path) -> None:
    pol = HFPolicy(str(tiny), device="cpu", batch_invariant=True)
    convs = [[Message("user", f"You are in room {i}. " + "There is a table. " * i)] for i in range(5)]
    params = [SamplingParams(temperature=1.0, max_new_tokens=16, seed=100 + i) for i in range(5)]
    together = pol.generate(convs, params)
    alone = [pol.generate([c], [p])[0] for c, p in zip(convs, params)]
    assert together == alone and len(set(together)) > 1


def test_monte_carlo_records_are_the_same_with_5_and_10_in_flight(tiny: Path, tmp_path: Path, alfworld_data: Path,
                                                                 alfworld_sft_sample: Path) -> None:
    sft = load_sft(alfworld_sft_sample, strict=True).records[:1]
    env = make_env("alfworld", "train", str(alfworld_data))
    try:
        expert_steps(sft, env, tmp_path / "expert.jsonl")
    finally:
        env.close()
    steps = load_steps(tmp_path / "expert.jsonl").records
    outputs = {}
    for max_active in (5, 10):
        policy = HFPolicy(str(tiny), device="cpu", batch_invariant=True)
        engine = RolloutEngine(policy, partial(make_env, "alfworld", "train", str(alfworld_data)),
                               max_active=max_active, show_progress=False, seed=0)
        out = tmp_path / f"mc{max_active}.jsonl"
        try:
            monte_carlo(steps, engine, out, num_rollouts=3, params=SamplingParams(1.0, max_new_tokens=8),
                        max_steps=3, save_rollouts=True)
        finally:
            engine.close()
            policy.close()
        outputs[max_active] = sorted(out.read_text().splitlines(), key=lambda s: (json.loads(s)["id"],
                                                                                 json.loads(s)["iteration"]))
    assert outputs[5] == outputs[10] and len(outputs[5]) == len(steps)
