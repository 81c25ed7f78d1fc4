"""Dataset builders (D_c, D_e, D_s), reflection plumbing, the merged file and the CLI outputs."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Sequence

import pytest

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.types import Message
from steca.collection.collect_cli import main as collect_main
from steca.method.datasets import (RULE_EXPERT_WHOLE, build_calibrated, build_expert, build_explored,
                                   rule_expert_beats)
from steca.method.deviation import RELEASED_RULE
from steca.method.dtw import trajectory_distance
from steca.method.encoders import ENCODER_THRESHOLDS, HashingEncoder
from steca.method.reflection import (OfflineReflector, PolicyReflector, ReflectionCache, ReflectionRequest,
                                     parse_reflection, reflection_prompt)
from steca.method.rewards import ALFWORLD_WEIGHTS, WeightScheme
from steca.records import load_pairs, write_records
from image_checks import colored_fraction
from tests.method_fixtures import (EXPERT_ACTIONS, EXPERT_OBS, explored_fixture, explored_step, expert_prefix, expert_step,
                                   expert_rewards, expert_sft, turn)


class ScriptedPolicy(Policy):
    """Replies from a function of the prompt; counts calls (for cache tests of pure plumbing)."""

    def __init__(self, reply):
        self.reply = reply
        self.calls = 0

    def generate(self, batch: Sequence[Sequence[Message]], params: SamplingParams) -> list[str]:
        self.calls += 1
        return [self.reply(list(m)) for m in batch]


def test_calibrated_pair_structure():
    sft = {"t1": expert_sft()}
    res = build_calibrated(sft, expert_rewards(), list(explored_fixture().values()), RELEASED_RULE,
                           HashingEncoder(), OfflineReflector(), ALFWORLD_WEIGHTS)
    assert [p.id for p in res.pairs] == ["t1_calibrated_2", "t1_calibrated_4"]
    p = res.pairs[0]
    # prompt = expert prefix of step 2 + the deviated turn and its observation
    assert p.prompt[:-2] == expert_prefix(2)
    assert p.prompt[-2].content.endswith("Action: go to shelf 1")
    assert p.prompt[-1].content == "Observation: Nothing happens."
    # chosen = reflective turn ending in the expert action, then the expert suffix
    assert p.chosen[0].role == "assistant" and p.chosen[0].content.startswith("Thought: ")
    assert p.chosen[0].content.endswith(f"\nAction: {EXPERT_ACTIONS[2]}")
    assert p.chosen[1].content == f"Observation: {EXPERT_OBS[2]}"
    assert [m.content for m in p.chosen[2:]] == [m.content for m in expert_sft().conversations[3 + 6:]]
    # rejected = the exploration after the deviated step
    assert [m.content for m in p.rejected if m.role == "assistant"] == [turn("look", "exploring").content,
                                                                        turn("inventory", "exploring").content]
    d = trajectory_distance(p.chosen, p.rejected, HashingEncoder())
    assert p.extra["distance"] == pytest.approx(d) and p.reward == pytest.approx(1 + 0.01 * d)
    assert p.extra["set"] == "calibrated" and p.extra["rule"] == RELEASED_RULE.rule_name()
    assert p.extra["reflection_stand_in"] is True and p.extra["reflection_source"] == "offline-stand-in"
    assert res.problems == []


def test_policy_reflection_overrides_action_and_uses_cache(tmp_path):
    policy = ScriptedPolicy(lambda m: "Thought: I went the wrong way; the drawer is where the pen goes.\nAction: jump")
    cache = ReflectionCache(tmp_path / "cache.jsonl")
    refl = PolicyReflector(policy, "scripted", cache=cache, batch_size=1)
    sft = {"t1": expert_sft()}
    args = (sft, expert_rewards(), list(explored_fixture().values()), RELEASED_RULE, HashingEncoder())
    res = build_calibrated(*args, refl, ALFWORLD_WEIGHTS)
    refl.close()
    assert policy.calls == 2
    assert res.pairs[0].chosen[0].content == ("Thought: I went the wrong way; the drawer is where the pen goes.\n"
                                              f"Action: {EXPERT_ACTIONS[2]}")
    # a rerun with the cache on disk costs no call
    policy2 = ScriptedPolicy(lambda m: pytest.fail("the cache should answer"))
    refl2 = PolicyReflector(policy2, "scripted", cache=ReflectionCache(tmp_path / "cache.jsonl"))
    res2 = build_calibrated(*args, refl2, ALFWORLD_WEIGHTS)
    refl2.close()
    assert policy2.calls == 0 and [p.to_dict() for p in res2.pairs] == [p.to_dict() for p in res.pairs]


def test_failed_reflection_is_reported_not_dropped(tmp_path):
    def reply(msgs):
        if "go to shelf 1" in msgs[0].content.split("most recent action")[1][:40]:
            raise ConnectionError("server said 503")
        return "Thought: Wrong turn.\nAction: x"

    class Flaky(ScriptedPolicy):
        def generate(self, batch, params):
            self.calls += 1
            return [self.reply(list(m)) for m in batch]

    res = build_calibrated({"t1": expert_sft()}, expert_rewards(), list(explored_fixture().values()), RELEASED_RULE,
                           HashingEncoder(), PolicyReflector(Flaky(reply), "flaky", batch_size=4), ALFWORLD_WEIGHTS)
    assert [p.id for p in res.pairs] == ["t1_calibrated_4"]
    assert res.problems == [{"kind": "reflection_failed", "id": "t1", "iteration": 2,
                             "error": "ConnectionError: server said 503"}]


def test_each_failed_reflection_is_counted_and_logged(caplog):
    def reply(msgs):
        raise ConnectionError("server said 503")

    with caplog.at_level("WARNING", logger="steca.method.datasets"):
        res = build_calibrated({"t1": expert_sft()}, expert_rewards(), list(explored_fixture().values()),
                               RELEASED_RULE, HashingEncoder(), PolicyReflector(ScriptedPolicy(reply), "down"),
                               ALFWORLD_WEIGHTS)
    assert res.pairs == [] and [(p["id"], p["iteration"]) for p in res.problems] == [("t1", 2), ("t1", 4)]
    assert res.counts["problem:reflection_failed"] == 2
    assert [r.getMessage() for r in caplog.records if r.name == "steca.method.datasets"] == [
        f"reflection_failed: task t1 step {t}: ConnectionError: server said 503" for t in (2, 4)]


def test_reflections_stop_after_consecutive_failures_and_a_success_resets_the_count(caplog):
    failing = {0, 2, 4, 5}  # steps 6 and 7 would succeed but come after two failures in a row
    seen_params = []

    class Outage(ScriptedPolicy):
        def generate(self, batch, params):
            seen_params.append(params)
            return super().generate(batch, params)

    def reply(msgs):
        i = int(msgs[0].content.split('most recent action, "step ')[1].split('"')[0])
        if i in failing:
            raise ConnectionError(f"server down for step {i}")
        return f"Thought: step {i} was wrong.\nAction: x"

    policy = Outage(reply)
    refl = PolicyReflector(policy, "outage", params=SamplingParams(temperature=0.5, max_new_tokens=7),
                           batch_size=8, max_consecutive_failures=2)
    reqs = [ReflectionRequest(f"k{i}", tuple(expert_prefix(1)), f"step {i}", "go to drawer 1") for i in range(8)]
    with caplog.at_level("WARNING", logger="steca.method.reflection"):
        out = refl.reflect(reqs)
    assert [r.ok for r in out] == [False, True, False, True, False, False, False, False]
    assert [r.thought for r in out if r.ok] == ["step 1 was wrong.", "step 3 was wrong."]
    assert out[0].error == "ConnectionError: server down for step 0"
    assert out[6].error == out[7].error == ("RuntimeError: not attempted: 2 reflections in a row failed "
                                            "(last: ConnectionError: server down for step 5)")
    # one batch call that failed, then one call per request up to the second failure in a row
    assert policy.calls == 7 and seen_params == [refl.params] * 7
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("reflection request failed")] == [
        f"reflection request failed: server down for step {i}" for i in (0, 2, 4, 5)]


def test_reflection_cache_skips_foreign_lines_and_answers_what_it_was_given(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "reply": "Thought: x"}\n{"note": "not an entry"}\n[1, 2]\n{"key": 3, "reply": "y"}\n')
    cache = ReflectionCache(path)
    assert len(cache) == 1 and cache.get("a") == "Thought: x" and cache.get("b") is None
    cache.put("b", "Thought: y")
    cache.put("a", "Thought: replaced")  # a key already cached keeps its first reply
    assert (cache.get("a"), cache.get("b"), len(cache)) == ("Thought: x", "Thought: y", 2)
    cache.close()
    assert ReflectionCache(path).get("b") == "Thought: y" and path.read_text().count('"key": "a"') == 1


def test_reflection_prompt_and_parse():
    req = ReflectionRequest("k", tuple(expert_prefix(2) + [turn("go to shelf 1"), Message("user", "Observation: x")]),
                            "go to shelf 1", "go to drawer 1")
    assert reflection_prompt(req)[0].role == "user"
    text = reflection_prompt(req)[0].content
    assert "go to shelf 1" in text and "go to drawer 1" in text and "Your task is to: put a pen in drawer." in text
    assert parse_reflection("Thought: a b\n c\nAction: go") == "a b c"
    assert parse_reflection("just text") == "just text"
    assert parse_reflection("Action: go to desk 1") is None
    assert parse_reflection("Thought: first\nThought: second\nAction: go\nAction: again") == "second"


def test_render_history_leaves_out_the_instruction_turns_only():
    from steca.method.reflection import render_history

    instr = [Message("user", "Solve it."), Message("assistant", "OK")]
    steps = [Message("user", "You see a desk."), Message("assistant", "Thought: t\nAction: go to desk 1"),
             Message("user", "Observation: ok ")]
    assert render_history(instr + steps) == ("[Environment]\nYou see a desk.\n\n[Agent]\nThought: t\nAction: go to desk 1"
                                             "\n\n[Environment]\nObservation: ok")
    kept = "[Environment]\nSolve it.\n\n[Agent]\nOK\n\n" + render_history(steps)
    assert render_history(instr + steps, skip_instruction=False) == kept
    # no instruction pair: a user turn answered by an action, a lone turn, an assistant first
    assert render_history(steps[:2]) == "[Environment]\nYou see a desk.\n\n[Agent]\nThought: t\nAction: go to desk 1"
    assert render_history(instr[:1]) == "[Environment]\nSolve it."
    assert render_history(instr[::-1]) == "[Agent]\nOK\n\n[Environment]\nSolve it."
    assert render_history([instr[0], Message("user", "more")]) == "[Environment]\nSolve it.\n\n[Environment]\nmore"


def test_reflection_cache_key_is_stable_across_versions():
    """Cache files outlive a run: the key of a fixed request must not change (pinned digest), and it depends on the
    model label, the prompt and each sampling setting."""
    prompt = [Message("user", "Réfléchis: go to desk 1")]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=256)
    key = ReflectionCache.make_key("m", prompt, params)
    assert key == "1703d72b5eb7036bde37549acc45ac7dcd80012bd8671eedab98043b503ce31c"
    others = {ReflectionCache.make_key("m2", prompt, params), ReflectionCache.make_key("m", prompt[:0], params),
              ReflectionCache.make_key("m", prompt, replace(params, temperature=0.5)),
              ReflectionCache.make_key("m", prompt, replace(params, top_p=0.9)),
              ReflectionCache.make_key("m", prompt, replace(params, max_new_tokens=8))}
    assert len(others) == 5 and key not in others


def test_explored_set_threshold_and_weight():
    sft = {"t1": expert_sft()}
    explored = list(explored_fixture().values())
    lenient = WeightScheme("lenient", 0.01, explored_max_distance=1.0)
    res = build_explored(sft, explored, HashingEncoder(), lenient)
    assert [p.id for p in res.pairs] == ["t1_explored_0"]
    p = res.pairs[0]
    assert p.prompt == expert_prefix(0)
    assert [m.content for m in p.rejected] == [m.content for m in expert_sft().conversations[3:]]
    assert p.chosen[0].content.endswith("Action: go to desk 1")
    d = p.extra["distance"]
    assert 0 < d < 1 and p.reward == pytest.approx(1 - 0.01 * d)
    # the released ALFWorld threshold (d < 0.013) drops this exploration (it skips three expert steps)
    strict = build_explored(sft, explored, HashingEncoder(), ALFWORLD_WEIGHTS)
    assert strict.pairs == [] and strict.rejected["distance_too_large"] == 1


def test_explored_set_counts_and_reports_each_bad_record(caplog):
    from steca.method.datasets import RULE_EXPLORED_SUCCESS

    def success(task, first, rest):
        return explored_step(0, first, 1.0, 1.0, task, continuation=rest)

    explored = [explored_step(0, "look", 0.0, 0.0, "a0"), explored_step(0, "look", 0.0, 0.0, "a1"),
                success("b", "look", []),                          # no expert trajectory for b
                success("c", "look", []),                          # its expert trajectory has no step to align with
                success("d", "look", ["inventory"]), success("e", "examine shelf 1", ["look"]),  # far from the expert
                success("f", EXPERT_ACTIONS[0], EXPERT_ACTIONS[1:]), success("g", EXPERT_ACTIONS[0], EXPERT_ACTIONS[1:])]
    sft = {t: expert_sft(t) for t in ("a0", "a1", "d", "e", "f", "g")}
    sft["c"] = replace(expert_sft("c"), conversations=expert_prefix(0))
    with caplog.at_level("WARNING", logger="steca.method.datasets"):
        res = build_explored(sft, explored, HashingEncoder(), WeightScheme("w", 0.01, explored_max_distance=0.5))
    assert [p.id for p in res.pairs] == ["f_explored_0", "g_explored_0"]
    assert [(p["kind"], p["id"], p["iteration"]) for p in res.problems] == [
        ("missing_expert_trajectory", "b", 0), ("bad_step_record", "c", 0)]
    assert caplog.messages[1] == f"bad_step_record: task c step 0: {res.problems[1]['error']}" != \
        "bad_step_record: task c step 0: None"
    assert res.rejected == {"exploration_failed": 2, "distance_too_large": 2}
    assert res.counts == {"candidates": 8, "problem:missing_expert_trajectory": 1, "problem:bad_step_record": 1,
                          "rule:" + RULE_EXPLORED_SUCCESS: 2, "pairs": 2}
    pair = res.pairs[0].to_dict()
    assert pair["rejected"] == [m.to_dict() for m in expert_sft("f").conversations[3:]]
    assert {k: v for k, v in pair.items() if k not in ("prompt", "chosen", "rejected")} == {
        "id": "f_explored_0", "reward": 1.0, "set": "explored", "rule": RULE_EXPLORED_SUCCESS, "source_id": "f",
        "iteration": 0, "game_file": "games/f/game.tw-pddl", "distance": 0.0}


def test_expert_subtrajectory_rules():
    sft = {"t1": expert_sft()}
    failed_t0 = explored_step(0, "go to shelf 1", 0.0, 0.0)
    explored = [failed_t0] + [explored_fixture()[t] for t in (2, 3, 4)]
    explored.append(explored_step(1, "go to shelf 1", 0.795, 0.0))  # r_expert(1)=0.8: margin 0.005 < 0.01
    res = build_expert(sft, expert_rewards(), explored, HashingEncoder(), ALFWORLD_WEIGHTS, min_step=1)
    rules = {p.id: p.extra["rule"] for p in res.pairs}
    # t=2: 0.8-0.4; t=3: 1.0-0.6; t=4: 1.0-0.2 (all > 0.01, outcome 1 vs 0); t=1 too close
    assert rules == {"t1_expert_0": RULE_EXPERT_WHOLE, "t1_expert_2": rule_expert_beats(0.01),
                     "t1_expert_3": rule_expert_beats(0.01), "t1_expert_4": rule_expert_beats(0.01)}
    assert res.rejected["expert_step_not_better"] == 1
    released = build_expert(sft, expert_rewards(), explored, HashingEncoder(), ALFWORLD_WEIGHTS)  # t = 1 skipped
    assert {p.id for p in released.pairs} == set(rules) and released.rejected["step_too_early"] == 1
    p = next(p for p in res.pairs if p.id == "t1_expert_2")
    assert p.prompt == expert_prefix(2)
    assert p.chosen[0].content.endswith(f"Action: {EXPERT_ACTIONS[2]}")
    assert p.rejected[0].content.endswith("Action: go to shelf 1")
    assert p.reward == pytest.approx(1 + 0.01 * p.extra["distance"])
    no_whole = build_expert(sft, expert_rewards(), explored, HashingEncoder(), ALFWORLD_WEIGHTS, include_whole=False)
    assert "t1_expert_0" not in {p.id for p in no_whole.pairs}


def test_expert_set_counts_every_reason_and_reports_each_bad_record():
    def step(task, t, r, final):
        return explored_step(t, "go to shelf 1", r, final, task)

    no_final = step("b", 3, 0.2, 0.0)
    no_final.agent_final_reward = None
    bad = step("e", 2, 0.4, 0.0)
    bad.agent_step_conversations = expert_prefix(2) + [Message("user", "Observation: ?")]
    explored = [step("a", 0, 0.0, 0.0), step("a", 1, 0.0, 0.0), step("a", 2, 0.4, 0.995), step("a", 3, 0.2, 0.0),
                step("a", 4, 0.2, 0.0), step("b", 0, 1.0, 1.0), step("b", 1, 0.0, 0.0),
                replace(step("b", 2, 0.4, 0.0), mc_step_reward=None), no_final, step("b", 4, 1.0, 0.0),
                step("c", 4, 1.0, 0.0), step("d", 2, 0.4, 0.0), bad, step("e", 3, 0.2, 0.0)]
    rewards = [0.6, 0.8, 0.8, 1.0, 1.0]
    expert = [expert_step(t, rewards[t], "a") for t in range(3)]
    expert[2].agent_final_reward = None  # an expert record without an outcome counts as the expert's success, 1
    expert += [expert_step(t, r, task) for task in "bcde" for t, r in enumerate(rewards)]
    sft = {t: expert_sft(t) for t in "abce"}
    rule = rule_expert_beats(0.01)
    res = build_expert(sft, expert, explored, HashingEncoder(), ALFWORLD_WEIGHTS)
    assert [p.id for p in res.pairs] == ["a_expert_0", "e_expert_3"]
    assert res.rejected == {"step_too_early": 2, "expert_outcome_not_better": 1, "missing_expert_reward": 2,
                            "exploration_succeeded": 1, "missing_explore_reward": 2, "expert_step_not_better": 2}
    assert [(p["kind"], p["id"], p["iteration"]) for p in res.problems] == [
        ("missing_expert_trajectory", "d", 2), ("bad_step_record", "e", 2)]
    assert "'agent_step_conversations'" in res.problems[1]["error"]
    assert res.counts == {"candidates": 14, "rule:" + RULE_EXPERT_WHOLE: 1, "rule:" + rule: 1, "pairs": 2,
                          "problem:missing_expert_trajectory": 1, "problem:bad_step_record": 1}
    extra = {k: v for k, v in res.pairs[1].to_dict().items() if k not in ("id", "prompt", "chosen", "rejected", "reward")}
    assert extra == {"set": "expert", "rule": rule, "source_id": "e", "iteration": 3, "game_file": "games/e/game.tw-pddl",
                     "distance": res.distances[1], "r_expert": 1.0, "r_explore": 0.2}
    no_whole = build_expert(sft, expert, explored, HashingEncoder(), ALFWORLD_WEIGHTS, include_whole=False)
    assert [p.id for p in no_whole.pairs] == ["e_expert_3"] and no_whole.rejected["whole_trajectories_off"] == 2


def test_cli_runs_all_sets_merges_and_summarises(tmp_path):
    write_records(tmp_path / "sft.json", [expert_sft()])
    write_records(tmp_path / "expert_steps.jsonl", expert_rewards())
    bad = {"id": "t9", "iteration": "two", "agent_step_output": "x", "agent_step_conversations": []}
    with (tmp_path / "explore_steps.jsonl").open("w") as f:
        for r in explored_fixture().values():
            f.write(json.dumps(r.to_dict()) + "\n")
        f.write(json.dumps(bad) + "\n")  # one bad record must not lose the others
    common = ["--encoder", "hashing", "--sft", str(tmp_path / "sft.json"),
              "--explore_steps", str(tmp_path / "explore_steps.jsonl"), "--log_level", "WARNING"]
    out = tmp_path / "run"
    s_c = collect_main("calibrated", "alfworld", common + ["--expert_steps", str(tmp_path / "expert_steps.jsonl"),
                                                           "--output", str(out / "cali.json")])
    s_s = collect_main("expert", "alfworld", common + ["--expert_steps", str(tmp_path / "expert_steps.jsonl"),
                                                       "--output", str(out / "expert.json")])
    s_e = collect_main("explored", "alfworld", common + ["--output", str(out / "explored.json")])
    assert s_c["pairs"] == 2 and s_c["settings"]["reflection_stand_in"] is True
    # D_s: t=2..4 each beat by the expert (t=1 too: skipped, as released; t=0 exploration succeeded: no
    # whole-expert pair)
    assert s_s["pairs"] == 3 and s_e["pairs"] == 0 and s_s["settings"]["min_step"] == 2
    assert len(s_c["invalid_input_records"]) == 1 and "record 5 (id='t9'), field 'iteration'" in s_c["invalid_input_records"][0]
    merged = collect_main("merge", "alfworld", [str(out / "cali.json"), str(out / "expert.json"),
                                                str(out / "explored.json"), "--output", str(out / "train.json")])
    assert merged["pairs"] == 5 and merged["per_set"] == {"calibrated": 2, "expert": 3}
    loaded = load_pairs(out / "train.json", strict=True).records
    assert all(set(p.to_dict()) >= {"id", "prompt", "chosen", "rejected", "reward", "set", "rule"} for p in loaded)
    for name in ("cali", "expert", "explored", "train"):
        assert (out / f"{name}_summary.json").exists()
        assert colored_fraction(out / f"{name}_distances.png") > 0.005  # bars drawn
    assert colored_fraction(out / "cali_step_rewards.png") > 0.005
    summary = json.loads((out / "cali_summary.json").read_text())
    # the released rule with the hashing encoder's own "clearly different" threshold
    hashing_rule = replace(RELEASED_RULE, max_similarity=ENCODER_THRESHOLDS["hashing"].max_similarity)
    assert summary["per_rule"] == {hashing_rule.rule_name(): 2} and summary["settings"]["encoder"] == "hashing"
    assert summary["turned_away"]["same_action"] == 1


def test_histograms_of_equal_or_nearly_equal_values(tmp_path):
    """A run whose distances are all (nearly) the same still gets its PNGs (numpy refuses 20 bins there)."""
    from steca.collection.collect_cli import plot_histograms

    paths = plot_histograms(tmp_path / "d_c.json", {"expert": [0.5, 0.5]},
                            {"calibrated": [0.1, 0.1 + 1e-17], "explored": []})
    assert [p.name for p in paths] == ["d_c_step_rewards.png", "d_c_distances.png"]
    assert all(colored_fraction(p) > 0.002 for p in paths)  # one bar each (explored: no values, no bar)


def _requests(n: int) -> list[ReflectionRequest]:
    return [ReflectionRequest(f"k{i}", tuple(expert_prefix(1)), f"step {i}", "go to drawer 1") for i in range(n)]


def _step(msgs) -> int:
    return int(msgs[0].content.split('most recent action, "step ')[1].split('"')[0])


class Batches(ScriptedPolicy):
    """Records the size of every batch it is asked for."""

    def __init__(self, reply):
        super().__init__(reply)
        self.sizes = []

    def generate(self, batch, params):
        self.sizes.append(len(batch))
        return super().generate(batch, params)


def test_policy_reflector_results_defaults_and_cache(tmp_path, caplog):
    from steca.method.reflection import ReflectionResult

    policy = Batches(lambda m: "Action: go to drawer 1" if _step(m) == 1 else f"Thought: {_step(m)} was wrong.")
    refl = PolicyReflector(policy, "scripted", cache=ReflectionCache(tmp_path / "c.jsonl"))
    assert refl.params == SamplingParams(temperature=0.0, max_new_tokens=256)  # greedy, 256 new tokens
    assert refl.reflect(_requests(3)[:1]) == [ReflectionResult("k0", "0 was wrong.", "scripted", True, None, False)]
    with caplog.at_level("INFO", logger="steca.method.reflection"):
        out = refl.reflect(_requests(10))
    assert "reflection: 1 cached, 9 to request from scripted" in caplog.messages
    assert out[:2] == [ReflectionResult("k0", "0 was wrong.", "scripted", True, None, True),
                       ReflectionResult("k1", None, "scripted", False, "reply has no thought: 'Action: go to drawer 1'",
                                        False)]
    assert policy.sizes == [1, 8, 1]  # batches of 8 by default
    refl.close()
    # another model label does not read this model's cached replies
    other = Batches(lambda m: "Thought: other.")
    assert PolicyReflector(other, "other", cache=ReflectionCache(tmp_path / "c.jsonl")).reflect(_requests(1))[0].thought \
        == "other." and other.sizes == [1]


def test_policy_reflector_row_errors_short_replies_and_default_failure_limit(caplog):
    from eval_agent.agents.errors import RowErrors

    class Rows(Batches):
        def generate(self, batch, params):
            self.sizes.append(len(batch))
            if len(batch) == 3:
                raise RowErrors(["Thought: a.", None, None], {1: "row 1 timed out"})
            return ["Thought: only one."]  # one reply, whatever the batch size

    policy = Rows(None)
    out = PolicyReflector(policy, "rows", batch_size=3).reflect(_requests(3))
    assert [(r.thought, r.error) for r in out] == [("a.", None), (None, "RuntimeError: row 1 timed out"),
                                                   (None, "RuntimeError: generation failed")]
    assert policy.sizes == [3]  # row errors are not retried one by one
    policy = Rows(None)
    with caplog.at_level("WARNING", logger="steca.method.reflection"):
        out = PolicyReflector(policy, "rows", batch_size=2).reflect(_requests(2))
    assert [r.thought for r in out] == ["only one.", "only one."] and policy.sizes == [2, 1, 1]
    assert caplog.messages == ["reflection batch failed (policy returned 1 replies for 2 prompts); "
                               "retrying its 2 requests one by one"]
    # by default five failures in a row stop the requests; a limit below 1 counts as 1
    down = Batches(lambda m: (_ for _ in ()).throw(ConnectionError("down")))
    assert [r.ok for r in PolicyReflector(down, "down").reflect(_requests(7))] == [False] * 7
    assert down.sizes == [7, 1, 1, 1, 1, 1]
    down.sizes.clear()
    PolicyReflector(down, "down", max_consecutive_failures=0).reflect(_requests(3))
    assert down.sizes == [3, 1]


def test_a_successful_batch_resets_the_failure_count():
    state = {"fail": {0}}
    policy = Batches(lambda m: (_ for _ in ()).throw(ConnectionError("x")) if _step(m) in state["fail"] else "Thought: ok.")
    refl = PolicyReflector(policy, "p", batch_size=8, max_consecutive_failures=2)
    reqs = _requests(3)
    assert [r.ok for r in refl.reflect(reqs[:1])] == [False]            # one failure in a row
    assert [r.ok for r in refl.reflect(reqs[2:])] == [True]             # a batch that succeeds: none in a row
    assert [r.ok for r in refl.reflect([reqs[0], reqs[2]])] == [False, True]
    state["fail"] = {0, 1}
    assert [r.ok for r in refl.reflect(reqs[:2])] == [False, False]     # two in a row: the limit
    policy.sizes.clear()
    assert [r.ok for r in refl.reflect(reqs[2:])] == [False] and policy.sizes == []  # nothing is sent any more


def test_offline_reflection_text():
    from steca.method.reflection import ReflectionResult

    long_obs = "Observation:  You see\n a desk.  " + "x" * 200
    reqs = [ReflectionRequest("k", (Message("user", "Observation: old"), turn("go to shelf 1"), Message("user", long_obs)),
                              "go to shelf 1", "go to desk 1"),
            ReflectionRequest("j", (turn("look"),), "look", "go to desk 1")]
    assert OfflineReflector().reflect(reqs) == [
        ReflectionResult("k", "My last action, \"go to shelf 1\", did not bring me closer to the goal (the result was: "
                              + ("You see a desk. " + "x" * 200)[:160] + "). That was a mistake; the better next step "
                              "is to go to desk 1.", "offline-stand-in", True),
        ReflectionResult("j", "My last action, \"look\", did not bring me closer to the goal. That was a mistake; the "
                              "better next step is to go to desk 1.", "offline-stand-in", True)]


def test_continuation_trim_drops_only_a_final_observation():
    from steca.method.datasets import ContinuationOptions

    a, o = turn("look"), Message("user", "Observation: x")
    trim = ContinuationOptions().trim
    assert (trim([]), trim([a]), trim([a, o]), trim([o, a]), trim([a, o, a, o])) == ([], [a], [a], [o, a], [a, o, a])
    assert ContinuationOptions(keep_final_observation=True).trim([a, o]) == [a, o]


def test_exploration_of_a_step_without_observation():
    from steca.method.trajectories import exploration_from_step

    rec = explored_step(1, "look", 0.0, 0.0, continuation=["inventory"])
    rec.agent_step_conversations = rec.agent_step_conversations[:-1]  # ends with the step's assistant turn
    rec.agent_conversations = rec.agent_conversations[len(rec.agent_step_conversations) + 1:]  # the continuation only
    assert [m.content for m in exploration_from_step(rec)] == [turn("look", "my own idea").content,
                                                               turn("inventory", "exploring").content,
                                                               "Observation: Nothing happens."]


def test_calibrated_pairs_fields_counts_and_empty_rejected_sides():
    from steca.method.datasets import ContinuationOptions

    sft = {"t1": expert_sft()}
    res = build_calibrated(sft, expert_rewards(), list(explored_fixture().values()), RELEASED_RULE, HashingEncoder(),
                           OfflineReflector(), ALFWORLD_WEIGHTS)
    extra = {k: v for k, v in res.pairs[0].to_dict().items() if k not in ("id", "prompt", "chosen", "rejected", "reward")}
    assert extra == {"set": "calibrated", "rule": RELEASED_RULE.rule_name(), "source_id": "t1", "iteration": 2,
                     "game_file": "games/t1/game.tw-pddl", "distance": res.distances[0], "r_explore": 0.4,
                     "r_expert_prev": 0.8, "deviated_action": "go to shelf 1", "expert_action": EXPERT_ACTIONS[2],
                     "action_similarity": HashingEncoder().cosine("go to shelf 1", EXPERT_ACTIONS[2]),
                     "reflection_source": "offline-stand-in", "reflection_stand_in": True}
    assert res.counts["rule:" + RELEASED_RULE.rule_name()] == 2 and res.counts["pairs"] == 2
    # explorations that stop right after the deviated step: no action on the rejected side
    bare = {t: replace(r, agent_conversations=list(r.agent_step_conversations)) for t, r in explored_fixture().items()}
    dropped = build_calibrated(sft, expert_rewards(), list(bare.values()), RELEASED_RULE, HashingEncoder(),
                               OfflineReflector(), ALFWORLD_WEIGHTS)
    assert dropped.pairs == [] and dropped.rejected["empty_rejected"] == 2 and dropped.problems == []
    kept = build_calibrated(sft, expert_rewards(), list(bare.values()), RELEASED_RULE, HashingEncoder(),
                            OfflineReflector(), ALFWORLD_WEIGHTS, ContinuationOptions(keep_empty_rejected=True))
    assert [(p.id, p.rejected, p.extra["distance"], p.reward) for p in kept.pairs] == [
        ("t1_calibrated_2", [], 0.0, 1.0), ("t1_calibrated_4", [], 0.0, 1.0)]
    assert kept.counts["no_rejected_actions"] == 2 and "empty_rejected" not in kept.rejected
    # no expert trajectory: both deviations are reported; a deviated record without its step turn is reported
    # and the next one is still built
    missing = build_calibrated({}, expert_rewards(), list(explored_fixture().values()), RELEASED_RULE,
                               HashingEncoder(), OfflineReflector(), ALFWORLD_WEIGHTS)
    assert [(p["kind"], p["iteration"]) for p in missing.problems] == [("missing_expert_trajectory", 2),
                                                                        ("missing_expert_trajectory", 4)]
    broken = explored_fixture()
    broken[2].agent_step_conversations = expert_prefix(2) + [Message("user", "Observation: ?")]
    one = build_calibrated(sft, expert_rewards(), list(broken.values()), RELEASED_RULE, HashingEncoder(),
                           OfflineReflector(), ALFWORLD_WEIGHTS)
    assert [p.id for p in one.pairs] == ["t1_calibrated_4"]
    assert [(p["kind"], p["id"], p["iteration"]) for p in one.problems] == [("bad_step_record", "t1", 2)]
    assert "'agent_step_conversations'" in one.problems[0]["error"]
