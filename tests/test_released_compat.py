"""Files in the released STeCa writers' exact shapes load unchanged, and the released D_s preset.

The released sampling writers store, per step: ``id`` (an integer for ALFWorld), ``iteration``,
``agent_step_output``, ``agent_step_reward`` (the environment's reward after the step),
``agent_step_conversations`` / ``agent_conversations`` as ``{role, content}`` turns that start
with a 12-turn prompt (instruction, "OK", then a five-step in-context example as turns: its first
observation, four action/observation pairs and its last action), ``agent_final_reward`` (a JSON
boolean: ``state.success``), ``time`` and ``game_file``. The example here is our own (the released
one is not copied), in the same shape.
"""
from __future__ import annotations

import json
from pathlib import Path

from eval_agent.agents.policy import SamplingParams
from eval_agent.types import parse_action
from eval_agent.prompts import builtin_example
from eval_agent.types import Message
from steca.method.datasets import build_expert
from steca.method.encoders import HashingEncoder
from steca.method.rewards import ALFWORLD_WEIGHTS
from steca.method.trajectories import prompt_length
from steca.records import load_sft, load_steps
from eval_agent.envs import make_env
from steca.sampling.stages import mc_job

import method_fixtures as fx


def _released_prompt(instruction: str) -> list[dict]:
    example = builtin_example("alfworld")[:10]  # first observation, 4 x (action, observation), last action
    assert [m.role for m in example] == ["user"] + ["assistant", "user"] * 4 + ["assistant"]
    turns = [Message("user", instruction), Message("assistant", "OK")] + example
    return [{"role": m.role, "content": m.content} for m in turns]


def _released_records(sft_record) -> list[dict]:
    conv = [{"role": m.role, "content": m.content} for m in sft_record.conversations]
    head = _released_prompt(conv[0]["content"])
    game_steps = sum(m["role"] == "assistant" for m in conv[2:])
    out = []
    for j in range(game_steps):
        step_conv = head + conv[2:2 * j + 5]  # the task's first observation, the expert prefix, step j and its observation
        if step_conv[-1]["role"] == "assistant":  # the SFT record ends on its winning action: the engine's answer
            step_conv.append({"role": "user", "content": "Observation: You put the toiletpaper 1 in/on the toiletpaperhanger 1."})
        out.append({"id": int(sft_record.id.split("_")[-1]), "iteration": j,
                    "agent_step_output": conv[2 * j + 3]["content"], "agent_step_reward": j == game_steps - 1,
                    "agent_step_conversations": step_conv, "agent_conversations": step_conv,
                    "agent_final_reward": True, "time": 0.25, "game_file": sft_record.game_file})
    return out


def test_released_step_records_load_and_mc_replays_the_experts_own_prefix(alfworld_data: Path,
                                                                          alfworld_sft_sample: Path, tmp_path: Path):
    sft = load_sft(alfworld_sft_sample, strict=True).records[0]  # alfworld_0: its observations match the engine
    raw = _released_records(sft)
    path = tmp_path / "alfworld_traj_0.json"
    path.write_text(json.dumps(raw, indent=4))
    recs = load_steps(path, strict=True).records
    assert len(recs) == len(raw) == 5
    last = len(recs) - 1
    for r in recs:
        assert r.id == "0" and r.agent_final_reward == 1.0 and r.mc_step_reward is None
        assert r.agent_step_reward == (1.0 if r.iteration == last else 0.0)  # booleans read as 0/1
        assert r.extra["time"] == 0.25
        assert len(r.agent_step_conversations) == 12 + 1 + 2 * r.iteration + 2
        assert prompt_length(r.agent_step_conversations) == 13  # the task's first observation, not the example's

    expert_turns = [m.content for m in sft.conversations[3::2]]
    env = make_env("alfworld", "train", str(alfworld_data))
    try:
        for r in recs:
            job = mc_job(r, 2, SamplingParams(1.0))
            assert job.task_id == sft.game_file
            assert list(job.prefix) == expert_turns[:r.iteration] and job.forced_output == expert_turns[r.iteration]
            # replayed in the engine, the job's turns give exactly this game's observations
            actions = [parse_action(t) for t in [*job.prefix, job.forced_output]]
            first, outcomes = env.reset_to_prefix(job.task_id, actions)
            assert first == sft.conversations[2].content
            assert [f"Observation: {o.observation}" for o in outcomes] == \
                [m.content for m in r.agent_step_conversations[14::2]]
            assert outcomes[-1].won == (r.iteration == last)
    finally:
        env.close()


def test_released_exploration_outcomes_as_booleans(tmp_path: Path):
    rec = fx.explored_step(2, "go to shelf 1", 0.0, 0.0).to_dict()
    rec.update(agent_final_reward=False, agent_step_reward=False, id=7)
    rec.pop("monte_carlo_step_reward", None)
    path = tmp_path / "explore.json"
    path.write_text(json.dumps([rec]))
    (r,) = load_steps(path, strict=True).records
    assert r.id == "7" and r.agent_final_reward == 0.0 and r.agent_step_reward == 0.0 and r.mc_step_reward is None


def test_expert_subtrajectories_skip_steps_0_and_1_under_the_released_preset():
    """Hand-built: the expert beats the exploration clearly at every step t = 1..4, and the exploration
    from t = 0 succeeded (so no whole-trajectory pair either)."""
    sft = {"t1": fx.expert_sft()}
    expert = [fx.expert_step(t, 1.0) for t in range(5)]
    explored = [fx.explored_step(0, "go to desk 1", 1.0, 1.0, continuation=["take pen 1 from desk 1"])]
    explored += [fx.explored_step(t, "go to shelf 1", 0.0, 0.0) for t in range(1, 5)]
    released = build_expert(sft, expert, explored, HashingEncoder(), ALFWORLD_WEIGHTS)
    assert sorted(p.extra["iteration"] for p in released.pairs) == [2, 3, 4]
    assert not [p for p in released.pairs if p.extra["iteration"] <= 1]
    assert released.rejected["step_too_early"] == 1 and released.rejected["exploration_succeeded"] == 1
    every = build_expert(sft, expert, explored, HashingEncoder(), ALFWORLD_WEIGHTS, min_step=1)
    assert sorted(p.extra["iteration"] for p in every.pairs) == [1, 2, 3, 4]
