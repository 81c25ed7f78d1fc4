"""Fractional Monte Carlo step rewards end to end, on the real ALFWorld and VirtualHome engines.

The policy is :class:`coin_policy.CoinExpertPolicy`: per turn it plays the expert's next action with
probability 0.7 (a coin seeded by the row's seed) and otherwise wastes the rest of the episode on
``inventory``. So a rollout from a state k expert steps short of the goal wins with probability
0.7**k, and the 5 rollouts of one state can disagree: the stages produce step rewards strictly
between 0 and 1 (where the mean differs from the max and from the first outcome). Which rollouts win
is fixed by the engine's per-rollout seeds, so the records and the pairs built from them are pinned
exactly; every outcome is also checked against its rollout's transcript (a win means the rollout
played exactly the remaining expert actions, or the state was already won).
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from coin_policy import WASTED_ACTION, CoinExpertPolicy
from eval_agent.agents.policy import SamplingParams
from eval_agent.engine import RolloutEngine
from eval_agent.types import parse_action
from steca.method.datasets import RULE_EXPERT_WHOLE, build_calibrated, build_expert, build_explored, rule_expert_beats
from steca.method.deviation import RELEASED_RULE
from steca.method.encoders import HashingEncoder
from steca.method.reflection import OfflineReflector
from steca.method.rewards import ALFWORLD_WEIGHTS, VIRTUALHOME_WEIGHTS
from steca.method.trajectories import split_expert
from steca.records import StepRecord, load_sft, load_steps
from eval_agent.envs import make_env
from steca.sampling.stages import expert_steps, explore_steps, monte_carlo

P_WIN, N_ROLLOUTS, MAX_STEPS = 0.7, 5, 7


def _run_chain(root: Path, sft, factory) -> dict[str, dict[int, StepRecord]]:
    env = factory()
    try:
        expert_steps(sft, env, root / "expert.jsonl")
    finally:
        env.close()
    engine = RolloutEngine(CoinExpertPolicy(sft, P_WIN), factory, max_active=16, show_progress=False)
    try:
        explore_steps(sft, engine, root / "explore.jsonl", SamplingParams(0.0))
        for kind in ("expert", "explore"):
            monte_carlo(load_steps(root / f"{kind}.jsonl", strict=True).records, engine, root / f"{kind}_mc.jsonl",
                        num_rollouts=N_ROLLOUTS, params=SamplingParams(1.0), save_rollouts=True)
    finally:
        engine.close()
    return {kind: {r.iteration: r for r in load_steps(root / f"{kind}_mc.jsonl", strict=True).records}
            for kind in ("expert", "explore")}


@pytest.fixture(scope="module")
def alfworld_chain(tmp_path_factory, alfworld_data, alfworld_sft_sample):
    sft = load_sft(alfworld_sft_sample, strict=True).records[:1]  # alfworld_0: 5 expert steps
    factory = partial(make_env, "alfworld", "train", str(alfworld_data), max_steps=MAX_STEPS)
    return sft[0], _run_chain(tmp_path_factory.mktemp("frac_alf"), sft, factory)


@pytest.fixture(scope="module")
def virtualhome_chain(tmp_path_factory, virtualhome_data):
    from steca.generators.virtualhome_tasks import expert_sft_from_tasks

    root = tmp_path_factory.mktemp("frac_vh")
    lines = (virtualhome_data / "vh_seen_test.jsonl").read_text().splitlines()
    (root / "tasks.jsonl").write_text(next(ln for ln in lines if ln.strip() and str(json.loads(ln)["id"]) == "218")
                                      + "\n")  # switch on the television: 4 expert steps
    expert_sft_from_tasks(root / "tasks.jsonl", virtualhome_data, root / "sft.json")
    sft = load_sft(root / "sft.json", strict=True).records
    factory = partial(make_env, "virtualhome", "train", str(virtualhome_data), max_steps=MAX_STEPS,
                      task_file=str(root / "tasks.jsonl"))
    return sft[0], _run_chain(root, sft, factory)


def _table(chain: dict[int, StepRecord]) -> list[tuple]:
    return [(t, parse_action(r.agent_step_output), r.agent_final_reward, r.mc_step_reward, r.mc_outcomes)
            for t, r in sorted(chain.items())]


def _check_outcomes_against_transcripts(expert, chain: dict[str, dict[int, StepRecord]]) -> None:
    plan = split_expert(expert).actions()
    for kind, recs in chain.items():
        for t, r in recs.items():
            turns = r.extra["mc_rollout_turns"]
            assert len(turns) == len(r.mc_outcomes) == N_ROLLOUTS and r.extra["mc_errors"] == 0
            on_path = parse_action(r.agent_step_output) == plan[t]
            for rollout, outcome in zip(turns, r.mc_outcomes):
                actions = [parse_action(x) for x in rollout]
                if on_path and r.extra.get("step_won", False):
                    assert rollout == [] and outcome == 1.0  # an already won state ends every rollout at once
                else:
                    won = on_path and actions == plan[t + 1:]
                    assert outcome == (1.0 if won else 0.0), (kind, t, actions)
                    if not won:  # a lost rollout wasted a turn and never came back
                        assert WASTED_ACTION in actions


def test_alfworld_fractional_step_rewards(alfworld_chain):
    expert, chain = alfworld_chain
    plan = split_expert(expert).actions()
    assert _table(chain["expert"]) == [
        (0, plan[0], 1.0, 0.0, [0.0] * 5),
        (1, plan[1], 1.0, 0.8, [0.0, 1.0, 1.0, 1.0, 1.0]),
        (2, plan[2], 1.0, 0.6, [0.0, 1.0, 1.0, 1.0, 0.0]),
        (3, plan[3], 1.0, 1.0, [1.0] * 5),
        (4, plan[4], 1.0, 1.0, [1.0] * 5),  # the last step wins the game
    ]
    # explored: the policy's own step from each expert prefix (the expert's action or a wasted turn);
    # its exploration's outcome; the same state as the expert's scores the same (same job seeds)
    assert _table(chain["explore"]) == [
        (0, plan[0], 0.0, 0.0, [0.0] * 5),
        (1, plan[1], 0.0, 0.8, [0.0, 1.0, 1.0, 1.0, 1.0]),
        (2, WASTED_ACTION, 0.0, 0.0, [0.0] * 5),
        (3, plan[3], 1.0, 1.0, [1.0] * 5),
        (4, WASTED_ACTION, 0.0, 0.0, [0.0] * 5),
    ]
    _check_outcomes_against_transcripts(expert, chain)


def test_alfworld_sets_from_fractional_rewards(alfworld_chain):
    expert, chain = alfworld_chain
    sft, ex, xp = {expert.id: expert}, list(chain["expert"].values()), list(chain["explore"].values())
    cali = build_calibrated(sft, ex, xp, RELEASED_RULE, HashingEncoder(), OfflineReflector(), ALFWORLD_WEIGHTS)
    # t=2: r_explore 0 <= r_expert(1) 0.8; t=4: 0 <= r_expert(3) 1.0; t=3 is the expert's own action, its
    # exploration won and 1.0 > r_expert(2) 0.6; t < 2 skipped
    assert [(p.extra["iteration"], p.extra["r_explore"], p.extra["r_expert_prev"]) for p in cali.pairs] == [
        (2, 0.0, 0.8), (4, 0.0, 1.0)]
    assert cali.rejected == {"step_too_early": 2, "no_reward_drop": 1, "exploration_succeeded": 1,
                             "same_action": 1, "similar_action": 1}
    ds = build_expert(sft, ex, xp, HashingEncoder(), ALFWORLD_WEIGHTS)
    # t=1: 0.8 vs 0.8 and t=3: 1.0 vs 1.0 are no wins for the expert
    assert [(p.extra["iteration"], p.extra["rule"], p.extra.get("r_expert"), p.extra.get("r_explore"))
            for p in ds.pairs] == [(0, RULE_EXPERT_WHOLE, None, None), (2, rule_expert_beats(0.01), 0.6, 0.0),
                                   (4, rule_expert_beats(0.01), 1.0, 0.0)]
    assert build_explored(sft, xp, HashingEncoder(), ALFWORLD_WEIGHTS).pairs == []  # the t=0 exploration failed


def test_virtualhome_fractional_step_rewards(virtualhome_chain):
    expert, chain = virtualhome_chain
    plan = split_expert(expert).actions()
    assert _table(chain["expert"]) == [
        (0, plan[0], 1.0, 0.0, [0.0] * 5),
        (1, plan[1], 1.0, 0.8, [1.0, 1.0, 0.0, 1.0, 1.0]),
        (2, plan[2], 1.0, 0.8, [0.0, 1.0, 1.0, 1.0, 1.0]),
        (3, plan[3], 1.0, 1.0, [1.0] * 5),
    ]
    assert _table(chain["explore"]) == [
        (0, WASTED_ACTION, 0.0, 0.0, [0.0] * 5),
        (1, plan[1], 1.0, 0.8, [1.0, 1.0, 0.0, 1.0, 1.0]),  # this exploration won, 4 of its 5 rollouts too
        (2, plan[2], 0.0, 0.8, [0.0, 1.0, 1.0, 1.0, 1.0]),
        (3, WASTED_ACTION, 0.0, 0.0, [0.0] * 5),
    ]
    _check_outcomes_against_transcripts(expert, chain)


def test_virtualhome_sets_from_fractional_rewards(virtualhome_chain):
    expert, chain = virtualhome_chain
    sft, ex, xp = {expert.id: expert}, list(chain["expert"].values()), list(chain["explore"].values())
    cali = build_calibrated(sft, ex, xp, RELEASED_RULE, HashingEncoder(), OfflineReflector(), VIRTUALHOME_WEIGHTS)
    # t=3: 0 <= r_expert(2) 0.8; t=2: 0.8 - r_expert(1) 0.8 = 0 <= 0 but the expert's own action
    assert [(p.extra["iteration"], p.extra["r_explore"], p.extra["r_expert_prev"]) for p in cali.pairs] == [(3, 0.0, 0.8)]
    assert cali.rejected == {"step_too_early": 2, "same_action": 1, "similar_action": 1}
    ds = build_expert(sft, ex, xp, HashingEncoder(), VIRTUALHOME_WEIGHTS)
    assert [(p.extra["iteration"], p.extra["rule"], p.extra.get("r_expert"), p.extra.get("r_explore"))
            for p in ds.pairs] == [(0, RULE_EXPERT_WHOLE, None, None), (3, rule_expert_beats(0.01), 1.0, 0.0)]
    assert ds.rejected == {"expert_step_not_better": 1, "step_too_early": 1}  # t = 1 skipped, as released
    for p in cali.pairs + ds.pairs:
        assert p.reward == pytest.approx(1 + p.extra["distance"])  # VirtualHome's 1 + d
