"""The ALFWorld environment on the real TextWorld engine and the shared real games."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eval_agent.envs import make_env
from eval_agent.envs.alfworld_env import AlfWorldEnv, clean_observation
from eval_agent.envs.alfworld_game_files import GameNotFoundError, collect_games
from eval_agent.types import parse_action
from eval_agent.episode import INVALID_FORMAT_OBSERVATION, start_episode, step_episode
from eval_agent.types import Message
from steca.data.datacheck import episode_turns
from steca.records import load_sft


@pytest.fixture(scope="module")
def sample(alfworld_sft_sample: Path):
    return load_sft(alfworld_sft_sample, strict=True).records


@pytest.fixture(scope="module")
def train_env(alfworld_data: Path):
    env = AlfWorldEnv(alfworld_data, "train")
    yield env
    env.close()


def _actions(rec) -> list[str]:
    _, pairs = episode_turns(rec)
    return [a for a in (parse_action(t) for t, _ in pairs) if a is not None]


def test_game_collection_matches_alfworlds_own(alfworld_data: Path) -> None:
    from alfworld.agents.environment import get_environment

    for split, key, folder in (("train", "data_path", "train"), ("dev", "eval_id_data_path", "valid_seen")):
        ours = collect_games(alfworld_data, split)
        config = {"env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
                  "dataset": {key: str(alfworld_data / "json_2.1.1" / folder), "num_train_games": -1,
                              "num_eval_games": -1}}
        mode = "train" if split == "train" else "eval_in_distribution"
        theirs = get_environment("AlfredTWEnv")(config, train_eval=mode)
        assert {str(g.path) for g in ours} == {str(Path(p)) for p in theirs.game_files}
    assert len(collect_games(alfworld_data, "dev")) == 140
    assert len(collect_games(alfworld_data, "train")) == 151


def test_missing_split_is_a_clear_error(alfworld_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="valid_unseen"):
        AlfWorldEnv(alfworld_data, "test")  # the shared bundle has no valid_unseen
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        AlfWorldEnv(alfworld_data, "nope")
    env = AlfWorldEnv(alfworld_data, "train")
    with pytest.raises(GameNotFoundError, match="no_such_game"):
        env.reset("data/json_2.1.1/train/no_such_game/trial_1")


def test_observations_as_steca_shows_them(train_env: AlfWorldEnv, sample) -> None:
    rec = sample[0]
    argv = list(sys.argv)
    first = train_env.reset(rec.game_file)
    assert sys.argv == argv  # loading a game must not clobber sys.argv
    assert first == episode_turns(rec)[0] and first.startswith("You are in the middle of a room")
    out = train_env.execute("go to toilet 1")
    assert out.valid and not out.observation.startswith("You arrive") and out.observation.startswith("On the toilet 1")
    bad = train_env.execute("fly to the moon")
    assert bad.observation == "Nothing happens." and not bad.valid and not bad.won
    assert clean_observation("-= Welcome to TextWorld, ALFRED! =-\n\nYou are here.") == "You are here."


def test_episode_rules_invalid_output_and_step_limit(alfworld_data: Path, sample) -> None:
    env = AlfWorldEnv(alfworld_data, "train", max_steps=3)
    prompt = [Message("user", "instruction"), Message("assistant", "OK")]
    state = start_episode(env, sample[0].game_file, prompt)
    step_episode(env, state, "I will just think.")  # no Action: line
    assert state.steps == 1 and state.messages[-1].content == INVALID_FORMAT_OBSERVATION
    step_episode(env, state, "Thought: x\nAction: go to toilet 1")
    assert state.messages[-1].content.startswith("Observation: On the toilet 1")
    assert not state.finished
    step_episode(env, state, "Thought: y\nAction: look")
    assert state.finished and state.terminate_reason == "max_steps" and not state.success
    out = state.to_output()
    assert out["meta"]["steps"] == 3 and out["conversations"][0] == {"role": "user", "content": "instruction"}


def test_winning_trajectory_ends_in_success(alfworld_data: Path, sample) -> None:
    env = AlfWorldEnv(alfworld_data, "train")
    rec = sample[0]
    state = start_episode(env, rec.game_file, [Message("user", "i"), Message("assistant", "OK")])
    for a in _actions(rec):
        step_episode(env, state, f"Thought: t\nAction: {a}")
        if state.finished:
            break
    assert state.success and state.reward == 1.0 and state.terminate_reason == "success"


@pytest.mark.slow
def test_raw_engine_and_env_api_agree(alfworld_data: Path, sample) -> None:
    """Observations and outcomes through the env API equal the raw TextWorld engine's, step by step."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    from eval_agent.envs.alfworld_game_files import resolve_game_file

    env = AlfWorldEnv(alfworld_data, "train")
    chosen = [r for r in sample if r.id in {"alfworld_0", "alfworld_6", "alfworld_9", "alfworld_12", "alfworld_30"}]
    assert len(chosen) == 5
    for rec in chosen:
        path = resolve_game_file(rec.game_file, alfworld_data)
        raw = textworld.start(str(path), request_infos=textworld.EnvInfos(won=True, admissible_commands=True),
                              wrappers=[AlfredDemangler(), AlfredInfos])
        raw_state = raw.reset()
        assert env.reset(rec.game_file) == clean_observation(raw_state.feedback)
        assert env.admissible_commands() == raw_state["admissible_commands"]
        for a in _actions(rec) + ["go to the moon"]:
            state, _, _ = raw.step(a)
            ours = env.execute(a)
            assert ours.observation == clean_observation(state.feedback)
            assert ours.won == bool(state["won"])
            # command texts come from the memo's derivation cache; they must be the engine's own
            assert env.admissible_commands() == state["admissible_commands"]
        raw.close()
    assert env._memo.n_derive_hits > env._memo.n_derive_misses  # the cache was used, not bypassed


def test_reset_to_prefix_equals_reset_and_replay(alfworld_data: Path, sample) -> None:
    fast = AlfWorldEnv(alfworld_data, "train", max_games=2)
    slow = AlfWorldEnv(alfworld_data, "train", max_games=1)
    recs = [sample[1], sample[2], sample[5], sample[1]]  # revisits a game after others (restore across games)
    for rec in recs:
        actions = _actions(rec) + ["take nothing from nowhere"]  # an invalid action inside the prefix too
        for t in (0, 1, len(actions) // 2, len(actions) - 1, len(actions)):
            first, outs = fast.reset_to_prefix(rec.game_file, actions[:t])
            first2 = slow.reset(rec.game_file)
            outs2 = [slow.execute(a) for a in actions[:t]]
            assert (first, outs) == (first2, outs2)
            # continuing from a restored state behaves like continuing after a replay
            if t < len(actions):
                assert fast.execute(actions[t]) == slow.execute(actions[t])


def test_expert_solves_games_of_every_type(alfworld_data: Path) -> None:
    env = make_env("alfworld", "dev", data_dir=alfworld_data)
    by_type: dict[str, str] = {}
    for t in env.task_ids():
        by_type.setdefault(t.split("-")[0], t)
    assert len(by_type) == 6
    for task in by_type.values():
        actions = env.expert_actions(task)
        _, outs = env.reset_to_prefix(task, actions)
        assert outs[-1].won, task
        assert all(o.valid for o in outs)


def test_planner_from_a_mid_state_wins(alfworld_data: Path, sample) -> None:
    """fast-downward's planner (translated lazily, only when planning) finishes from any reached state."""
    env = AlfWorldEnv(alfworld_data, "train")
    rec = sample[0]
    actions = _actions(rec)
    env.reset_to_prefix(rec.game_file, actions[:2])
    plan = env.plan_from_here()
    _, outs = env.reset_to_prefix(rec.game_file, actions[:2] + plan)
    assert plan and outs[-1].won


def test_template_dependencies_of_command_and_feedback_texts() -> None:
    """Only texts built from literals, variable expressions, state queries and such rules are cached."""
    from textworld.envs.pddl import textgen
    from textworld.logic import Rule

    from eval_agent.envs.textworld_adapter import template_dependencies

    def parse(text: str):
        return textgen._parse_and_convert(text, rule_name="symbols")

    rules = {"look.feedback": [textgen.ProductionRule("look.feedback", parse("The {r.name} is open."),
                                                      condition="openable(r:receptacle) & opened(r:receptacle)"),
                               textgen.ProductionRule("look.feedback", parse("On the {r.name}, you see #items#."))],
             "items": [textgen.ProductionRule("items", parse("[{o.name | inreceptacle(o:object, r:receptacle)}]"))],
             "weird": [textgen.ProductionRule("weird", parse("{len(r.name)}"))]}

    def deps(text: str):
        return template_dependencies(parse(text), Rule.parse_conjunctive_query, rules.get)

    assert deps("open {r}") == (frozenset(), frozenset({"r"}), frozenset())
    assert deps("go to [{r.name | receptacleatlocation(r:receptacle, lend:location)}]") == \
        (frozenset({"receptacleatlocation"}), frozenset(), frozenset({("r", "receptacle"), ("lend", "location")}))
    # a rule's condition and its alternatives' texts; the list item name is bound by its query
    assert deps("You arrive at {lend.name}. #look.feedback#") == \
        (frozenset({"openable", "opened", "inreceptacle"}), frozenset({"lend", "r"}),
         frozenset({("r", "receptacle"), ("o", "object")}))
    assert deps("#weird#") is None  # arbitrary Python in a rule: derived afresh
    assert deps("#unknown#") is None  # the engine's own error, not the cache's
    assert deps("{len(r.name)}") is None
    assert deps("{context}") is None  # resolves to textworld's own locals, not a variable


def test_memo_matches_the_raw_engine_on_a_long_wandering_walk(alfworld_data: Path) -> None:
    """States revisited after objects moved: cached command and feedback texts follow the facts."""
    import random

    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    env = AlfWorldEnv(alfworld_data, "dev")
    task = [t for t in env.task_ids() if t.startswith("pick_two_obj")][0]
    raw = textworld.start(str(env.game_path(task)),
                          request_infos=textworld.EnvInfos(won=True, admissible_commands=True),
                          wrappers=[AlfredDemangler(), AlfredInfos])
    state = raw.reset()
    assert env.reset(task) == clean_observation(state.feedback)
    rng = random.Random(0)
    for _ in range(60):
        commands = [c for c in state["admissible_commands"] if c not in ("look", "inventory")]
        action = rng.choice([c for c in commands if not c.startswith("go to")] or commands) if rng.random() < 0.6 \
            else rng.choice(commands)
        state, _, _ = raw.step(action)
        ours = env.execute(action)
        assert ours.observation == clean_observation(state.feedback), action
        assert env.admissible_commands() == state["admissible_commands"]
    raw.close()
    assert env._memo.n_derive_hits > 0


def test_derivation_key_ignores_mapping_a_query_cannot_see() -> None:
    from textworld.logic import Placeholder, Variable

    from eval_agent.envs.textworld_adapter import TemplateDeps, derivation_key

    r, lend, lstart = Placeholder("r", "receptacle"), Placeholder("lend", "location"), Placeholder("lstart", "location")
    desk, loc1, loc2, loc3 = (Variable("desk_1", "receptacle"), Variable("l1", "location"),
                              Variable("l2", "location"), Variable("l3", "location"))
    goto = TemplateDeps(frozenset({"receptacleatlocation"}), frozenset(),
                        frozenset({("r", "receptacle"), ("lend", "location")}))
    here = derivation_key(goto, {r: desk, lend: loc1, lstart: loc2}, {})
    assert here == derivation_key(goto, {r: desk, lend: loc1, lstart: loc3}, {})  # only the agent's place differs
    assert here != derivation_key(goto, {r: desk, lend: loc2, lstart: loc3}, {})
    # a query with an unbound placeholder searches new variables (distinct from all mapped ones): whole mapping
    listing = TemplateDeps(frozenset({"inreceptacle"}), frozenset(), frozenset({("o", "object"), ("r", "receptacle")}))
    assert derivation_key(listing, {r: desk, lstart: loc2}, {}) != derivation_key(listing, {r: desk, lstart: loc3}, {})
    # free names must be variables of the context
    opening = TemplateDeps(frozenset(), frozenset({"r"}), frozenset())
    assert derivation_key(opening, {r: desk}, {}) is None
    info = object()
    assert derivation_key(opening, {r: desk}, {"r": info}) == ((), (("r", id(info)),))
