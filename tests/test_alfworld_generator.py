"""The ALFWorld game generator: real games in the real engine, expert trajectories that win.

A handful of games per split is generated once per module (every task type appears in every
split), then checked through the project's environment class (``AlfWorldEnv``, without the
generator's engine memos), the evaluation CLI, the shared real data (observation style), and
for determinism, resumption and the split definition.
"""
from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eval_agent.types import parse_action
from steca.generators import alfworld_games as gen
from steca.generators.alfworld_catalog import TASK_TYPES
from steca.generators.alfworld_plan_search import expert_plan
from steca.generators.alfworld_games import (GameJob, Replay, check_replay, generate, make_split_plan,
                                             sample_world)
from steca.records import load_sft

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"train": 6, "valid_seen": 6, "valid_unseen": 6}
SPLIT_OF = {"dev": "valid_seen", "test": "valid_unseen"}


def _generate(out: Path, seed: int = 0, counts: dict[str, int] = COUNTS, workers: int = 2) -> dict[str, Path]:
    return generate(out, seed=seed, n_train=counts["train"], n_seen=counts["valid_seen"],
                    n_unseen=counts["valid_unseen"], size="small", workers=workers, progress=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("alfgen") / "seed0"
    _generate(out)
    return out


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _actions(conversations) -> list[str]:
    return [parse_action(m.content) for m in conversations[3:] if m.role == "assistant"]


# ---------------------------------------------------------------- layout and SFT format
def test_official_layout_and_sft_format(bench: Path) -> None:
    for split, n in COUNTS.items():
        trials = sorted((bench / "json_2.1.1" / split).glob("*/*"))
        assert len(trials) == n
        task_types = set()
        for trial in trials:
            game = json.loads((trial / "game.tw-pddl").read_text())
            traj = json.loads((trial / "traj_data.json").read_text())
            assert game["solvable"] is True
            assert set(game) >= {"pddl_domain", "pddl_problem", "grammar", "walkthrough"}
            assert "(define (domain alfred)" in game["pddl_domain"]
            assert 'template :: "put {o} in/on {r}";' in game["grammar"]
            assert trial.parent.name.startswith(traj["task_type"] + "-")
            task_types.add(traj["task_type"])
            assert 6 <= traj["generator"]["n_receptacles"] <= 12
        assert task_types == set(TASK_TYPES)

        result = load_sft(bench / f"sft_{split}.json", strict=True)
        assert len(result.records) == n
        for rec in result.records:
            conv = rec.conversations
            assert [m.role for m in conv[:3]] == ["user", "assistant", "user"]
            assert conv[0].content == gen.alfworld_instruction()
            assert conv[1].content == "OK"
            assert conv[2].content.startswith("You are in the middle of a room. Looking quickly around you, you see ")
            assert "\n\nYour task is to: " in conv[2].content
            assert conv[-1].role == "assistant"
            for i, m in enumerate(conv[3:]):
                assert m.role == ("assistant" if i % 2 == 0 else "user")
                if m.role == "assistant":
                    assert re.fullmatch(r"Thought: [^\n]+\nAction: [^\n]+", m.content), m.content
                else:
                    assert m.content.startswith("Observation: ")
                    assert "You arrive at" not in m.content and m.content != "Observation: Nothing happens."
            assert rec.game_file.startswith(f"json_2.1.1/{split}/")


def _observation_template(text: str) -> str:
    text = re.sub(r"\b[a-z]+ \d+\b", "<e>", text)
    return re.sub(r"a <e>(, a <e>)*(,? and a <e>)?", "<list>", text)


def test_observations_speak_like_the_official_games(bench: Path, alfworld_sft_sample: Path) -> None:
    """Every kind of observation the generated games produce occurs in the authors' trajectories."""
    real = load_sft(alfworld_sft_sample).records
    real_templates = {_observation_template(m.content) for r in real for m in r.conversations[3:] if m.role == "user"}
    real_first = {_observation_template(r.conversations[2].content.split("\n\n")[0]) for r in real}
    for split in COUNTS:
        for rec in load_sft(bench / f"sft_{split}.json").records:
            assert _observation_template(rec.conversations[2].content.split("\n\n")[0]) in real_first
            for m in rec.conversations[3:]:
                if m.role == "user":
                    assert _observation_template(m.content) in real_templates, m.content


# ---------------------------------------------------------------- the real engine, via the project's env
def test_every_game_loads_and_every_trajectory_wins_in_alfworld_env(bench: Path) -> None:
    from eval_agent.envs.alfworld_env import AlfWorldEnv

    for env_split, split in (("train", "train"), ("dev", "valid_seen"), ("test", "valid_unseen")):
        env = AlfWorldEnv(bench, env_split)
        records = {r.game_file: r for r in load_sft(bench / f"sft_{split}.json").records}
        assert sorted(env.game_file(t) for t in env.task_ids()) == sorted(records)
        for task_id in env.task_ids():
            rec = records[env.game_file(task_id)]
            assert env.reset(task_id) == rec.conversations[2].content
            outcomes = [env.execute(a) for a in _actions(rec.conversations)]
            observations = [m.content[len("Observation: "):] for m in rec.conversations[3:] if m.role == "user"]
            assert [o.observation for o in outcomes[:-1]] == observations
            assert all(o.valid for o in outcomes)
            assert outcomes[-1].won and not any(o.won for o in outcomes[:-1]), rec.id
        env.close()


def test_a_trajectory_that_does_not_win_is_caught() -> None:
    steps = tuple(gen.ExpertStep("t", a) for a in ("go to desk 1", "take cd 1 from desk 1"))
    job = GameJob("train", 0, 0, "unused", "unused", steps)
    assert check_replay(job, Replay("first", ("On the desk 1, ...", "You pick up ..."), (False, True))) is None
    assert "does not win" in check_replay(job, Replay("first", ("a", "b"), (False, False)))
    assert "rejected" in check_replay(job, Replay("first", ("Nothing happens.", "b"), (False, True)))
    assert "early" in check_replay(job, Replay("first", ("a", "b"), (True, True)))


@pytest.mark.slow
def test_expert_agent_scores_one_through_the_cli(bench: Path, tmp_path: Path) -> None:
    if not (REPO_ROOT / "eval_agent" / "main.py").exists():
        pytest.skip("eval_agent/main.py (the evaluation CLI) is not in this checkout yet")
    for split in ("dev", "test"):
        proc = subprocess.run(
            [sys.executable, "-m", "eval_agent.main", "--exp_config", "alfworld", "--split", split,
             "--agent_config", "expert", "--data_dir", str(bench), "--output_path", str(tmp_path / split)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
        assert lines[-1] == "Success rate: 1.0000", proc.stdout[-2000:]


# ---------------------------------------------------------------- determinism and resumption
def test_same_seed_is_byte_identical_and_resumes(bench: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    again = tmp_path / "again"
    _generate(again, workers=1)
    assert _tree(again) == _tree(bench)
    for rel in _tree(bench):
        assert filecmp.cmp(bench / rel, again / rel, shallow=False), rel

    # an interrupted run: all but one trajectory per split were streamed before the stop
    for split, n in COUNTS.items():
        records = json.loads((again / f"sft_{split}.json").read_text())
        with (again / f".progress_{split}.jsonl").open("w") as f:
            for i, rec in enumerate(records[:-1]):
                f.write(json.dumps({"index": i, "attempt": 0, "record": rec}) + "\n")
            f.write('{"index": 99, "attem')  # a torn last line
        (again / f"sft_{split}.json").unlink()
    with caplog.at_level(logging.INFO, logger=gen.__name__):
        _generate(again, workers=1)
    assert any("replaying 3 expert trajectories" in r.getMessage() for r in caplog.records)
    assert _tree(again) == _tree(bench)
    for rel in _tree(bench):
        assert filecmp.cmp(bench / rel, again / rel, shallow=False), rel


def test_different_seeds_give_different_games(bench: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed1"
    _generate(other, seed=1, counts={"train": 2, "valid_seen": 1, "valid_unseen": 1}, workers=1)
    a = json.loads((bench / "sft_train.json").read_text())[:2]
    b = json.loads((other / "sft_train.json").read_text())
    assert [r["conversations"] for r in a] != [r["conversations"] for r in b]
    problems = lambda root: {json.loads(p.read_text())["pddl_problem"].split("(:init", 1)[1]
                             for p in (root / "json_2.1.1").rglob("game.tw-pddl")}
    assert not problems(bench) & problems(other)


# ---------------------------------------------------------------- the split definition
def _meta(world) -> tuple[str, tuple[str, str, str], str]:
    placements = tuple(sorted((o.kind, world.receptacles[o.recep].kind) for o in world.objects))
    return world.layout.name, world.task.combo, repr(placements)


def test_seen_and_unseen_differ_as_defined() -> None:
    plan = make_split_plan(seed=0, size="small")
    worlds = {split: [sample_world(plan, split, i, 0, "small") for i in range(n)]
              for split, n in (("train", 400), ("valid_seen", 50), ("valid_unseen", 50))}
    train_layouts = {w.layout.name for w in worlds["train"]}
    train_combos = {w.task.combo for w in worlds["train"]}
    train_objects = {o.kind for w in worlds["train"] for o in w.objects}
    # valid_seen: same layouts and object kinds as train, new placements
    assert {w.layout.name for w in worlds["valid_seen"]} <= train_layouts
    assert {o.kind for w in worlds["valid_seen"] for o in w.objects} <= train_objects
    assert {w.task.combo for w in worlds["valid_seen"]} <= set(plan.combos["train"])
    train_games = {_meta(w) for w in worlds["train"]}
    assert not {_meta(w) for w in worlds["valid_seen"]} & train_games
    # valid_unseen: held-out layouts and held-out goal combinations only
    unseen_layouts = {w.layout.name for w in worlds["valid_unseen"]}
    assert unseen_layouts and not unseen_layouts & train_layouts
    assert not {l.name for l in plan.layouts["valid_unseen"]} & {l.name for l in plan.layouts["train"]}
    unseen_combos = {w.task.combo for w in worlds["valid_unseen"]}
    assert unseen_combos and not unseen_combos & train_combos
    assert not plan.combos["valid_unseen"] & plan.combos["train"]
    assert {w.task.task_type for w in worlds["valid_unseen"]} == set(TASK_TYPES)


def test_generated_split_files_follow_the_plan(bench: Path) -> None:
    manifest = json.loads((bench / "manifest.json").read_text())
    plan = manifest["split_plan"]
    for split in COUNTS:
        for traj in (bench / "json_2.1.1" / split).rglob("traj_data.json"):
            g = json.loads(traj.read_text())["generator"]
            assert g["layout"] in {l["name"] for l in plan["layouts"][split]}
            assert g["combo"] in plan["combos"][split]
    assert not {l["name"] for l in plan["layouts"]["valid_unseen"]} & {l["name"] for l in plan["layouts"]["train"]}


def test_expert_searches_likely_places_in_order() -> None:
    """Before its first ``take``, the expert visits receptacles in the catalog's order for the object."""
    import random

    from steca.generators.alfworld_catalog import OBJECTS

    plan = make_split_plan(seed=3, size="small")
    for i in range(120):
        world = sample_world(plan, "train", i, 3, "small")
        steps = expert_plan(world, random.Random(i))
        assert 2 <= len(steps) <= 30
        order = OBJECTS[world.task.obj].places
        visited = []
        for s in steps:
            if s.action.startswith("take "):
                break
            if s.action.startswith("go to "):
                visited.append(s.action[len("go to "):].rsplit(" ", 1)[0])
        ranks = [[k.lower() for k in order].index(v) for v in visited]
        assert ranks == sorted(ranks), (world.task, visited)
        assert steps[-1].action.startswith(("put ", "use "))


def test_tiny_rooms_with_the_short_instruction(tmp_path: Path) -> None:
    """The CPU demo's setting: 4-7 receptacles and the short first turn; the manifest says so and every
    trajectory was replayed to a win in the real engine (``generate`` raises otherwise)."""
    out = tmp_path / "tiny"
    paths = generate(out, seed=3, n_train=3, n_seen=1, n_unseen=1, size="tiny", workers=1, progress=False,
                     instruction="short")
    assert json.loads((out / "manifest.json").read_text())["instruction"] == "short"
    for path in paths.values():
        for rec in load_sft(path, strict=True).records:
            assert rec.conversations[0].content == gen.alfworld_instruction("short")
            seen = rec.conversations[2].content.split("you see ", 1)[1].split("\n")[0]
            assert 4 <= seen.count(", ") + 1 <= 7, seen
    with pytest.raises(ValueError, match="instruction style"):
        generate(tmp_path / "bad", n_train=1, n_seen=0, n_unseen=0, instruction="long")


def test_memo_thoughts_carry_the_task_and_the_search_list() -> None:
    """The ``memo`` style changes thoughts only: the same actions as ``terse``; every thought starts with the
    task and its goal receptacle; while searching, the receptacles still to check start with the one the
    expert goes to next and shrink by what it has looked into."""
    import random

    from steca.generators.alfworld_plan_search import goal_memo

    plan = make_split_plan(seed=3, size="small")
    searches = 0
    for i in range(60):
        world = sample_world(plan, "train", i, 3, "small")
        terse = expert_plan(world, random.Random(i))
        memo = expert_plan(world, random.Random(i), thoughts="memo")
        assert [s.action for s in memo] == [s.action for s in terse]
        task = f"Task: {goal_memo(world)}."
        if world.task.task_type != "look_at_obj_in_light":
            goal = next(r.text for r in world.receptacles if r.kind == world.task.recep and r.number == 1)
            assert f"in/on {goal}." in task and memo[-1].action.endswith(f" in/on {goal}")
        previous: list[str] | None = None
        for step in memo:
            assert step.thought.startswith(task), step.thought
            rest = step.thought[len(task):]
            if rest.startswith(" To check: "):
                listed = rest[len(" To check: "):].split(".", 1)[0].split(", ")
                if step.action.startswith("go to "):
                    assert listed[0] == step.action[len("go to "):]
                    searches += 1
                if previous is not None:
                    assert set(listed) <= set(previous)
                previous = listed
            else:
                previous = None
    assert searches > 60
    with pytest.raises(ValueError, match="thought style"):
        expert_plan(sample_world(plan, "train", 0, 3, "small"), random.Random(0), thoughts="long")
