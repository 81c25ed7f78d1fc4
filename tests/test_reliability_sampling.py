"""Reliability of sampling (failure 11, the last item): with ``batch_invariant`` (the ``hf`` backend's
default) a sampled reply, and so a Monte Carlo record, does not depend on how many episodes are in
flight.

A batched forward pass rounds differently from a single-row one; the first test shows that
difference on the tiny model's logits, and the second shows it reaching the sampler when the option
is off, so the bit-for-bit equalities below are not trivially true."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from engine_fixtures import build_tiny_chat_model

from eval_agent.agents import hf_decode
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


class RecordingSampler(hf_decode.RowSampler):
    """The backend's sampler, also keeping the scores each seed's row was sampled from, step by step."""

    seen: dict[int, list] = {}

    def __init__(self, temperatures, top_ps, seeds, device) -> None:
        super().__init__(temperatures, top_ps, seeds, device)
        self.seeds = list(seeds)

    def __call__(self, input_ids, scores):
        for i in self.rows:
            self.seen.setdefault(self.seeds[i], []).append(scores[i].clone())
        return super().__call__(input_ids, scores)


@pytest.mark.parametrize("invariant", [True, False])
def test_a_sampled_row_is_drawn_from_the_same_bits_alone_and_in_a_batch(tiny: Path, monkeypatch,
                                                                       invariant: bool) -> None:
    """With ``batch_invariant`` (the default) a sampled row's scores are bit for bit the same whatever
    shares its call; without it they are not (the failure: the episode depends on ``--max_active``)."""
    import torch

    monkeypatch.setattr(hf_decode, "RowSampler", RecordingSampler)
    pol = HFPolicy(str(tiny), device="cpu", batch_invariant=invariant)
    convs = [[Message("user", f"You are in room {i}. " + "There is a table. " * i)] for i in range(5)]
    convs += convs[:2]  # rows with identical tokens, as the N rollouts of one Monte Carlo state
    params = [SamplingParams(temperature=1.0, max_new_tokens=8, seed=100 + i) for i in range(len(convs))]
    RecordingSampler.seen = {}
    together = pol.generate(convs, params)
    batched, RecordingSampler.seen = RecordingSampler.seen, {}
    alone = [pol.generate([c], [p])[0] for c, p in zip(convs, params)]
    single = RecordingSampler.seen
    same = [len(batched[s]) == len(single[s]) and all(torch.equal(a, b) for a, b in zip(batched[s], single[s]))
            for s in sorted(single)]
    if invariant:
        assert all(same) and together == alone and len(set(together)) > 1
    else:
        assert not all(same)


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
        policy = HFPolicy(str(tiny), device="cpu")
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


# ------------------------------------------------------------------ what the sampling stages ask of each backend
def test_the_sampling_stages_ask_for_batch_invariance_when_they_sample() -> None:
    from steca.sampling.sampling_cli import backend_overrides, build_parser

    def args(*extra: str):
        return build_parser().parse_args(["mc", "--output", "o.jsonl", *extra])

    assert backend_overrides(args("--backend", "vllm"), 1.0)["batch_invariant"] is True  # mc samples
    assert backend_overrides(args("--backend", "vllm"), 0.0)["batch_invariant"] is False  # greedy exploration
    assert backend_overrides(args("--backend", "vllm", "--batch_invariant", "false"), 1.0)["batch_invariant"] is False
    assert backend_overrides(args("--backend", "hf"), 1.0)["batch_invariant"] is None  # the hf config's: on
    assert backend_overrides(args("--backend", "hf", "--batch_invariant", "false"), 1.0)["batch_invariant"] is False
    assert backend_overrides(args("--backend", "openai"), 1.0) == {}  # the server's own setting


@pytest.mark.parametrize("invariant", [True, False])
def test_the_vllm_backend_starts_its_engine_in_batch_invariant_mode(monkeypatch, invariant: bool) -> None:
    """vLLM needs CUDA, so a stand-in ``vllm`` module records what the engine would see when it starts."""
    import os
    import sys
    import types

    from eval_agent.agents.vllm_backend import BATCH_INVARIANT_ENV, VLLMPolicy

    seen: dict[str, object] = {}

    class LLM:
        def __init__(self, **kwargs) -> None:
            seen.update(kwargs=kwargs, env=os.environ.get(BATCH_INVARIANT_ENV))
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=4096))

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM))
    monkeypatch.delenv(BATCH_INVARIANT_ENV, raising=False)
    VLLMPolicy("some/model", seed=3, batch_invariant=invariant)
    assert seen["env"] == ("1" if invariant else None)
    assert "batch_invariant" not in seen["kwargs"] and seen["kwargs"]["seed"] == 3
