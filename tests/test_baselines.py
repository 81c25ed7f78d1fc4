"""The baselines' data builders (RFT, ETO, IPR) and losses (DPO, IPR's mixture) on hand-built fixtures.

Two tasks. Task ``t1``: the agent's exploration from the start succeeds. Task ``t2``: it fails.
Expert step rewards rise strictly (0.2, 0.4, 0.6, 0.8, 1.0), so IPR's rule, which compares the agent's
step with the expert's step in the same state (``r_expert(t)``), picks different steps than STeCa's
deviation rule, which compares with the value before the step (``r_expert(t-1)``).
"""
from __future__ import annotations

import math

import pytest
import torch

from steca.method.baselines import (LEVEL_OUTCOME, LEVEL_SFT, LEVEL_STEP, RULE_OUTCOME, RULE_RFT_EXPERT,
                                    RULE_RFT_SUCCESS, RULE_SFT, IPRConfig, build_eto, build_ipr, build_rft, rule_step_short)
from steca.training.preference_losses import (LEVEL_CODES, dpo_loss, ipr_loss, level_scales, token_mean_nll)
from tests.method_fixtures import (EXPERT_ACTIONS, INSTRUCTION, expert_prefix, expert_sft, expert_step, explored_step,
                                   obs, prompt, turn)

EXPERT_R = [0.2, 0.4, 0.6, 0.8, 1.0]


def _sft():
    return {"t1": expert_sft("t1"), "t2": expert_sft("t2")}


def _expert_steps():
    return [expert_step(t, r, task) for task in ("t1", "t2") for t, r in enumerate(EXPERT_R)]


def _explored():
    """(task, t, action, r_explore(t), R_explore(t)); what each rule makes of it is in the tests."""
    rows = [
        ("t1", 0, "go to desk 1", 1.0, 1.0),      # success from the start: RFT keeps it; no ETO pair
        ("t1", 1, "go to shelf 1", 0.3, 0.0),     # 0.3 < r_expert(1)=0.4: IPR step pair (not < r_expert(0)=0.2)
        ("t1", 2, "go to shelf 1", 0.5, 0.0),     # 0.5 < 0.6: IPR step pair
        ("t1", 3, "open drawer 1", 0.8, 1.0),     # 0.8 = 0.8: not worse; success after an expert prefix
        ("t2", 0, "examine shelf 1", 0.0, 0.0),   # failure from the start: ETO pair, IPR outcome pair
        ("t2", 2, "go to shelf 1", 0.7, 0.0),     # 0.7 > 0.6: not worse
        ("t2", 4, "look", 0.0, 0.0),              # 0.0 < 1.0: IPR step pair
    ]
    return [explored_step(t, a, r, f, task, continuation=["inventory"]) for task, t, a, r, f in rows]


# ---------------------------------------------------------------- RFT
def test_rft_expert_plus_successes_from_the_start():
    res = build_rft(_sft(), _explored())
    assert [r.id for r in res.records] == ["t1", "t2", "t1_rft_0"]
    assert [r.extra["rule"] for r in res.records] == [RULE_RFT_EXPERT, RULE_RFT_EXPERT, RULE_RFT_SUCCESS]
    conv = res.records[2].conversations
    assert conv[:3] == prompt()
    assert [m.content for m in conv[3::2]] == [turn("go to desk 1", "my own idea").content,
                                               turn("inventory", "exploring").content]
    assert res.rejected == {"not_from_start": 5, "exploration_failed": 1}


def test_rft_successes_after_an_expert_prefix_and_dedupe():
    res = build_rft(_sft(), _explored(), from_start_only=False)
    assert [r.id for r in res.records] == ["t1", "t2", "t1_rft_0", "t1_rft_3"]
    conv = res.records[3].conversations
    assert conv[:len(expert_prefix(3))] == expert_prefix(3)
    assert conv[len(expert_prefix(3))].content.endswith("Action: open drawer 1")
    assert res.rejected["exploration_failed"] == 5
    again = build_rft(_sft(), _explored() + _explored()[:1])
    assert len(again.records) == 3 and again.rejected["duplicate_trajectory"] == 1


# ---------------------------------------------------------------- ETO
def test_eto_pairs_expert_against_failed_exploration():
    res = build_eto(_sft(), _explored())
    assert [p.id for p in res.records] == ["t2_eto_outcome"]
    p = res.records[0]
    assert p.prompt == prompt()
    assert p.chosen == expert_sft("t2").conversations[3:]
    assert p.rejected[0].content.endswith("Action: examine shelf 1")
    assert p.reward == 1.0 and p.extra["rule"] == RULE_OUTCOME
    assert res.rejected == {"exploration_succeeded": 1}


def test_eto_needs_an_outcome():
    rec = explored_step(0, "look", 0.0, 0.0, "t2")
    rec.agent_final_reward = None
    res = build_eto(_sft(), [rec])
    assert res.records == [] and res.rejected == {"missing_outcome": 1}


# ---------------------------------------------------------------- IPR
def test_ipr_step_rule_compares_with_the_expert_step_in_the_same_state():
    res = build_ipr(_sft(), _expert_steps(), _explored())
    by_level = {lv: [p.id for p in res.records if p.extra["level"] == lv] for lv in (LEVEL_OUTCOME, LEVEL_STEP, LEVEL_SFT)}
    assert by_level == {LEVEL_OUTCOME: ["t2_ipr_outcome"],
                        LEVEL_STEP: ["t1_ipr_step_1", "t1_ipr_step_2", "t2_ipr_step_4"],
                        LEVEL_SFT: ["t1_ipr_sft", "t2_ipr_sft"]}
    assert res.rejected == {"step_too_early": 2, "agent_step_not_worse": 2, "exploration_succeeded": 1}
    p = next(p for p in res.records if p.id == "t1_ipr_step_2")
    assert p.prompt == expert_prefix(2)
    assert p.chosen == expert_sft("t1").conversations[len(expert_prefix(2)):]
    assert p.chosen[0].content.endswith(f"Action: {EXPERT_ACTIONS[2]}")
    assert p.rejected[0].content.endswith("Action: go to shelf 1") and p.rejected[-2].content.endswith("inventory")
    assert (p.extra["r_expert"], p.extra["r_explore"], p.extra["rule"]) == (0.6, 0.5, rule_step_short(0.0))
    sft_rec = next(p for p in res.records if p.id == "t1_ipr_sft")
    assert sft_rec.prompt == prompt() and sft_rec.rejected == [] and sft_rec.chosen == expert_sft("t1").conversations[3:]


def test_ipr_margin_and_parts():
    res = build_ipr(_sft(), _expert_steps(), _explored(), IPRConfig(margin=0.15, outcome_level=False, sft_level=False))
    assert [p.id for p in res.records] == ["t2_ipr_step_4"]  # 0.1 gaps at t1 steps 1 and 2 do not exceed 0.15
    missing = build_ipr(_sft(), _expert_steps()[:2], _explored(), IPRConfig(outcome_level=False, sft_level=False))
    assert [p.id for p in missing.records] == ["t1_ipr_step_1"]
    assert missing.rejected["missing_expert_reward"] == 4  # t1 steps 2, 3 and t2 steps 2, 4


def test_missing_expert_trajectory_is_a_problem_not_a_crash():
    res = build_ipr({"t1": expert_sft("t1")}, _expert_steps(), _explored(), IPRConfig(sft_level=False))
    assert {p["id"] for p in res.problems} == {"t2"} and res.counts["problem:missing_expert_trajectory"] == 2


# ---------------------------------------------------------------- losses
def test_dpo_loss_value_and_gradient_by_hand():
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    rc, rr = torch.tensor([-4.0]), torch.tensor([-4.0])
    loss = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # margin = (-3 + 4) - (-5 + 4) = 2;  l = -log sigmoid(1) = log(1 + e^-1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    loss.sum().backward()
    # dl/d lp_w = -beta * sigmoid(-beta * margin) = -0.5 / (1 + e)
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.e), rel=1e-6)
    assert pr.grad.item() == pytest.approx(0.5 / (1 + math.e), rel=1e-6)
    with pytest.raises(ValueError, match=r"^DPO needs beta > 0, got 0.0$"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)


def test_token_mean_nll_by_hand():
    lp = torch.tensor([-6.0, -1.0], requires_grad=True)
    out = token_mean_nll(lp, torch.tensor([3, 0]))
    assert out.tolist() == pytest.approx([2.0, 1.0])  # an empty continuation counts as one token
    out.sum().backward()
    assert lp.grad.tolist() == pytest.approx([-1 / 3, -1.0])


def test_level_scales_make_the_batch_mean_estimate_the_sum_of_levels():
    assert level_scales({"outcome": 1, "step": 2, "sft": 1}) == {"outcome": 4.0, "step": 2.0, "sft": 4.0}
    assert level_scales({"outcome": 0, "step": 3, "sft": 1}, {"sft": 0.5}) == {"step": 4 / 3, "sft": 2.0}
    with pytest.raises(ValueError, match=r"^unknown IPR level 'token' \(expected one of \['outcome', 'sft', 'step'\]\)$"):
        level_scales({"token": 1})


def test_ipr_loss_value_and_gradient_by_hand():
    levels = torch.tensor([LEVEL_CODES["outcome"], LEVEL_CODES["step"], LEVEL_CODES["sft"]])
    scales = torch.tensor([4.0, 2.0, 4.0])
    pc = torch.tensor([-3.0, -2.0, -6.0], requires_grad=True)
    pr = torch.tensor([-5.0, -2.0, 0.0], requires_grad=True)
    rc, rr = torch.tensor([-4.0, -2.0, -9.0]), torch.tensor([-4.0, -2.0, 0.0])
    out = ipr_loss(levels, scales, pc, pr, rc, rr, torch.tensor([7, 5, 3]), beta=0.5)
    l_o, l_s, l_sft = math.log(1 + math.exp(-1)), math.log(2), 6 / 3
    assert out.per_record.tolist() == pytest.approx([l_o, l_s, l_sft], rel=1e-6)
    assert out.loss.item() == pytest.approx((4 * l_o + 2 * l_s + 4 * l_sft) / 3, rel=1e-6)
    assert out.level_means == pytest.approx({"outcome": l_o, "step": l_s, "sft": l_sft})
    out.loss.backward()
    s = 1 / (1 + math.e)  # sigmoid(-beta * margin) of the outcome pair (margin 2); 0.5 for the step pair (margin 0)
    assert pc.grad.tolist() == pytest.approx([4 / 3 * -0.5 * s, 2 / 3 * -0.5 * 0.5, 4 / 3 * -1 / 3], rel=1e-6)
    assert pr.grad.tolist() == pytest.approx([4 / 3 * 0.5 * s, 2 / 3 * 0.5 * 0.5, 0.0], rel=1e-6)


# ---------------------------------------------------------------- counts, problems and written fields
def _bad(rec):
    """A step record whose ``agent_step_conversations`` does not end with the step's assistant turn."""
    rec.agent_step_conversations = expert_prefix(rec.iteration) + [obs("Nothing happens.")]
    return rec


def _sft_with_t4_sharegpt():
    t4 = expert_sft("t4")
    t4.style = "sharegpt"  # a released-format expert file: RFT writes its trajectory back in that style
    return {**_sft(), "t4": t4}


def test_rft_counts_every_candidate_and_reports_each_bad_record(caplog):
    explored = _explored() + _explored()[:1] * 2 + [
        _bad(explored_step(1, "go to shelf 1", 0.0, 1.0, "t2")),   # success, but its step turn is missing
        explored_step(1, "look", 0.0, 1.0, "t3"),                   # success on a task with no expert trajectory
        explored_step(3, "open drawer 1", 0.8, 1.0, "t4"),          # success after the expert prefix
    ]
    with caplog.at_level("WARNING", logger="steca.method.baselines"):
        res = build_rft(_sft_with_t4_sharegpt(), explored, from_start_only=False)
    assert [r.id for r in res.records] == ["t1", "t2", "t4", "t1_rft_0", "t1_rft_3", "t4_rft_3"]
    assert res.summary() == {
        "records": 6,
        "counts": {"rule:" + RULE_RFT_EXPERT: 3, "rule:" + RULE_RFT_SUCCESS: 3, "candidates": 12,
                   "problem:bad_step_record": 1, "problem:missing_expert_trajectory": 1, "records": 6},
        "turned_away": {"duplicate_trajectory": 2, "exploration_failed": 5},
        "problems": 2}
    assert [(p["kind"], p["id"], p["iteration"]) for p in res.problems] == [
        ("bad_step_record", "t2", 1), ("missing_expert_trajectory", "t3", 1)]
    assert "'agent_step_conversations'" in res.problems[0]["error"]
    assert [r.getMessage() for r in caplog.records] == [
        f"bad_step_record: task t2 step 1: {res.problems[0]['error']}",
        "missing_expert_trajectory: task t3 step 1: no expert trajectory with this id in the SFT file"]
    expert_t4, explored_t4 = res.records[2].to_dict(), res.records[5].to_dict()
    assert expert_t4["conversations"][0] == {"from": "human", "value": INSTRUCTION}
    assert {k: v for k, v in expert_t4.items() if k != "conversations"} == {
        "id": "t4", "game_file": "games/t4/game.tw-pddl", "source_id": "t4", "set": "rft", "rule": RULE_RFT_EXPERT}
    assert explored_t4["conversations"][0] == {"role": "user", "content": INSTRUCTION}
    assert {k: v for k, v in explored_t4.items() if k != "conversations"} == {
        "id": "t4_rft_3", "game_file": "games/t4/game.tw-pddl", "source_id": "t4", "iteration": 3, "set": "rft",
        "rule": RULE_RFT_SUCCESS}


def test_outcome_pairs_count_candidates_and_report_each_bad_record():
    no_outcome = [explored_step(0, "look", 0.0, 0.0, task) for task in ("t0", "t6")]
    for rec in no_outcome:
        rec.agent_final_reward = None
    explored = _explored() + no_outcome + [
        explored_step(0, "look", 0.0, 0.0, "t3"),              # failed, no expert trajectory
        _bad(explored_step(0, "look", 0.0, 0.0, "t4")),        # failed, its step turn is missing
        explored_step(0, "examine shelf 1", 0.0, 0.5, "t5"),   # a partial outcome below 1 is a failure
        explored_step(0, "go to desk 1", 1.0, 1.0, "t7"),      # succeeded
    ]
    sft = {**_sft(), "t4": expert_sft("t4"), "t5": expert_sft("t5"), "t7": expert_sft("t7")}
    for build, set_name in ((build_eto, "eto"), (lambda s, e: build_ipr(s, [], e, IPRConfig(step_level=False,
                                                                                             sft_level=False)), "ipr")):
        res = build(sft, explored)
        assert [p.id for p in res.records] == [f"t2_{set_name}_outcome", f"t5_{set_name}_outcome"]
        assert [(p["kind"], p["id"], p["iteration"]) for p in res.problems] == [
            ("missing_expert_trajectory", "t3", 0), ("bad_step_record", "t4", 0)]
        assert res.problems[0]["error"] == "no expert trajectory with this id in the SFT file"
        assert "'agent_step_conversations'" in res.problems[1]["error"]
        assert res.counts["outcome_candidates"] == 8 and res.counts["rule:" + RULE_OUTCOME] == 2
        assert res.counts["records"] == 2 and res.rejected == {"exploration_succeeded": 2, "missing_outcome": 2}
        pair = res.records[1].to_dict()
        assert pair["chosen"] == [m.to_dict() for m in expert_sft("t5").conversations[3:]]
        assert {k: v for k, v in pair.items() if k not in ("prompt", "chosen", "rejected")} == {
            "id": f"t5_{set_name}_outcome", "reward": 1.0, "set": set_name, "rule": RULE_OUTCOME, "source_id": "t5",
            "iteration": 0, "game_file": "games/t5/game.tw-pddl", "r_explore_outcome": 0.5,
            **({"level": LEVEL_OUTCOME} if set_name == "ipr" else {})}


def test_ipr_step_pairs_count_candidates_and_report_each_bad_record():
    no_reward = [explored_step(2, "look", 0.0, 0.0, task) for task in ("t1", "t2")]
    for rec in no_reward:
        rec.mc_step_reward = None
    explored = [explored_step(1, "go to shelf 1", 0.3, 0.0, "t1"), no_reward[0],
                _bad(explored_step(3, "look", 0.1, 0.0, "t1")),   # worse than the expert, its step turn is missing
                explored_step(4, "look", 0.0, 0.0, "t1"), no_reward[1],
                explored_step(4, "look", 0.0, 0.0, "t2"),         # worse, but t2 has no expert trajectory
                explored_step(4, "look", 0.0, 0.0, "t3")]
    expert = [expert_step(t, r, task) for task in ("t1", "t2", "t3") for t, r in enumerate(EXPERT_R)]
    res = build_ipr({"t1": expert_sft("t1"), "t3": expert_sft("t3")}, expert, explored,
                    IPRConfig(outcome_level=False, sft_level=False))
    assert [p.id for p in res.records] == ["t1_ipr_step_1", "t1_ipr_step_4", "t3_ipr_step_4"]
    assert [(p["kind"], p["id"], p["iteration"]) for p in res.problems] == [
        ("bad_step_record", "t1", 3), ("missing_expert_trajectory", "t2", 4)]
    assert "'agent_step_conversations'" in res.problems[0]["error"]
    assert res.counts["step_candidates"] == 7 and res.counts["rule:" + rule_step_short(0.0)] == 3
    assert res.rejected == {"missing_explore_reward": 2}
    pair = res.records[0].to_dict()
    assert {k: v for k, v in pair.items() if k not in ("prompt", "chosen", "rejected")} == {
        "id": "t1_ipr_step_1", "reward": 1.0, "set": "ipr", "level": LEVEL_STEP, "rule": rule_step_short(0.0),
        "source_id": "t1", "iteration": 1, "game_file": "games/t1/game.tw-pddl", "r_expert": 0.4, "r_explore": 0.3}
    assert res.counts["level:step"] == 3 and res.counts["level:outcome"] == 0 and res.counts["records"] == 3


def test_ipr_sft_part_records():
    res = build_ipr(_sft(), [], [], IPRConfig(outcome_level=False, step_level=False))
    assert [r.to_dict() for r in res.records] == [
        {"id": f"{task}_ipr_sft", "prompt": [m.to_dict() for m in prompt()],
         "chosen": [m.to_dict() for m in expert_sft(task).conversations[3:]], "rejected": [], "reward": 1.0,
         "set": "ipr", "level": LEVEL_SFT, "rule": RULE_SFT, "source_id": task, "iteration": 0,
         "game_file": f"games/{task}/game.tw-pddl"} for task in ("t1", "t2")]
    assert res.counts == {"rule:" + RULE_SFT: 2, "level:sft": 2, "level:step": 0, "level:outcome": 0, "records": 2}
