"""Fixtures that separate the alternatives of the method's selection rules.

The expert step rewards increase strictly (0.2, 0.4, 0.6, 0.8, 1.0), so ``r_expert(t-1)`` and
``r_expert(t)`` always differ; explored rewards are placed between them, on them, and below them.
Each explored step is built to pass or fail exactly one condition, so comparing with ``t``
instead of ``t-1``, ``<`` instead of ``<=``, ``>=`` instead of ``>``, or dropping any condition of
D_c, D_s or D_e changes the selected set. Every test asserts the exact pairs and the rewards each used.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from steca.method.datasets import RULE_EXPERT_WHOLE, build_calibrated, build_expert, build_explored, rule_expert_beats
from steca.method.deviation import PAPER_RULE, RELEASED_RULE, DeviationConfig, find_deviations, step_conditions
from steca.method.encoders import HashingEncoder
from steca.method.reflection import OfflineReflector
from steca.method.rewards import ALFWORLD_WEIGHTS, VIRTUALHOME_WEIGHTS
from steca.records import StepRecord
from tests.method_fixtures import EXPERT_ACTIONS, explored_step, expert_sft, expert_step

EXPERT_R = [0.2, 0.4, 0.6, 0.8, 1.0]  # r_expert(t), t = 0..4: strictly increasing


def _expert(task: str, final: float | None = 1.0) -> list[StepRecord]:
    out = [expert_step(t, r, task) for t, r in enumerate(EXPERT_R)]
    for r in out:
        r.agent_final_reward = final
    return out


def _explored() -> list[StepRecord]:
    """Explored steps of tasks a, b, c (D_c) and d (D_s margins); comments: the released verdict."""
    return [
        # a: where the explored reward sits against r_expert(t-1) and r_expert(t)
        explored_step(0, "go to shelf 1", 0.0, 0.0, "a"),            # D_s whole: exploration from t=0 failed
        explored_step(1, "go to shelf 1", 0.0, 0.0, "a"),            # D_c: t < 2
        explored_step(2, "go to shelf 1", 0.5, 0.0, "a"),            # 0.4 < 0.5 < 0.6: no drop against t-1
        explored_step(3, "examine shelf 1", 0.6, 0.0, "a"),          # == r_expert(2): '<=' keeps it
        explored_step(4, "examine shelf 1", 0.2, 0.0, "a"),          # clear drop
        # b: one D_c condition each
        explored_step(0, "go to desk 1", 1.0, 1.0, "b",               # D_e: the expert's own actions, d = 0
                      continuation=EXPERT_ACTIONS[1:]),
        explored_step(2, "go to shelf 1", 0.0, 0.0, "b"),            # selected at t == min_step
        explored_step(3, "examine shelf 1", 0.0, 1.0, "b"),          # exploration succeeded
        explored_step(4, EXPERT_ACTIONS[4], 0.0, 0.0, "b"),          # the expert's action
        # c
        explored_step(0, "examine shelf 1", 1.0, 1.0, "c",            # D_e: won, but far from the expert
                      continuation=["look", "inventory", "go to shelf 1"]),
        explored_step(2, "Go To Drawer 1", 0.0, 0.0, "c"),           # differs as a string only: cos = 1
        explored_step(3, "examine shelf 1", 0.0, None, "c"),         # no exploration outcome
        explored_step(4, "examine shelf 1", 0.9, 0.0, "c"),          # 0.9 > r_expert(3) = 0.8
        # d: D_s margins (0.01) on the step reward and on the outcome
        explored_step(2, "go to shelf 1", 0.595, 0.0, "d"),          # expert better by 0.005 only
        explored_step(3, "go to shelf 1", 0.0, 0.995, "d"),          # outcome better by 0.005 only
        explored_step(4, "go to shelf 1", 0.97, 0.0, "d"),           # expert better by 0.03
    ]


def _experts() -> list[StepRecord]:
    return [r for task in "abcd" for r in _expert(task)]


def _sft() -> dict:
    return {task: expert_sft(task) for task in "abcd"}


def _dc(cfg: DeviationConfig) -> list[tuple[str, int, float, float]]:
    res = find_deviations(_experts(), [r for r in _explored() if r.id != "d"], cfg, HashingEncoder())
    return [(d.task_id, d.t, d.explore_reward, d.expert_prev_reward) for d in res.deviations]


# ------------------------------------------------------------------ D_c: the deviation rule
def test_released_rule_compares_with_the_previous_expert_step_and_keeps_equality():
    res = find_deviations(_experts(), [r for r in _explored() if r.id != "d"], RELEASED_RULE, HashingEncoder())
    assert [(d.task_id, d.t, d.explore_reward, d.expert_prev_reward) for d in res.deviations] == [
        ("a", 3, 0.6, 0.6), ("a", 4, 0.2, 0.8), ("b", 2, 0.0, 0.4)]
    assert [(d.explored_action, d.expert_action) for d in res.deviations] == [
        ("examine shelf 1", EXPERT_ACTIONS[3]), ("examine shelf 1", EXPERT_ACTIONS[4]),
        ("go to shelf 1", EXPERT_ACTIONS[2])]
    assert all(d.similarity is not None and d.similarity < 0.95 for d in res.deviations)
    assert res.candidates == 13
    # t = 0 and t = 1 of a, b, c are too early; every other candidate fails exactly the named conditions
    assert res.rejected == Counter({"step_too_early": 4, "no_reward_drop": 2, "exploration_succeeded": 2,
                                    "similar_action": 2, "same_action": 1})


@pytest.mark.parametrize("change,expected", [
    (dict(delta=-0.05), [("a", 4), ("b", 2)]),                          # the equal case a3 drops out
    (dict(delta=0.1), [("a", 2), ("a", 3), ("a", 4), ("b", 2), ("c", 4)]),  # 0.5-0.4 and 0.9-0.8 (< 0.1 in floats)
    (dict(min_step=1), [("a", 1), ("a", 3), ("a", 4), ("b", 2)]),
    (dict(min_step=3), [("a", 3), ("a", 4)]),
    (dict(require_exploration_failed=False), [("a", 3), ("a", 4), ("b", 2), ("b", 3), ("c", 3)]),
    (dict(max_similarity=None), [("a", 3), ("a", 4), ("b", 2), ("c", 2)]),
    (dict(require_action_differs=False), [("a", 3), ("a", 4), ("b", 2)]),   # b4: cos = 1 still drops it
    (dict(require_action_differs=False, max_similarity=None), [("a", 3), ("a", 4), ("b", 2), ("b", 4), ("c", 2)]),
    (dict(max_similarity=1.0), [("a", 3), ("a", 4), ("b", 2)]),             # cos < 1.0: c2's cos is 1
    (dict(first_only=True), [("a", 3), ("b", 2)]),
])
def test_each_condition_of_the_deviation_rule_changes_the_set(change, expected):
    assert [(task, t) for task, t, _, _ in _dc(replace(RELEASED_RULE, **change))] == expected


def test_paper_rule_on_the_separating_fixture():
    # no extra filters, t >= 1, first deviated step per task
    assert _dc(PAPER_RULE) == [("a", 1, 0.0, 0.2), ("b", 2, 0.0, 0.4), ("c", 2, 0.0, 0.4)]


def test_calibrated_pairs_carry_the_rewards_that_selected_them():
    res = build_calibrated(_sft(), _experts(), [r for r in _explored() if r.id != "d"], RELEASED_RULE,
                           HashingEncoder(), OfflineReflector(), ALFWORLD_WEIGHTS)
    assert [(p.id, p.extra["r_explore"], p.extra["r_expert_prev"]) for p in res.pairs] == [
        ("a_calibrated_3", 0.6, 0.6), ("a_calibrated_4", 0.2, 0.8), ("b_calibrated_2", 0.0, 0.4)]
    for p in res.pairs:
        t = p.extra["iteration"]
        assert p.chosen[0].content.endswith(f"\nAction: {EXPERT_ACTIONS[t]}")
        assert p.reward == pytest.approx(1 + 0.01 * p.extra["distance"]) and p.extra["distance"] > 0
    assert res.counts["candidates"] == 13 and res.counts["deviated"] == 3 and res.counts["pairs"] == 3


# ------------------------------------------------------------------ D_s: expert sub-trajectories
def test_expert_set_needs_both_the_step_reward_and_the_outcome_to_be_better():
    # min_step=1 so that t = 1 is judged too (the released preset skips it: tests/test_released_compat.py)
    res = build_expert(_sft(), _experts(), _explored(), HashingEncoder(), ALFWORLD_WEIGHTS, min_step=1)
    got = [(p.id, p.extra["rule"], p.extra.get("r_expert"), p.extra.get("r_explore")) for p in res.pairs]
    beats = rule_expert_beats(0.01)
    assert got == [
        ("a_expert_0", RULE_EXPERT_WHOLE, None, None),
        ("a_expert_1", beats, 0.4, 0.0),
        ("a_expert_2", beats, 0.6, 0.5),   # 0.5 lies between r_expert(1) and r_expert(2): D_s compares with t
        ("a_expert_3", beats, 0.8, 0.6),
        ("a_expert_4", beats, 1.0, 0.2),
        ("b_expert_2", beats, 0.6, 0.0),
        ("b_expert_4", beats, 1.0, 0.0),
        ("c_expert_2", beats, 0.6, 0.0),
        ("c_expert_4", beats, 1.0, 0.9),
        ("d_expert_4", beats, 1.0, 0.97),
    ]
    assert res.rejected == Counter({"exploration_succeeded": 2,        # b0, c0 won from the start
                                    "expert_outcome_not_better": 2,    # b3 (1 vs 1), d3 (1 vs 0.995)
                                    "missing_explore_reward": 1,       # c3 has no outcome
                                    "expert_step_not_better": 1})      # d2 (0.6 vs 0.595)
    for p in res.pairs:
        assert p.reward == pytest.approx(1 + 0.01 * p.extra["distance"])


def test_expert_set_margins_are_strict():
    explored = [explored_step(4, "go to shelf 1", 0.5, 0.0, "a"),   # step reward better by exactly 0.5
                explored_step(3, "go to shelf 1", 0.0, 0.5, "a"),   # outcome better by exactly 0.5
                explored_step(2, "go to shelf 1", 0.0, 0.0, "a")]   # better by 0.6 and 1
    res = build_expert(_sft(), _expert("a"), explored, HashingEncoder(), ALFWORLD_WEIGHTS, margin=0.5)
    assert [p.id for p in res.pairs] == ["a_expert_2"]
    assert res.rejected == Counter({"expert_step_not_better": 1, "expert_outcome_not_better": 1})


def test_expert_outcome_defaults_to_success_and_a_failed_expert_never_wins():
    explored = [explored_step(2, "go to shelf 1", 0.0, 0.0, "a")]
    unknown = build_expert(_sft(), _expert("a", final=None), explored, HashingEncoder(), ALFWORLD_WEIGHTS)
    assert [p.id for p in unknown.pairs] == ["a_expert_2"]
    failed = build_expert(_sft(), _expert("a", final=0.0), explored, HashingEncoder(), ALFWORLD_WEIGHTS)
    assert failed.pairs == [] and failed.rejected == Counter({"expert_outcome_not_better": 1})


# ------------------------------------------------------------------ D_e: explored successes
def test_explored_set_keeps_close_successes_from_the_start_only():
    res = build_explored(_sft(), _explored(), HashingEncoder(), ALFWORLD_WEIGHTS)
    assert [p.id for p in res.pairs] == ["b_explored_0"]
    p = res.pairs[0]
    assert p.extra["distance"] == pytest.approx(0.0, abs=1e-9) and p.reward == pytest.approx(1.0)
    assert [m.content for m in p.rejected] == [m.content for m in expert_sft("b").conversations[3:]]
    # a0 failed; c0 won far from the expert; the successes at t > 0 (b3) are no candidates
    assert res.counts["candidates"] == 3
    assert res.rejected == Counter({"exploration_failed": 1, "distance_too_large": 1})
    assert len(res.distances) == 2 and res.distances[1] > 0.013
    # VirtualHome's threshold (d < 1e-22) keeps only an exact match (d is -1.6e-17 here: float rounding)
    vh = build_explored(_sft(), _explored(), HashingEncoder(), VIRTUALHOME_WEIGHTS)
    assert [q.id for q in vh.pairs] == ["b_explored_0"] and vh.pairs[0].reward == pytest.approx(1.0)
    assert vh.rejected == Counter({"exploration_failed": 1, "distance_too_large": 1})


# ------------------------------------------------------------------ labels, counters and edge cases
def test_rule_names_spell_every_condition():
    assert RELEASED_RULE.rule_name() == ("r_explore(t)-r_expert(t-1)<=0 & exploration_failed & action_differs & "
                                         "cos<0.95 & t>=2 & every_deviated_step")
    assert PAPER_RULE.rule_name() == "r_explore(t)-r_expert(t-1)<=0 & t>=1 & first_deviated_step"
    assert rule_expert_beats(0.01) == "r_expert(t)-r_explore(t)>0.01 & R_expert-R_explore>0.01"


def test_step_conditions_name_each_failed_condition():
    cfg = RELEASED_RULE
    assert step_conditions(2, 0.0, 0.4, 0.0, "go to drawer 1", "go to shelf 1", 0.5, cfg) == []
    assert step_conditions(1, 0.0, 0.4, 0.0, "go to drawer 1", "go to shelf 1", 0.5, cfg) == ["step_too_early"]
    assert step_conditions(2, 0.5, 0.4, 1.0, "a", "a", 1.0, cfg) == [
        "no_reward_drop", "exploration_succeeded", "same_action", "similar_action"]
    assert step_conditions(2, 0.4, 0.4, None, " a", "a ", 0.95, cfg) == [
        "exploration_succeeded", "same_action", "similar_action"]
    # an unparsed explored action is never "the same action"; no similarity: the filter does not apply
    assert step_conditions(2, 0.0, 0.4, 0.0, "a", None, None, cfg) == []


def test_tasks_in_natural_order_and_counters_per_record():
    explored = [explored_step(2, "go to shelf 1", 0.0, 0.0, task) for task in ("t10", "t9", "t2")]
    experts = [r for task in ("t10", "t9", "t2") for r in _expert(task)]
    res = find_deviations(experts, explored, RELEASED_RULE, HashingEncoder())
    assert [d.task_id for d in res.deviations] == ["t2", "t9", "t10"]
    # records without the rewards they need are counted one by one and do not stop their task
    no_reward = [explored_step(t, "go to shelf 1", 0.0, 0.0, "a") for t in (2, 3)]
    for r in no_reward:
        r.mc_step_reward = None
    unscored_expert = _expert("b")
    unscored_expert[1].mc_step_reward = unscored_expert[2].mc_step_reward = None
    no_action = [explored_step(t, "go to shelf 1", 0.0, 0.0, "c") for t in (2, 4)]  # no expert step 2 or 4
    res = find_deviations(
        _expert("a") + unscored_expert + [r for r in _expert("c") if r.iteration in (0, 1, 3)],
        no_reward + [explored_step(4, "examine shelf 1", 0.0, 0.0, "a")]
        + [explored_step(t, "go to shelf 1", 0.0, 0.0, "b") for t in (2, 3, 4)] + no_action,
        RELEASED_RULE, HashingEncoder())
    assert [(d.task_id, d.t) for d in res.deviations] == [("a", 4), ("b", 4)]
    assert res.rejected == Counter({"missing_explore_reward": 2, "missing_expert_reward": 2, "missing_expert_action": 2})


def test_an_explored_turn_without_action_is_dissimilar():
    from eval_agent.types import Message

    rec = explored_step(2, "go to shelf 1", 0.0, 0.0, "a")
    rec.agent_step_conversations[-2] = Message("assistant", "Thought: I do not know.")
    rec.agent_step_output = "Thought: I do not know."
    (d,) = find_deviations(_expert("a"), [rec], RELEASED_RULE, HashingEncoder()).deviations
    assert (d.explored_action, d.similarity) == (None, 0.0)
    (d,) = find_deviations(_expert("a"), [explored_step(2, "go to shelf 1", 0.0, 0.0, "a")],
                           replace(RELEASED_RULE, max_similarity=None), None).deviations
    assert d.similarity is None
    with pytest.raises(ValueError, match="^the similarity filter needs an action encoder$"):
        find_deviations([], [], RELEASED_RULE, None)


# ------------------------------------------------------------------ cutting chats, DTW corner cases
def test_prompt_length_and_step_pairing():
    from eval_agent.types import Message
    from steca.method.trajectories import prompt_length, split_steps

    u, a = (lambda c: Message("user", c)), (lambda c: Message("assistant", c))
    assert prompt_length([u("instr"), a("OK"), u("obs"), a("Action: go")]) == 3
    assert prompt_length([u("instr"), a("OK"), u("obs")]) == 3
    # the STeCa layout decides, not the first acting turn (an assistant turn without an action comes first)
    assert prompt_length([u("instr"), a("OK"), u("obs"), a("no action"), u("x"), a("Action: go")]) == 3
    assert prompt_length([u("instr"), a("Action: go"), u("obs")]) == 1  # no "OK": the first acting turn
    assert prompt_length([a("OK"), u("instr"), a("hmm"), u("x"), a("Action: go")]) == 4
    assert prompt_length([u("Action: not an assistant"), a("no action")]) == 2
    assert prompt_length([u("a"), u("b"), a("Action: go")]) == 2
    steps = split_steps([u("x"), a("Action: a"), u("o1"), a("Action: b"), a("Action: c"), u("o3"), u("extra"), a("Action: d")])
    assert [(s.action, s.observation.content if s.observation else None) for s in steps] == [
        ("a", "o1"), ("b", None), ("c", "o3"), ("d", None)]


def test_dtw_with_a_zero_vector_and_integer_inputs():
    import math

    import numpy as np

    from steca.method.dtw import cosine_cost_matrix, dtw_distance

    cost = cosine_cost_matrix(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[3, 4]]))
    np.testing.assert_allclose(cost, [[1.0], [0.0]], atol=1e-12)  # a zero vector is at cosine 0 from anything
    assert cost.dtype == np.float64
    assert dtw_distance([[1, 0], [0, 1]], [[0, 1]]) == pytest.approx(1.0 / math.sqrt(5))
