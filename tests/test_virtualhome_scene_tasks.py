"""Held-out-style VirtualHome tasks on the real scene graphs (``virtualhome_scene_tasks``), played in the
real ``evolving_graph`` simulator: with their reference initial graphs and with the graphs the
environment rebuilds from the records (sitting or lying before an act included)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eval_agent.envs.virtualhome import VirtualHomeEnv
from eval_agent.envs.virtualhome.graph import seated_neighbours
from eval_agent.envs.virtualhome.task_files import task_from_dict
from steca.generators.virtualhome_scene_tasks import (FAMILIES, REFERENCE_DIR, SCENES, TASK_FILE,
                                                      generate_scene_tasks)
from steca.generators.virtualhome_tasks import main as generator_main

ACTS_AFTER_SEAT = {"FIND", "SWITCHON", "SWITCHOFF", "TYPE", "GRAB"}


def _actions(record: dict) -> list[str]:
    return [re.match(r"\[(\w+)\]", line).group(1) for line in record["new_program_lines"]]


def _acts_while_seated(record: dict) -> bool:
    acts = _actions(record)
    return any(a in ("SIT", "LIE") and set(acts[i + 1:]) & ACTS_AFTER_SEAT for i, a in enumerate(acts))


@pytest.fixture(scope="module")
def generated(virtualhome_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vh_scene_tasks")
    generator_main(["--scene_tasks_from", str(virtualhome_data), "--out", str(out), "--per_family_and_scene", "1"])
    return out


@pytest.fixture(scope="module")
def records(generated: Path) -> list[dict]:
    return [json.loads(line) for line in (generated / TASK_FILE).read_text().splitlines()]


def test_records_have_steca_schema_and_new_situations(records: list[dict]):
    keys = {"task", "description", "new_program_lines", "steps", "path", "action_list", "ObserANDState",
            "SuccessOrFail", "FailReasons", "revised_graph", "id", "object_id_dict"}
    assert len(records) >= 25
    for k, r in enumerate(records):
        assert set(r) == keys
        n = len(r["new_program_lines"])
        assert len(r["action_list"]) == len(r["ObserANDState"]) == len(r["SuccessOrFail"]) == n
        assert set(r["revised_graph"]) == {"nodes", "revised_nodes", "revised_add_edges"}
        task_from_dict(r, r["id"], k + 1)  # the environment's own validation
    scenes = {re.search(r"(TrimmedTestScene\d)_graph", r["path"]).group(1) for r in records}
    assert scenes == set(SCENES)
    assert {r["path"].split("/")[-2] for r in records} == set(FAMILIES)
    assert sum(_acts_while_seated(r) for r in records) >= 20
    # objects beyond the scene graph's ids, as in STeCa's data
    assert sum(any(i >= 1000 for i in r["object_id_dict"].values()) for r in records) >= 10
    assert any("Lie on" in step for r in records for step in r["action_list"])


def test_same_seed_same_tasks(virtualhome_data: Path, tmp_path: Path, records: list[dict]):
    generate_scene_tasks(virtualhome_data, tmp_path, per_family_and_scene=1, seed=0)
    assert [json.loads(x) for x in (tmp_path / TASK_FILE).read_text().splitlines()] == records


def _play(env: VirtualHomeEnv, tid: str) -> tuple[bool, list[str]]:
    env.reset(tid)
    won, rejected = False, []
    for a in env.expert_actions(tid):
        out = env.execute(a)
        won = won or out.won
        if not out.valid:
            rejected.append(a)
    return won, rejected


def test_reference_graphs_play_every_program(virtualhome_data: Path, generated: Path):
    env = VirtualHomeEnv(generated / TASK_FILE, virtualhome_data, init_graph_dir=generated / REFERENCE_DIR)
    assert not env.load_errors
    for tid in env.task_ids():
        assert _play(env, tid) == (True, []), tid


def test_rebuilt_graphs_play_sit_and_lie_then_act(virtualhome_data: Path, generated: Path, records: list[dict]):
    """Without the reference graphs (as on STeCa's held-out split) every program plays to its goal;
    in particular no act after [SIT]/[LIE] answers "Nothing happens."."""
    env = VirtualHomeEnv(generated / TASK_FILE, virtualhome_data)
    assert env.init_graph_dir is None
    results = {tid: _play(env, tid) for tid in env.task_ids()}
    assert all(env.is_reachable(t) for t in results)
    seated = [r["id"] for r in records if _acts_while_seated(r)]
    for tid in seated:
        assert results[tid] == (True, []), (tid, results[tid])
    assert sum(won for won, _ in results.values()) / len(results) >= 0.95


def test_seated_neighbours_come_from_lines_that_need_reach():
    """Regression: what a sitting/lying character reaches was within reach of its seat at the start."""
    record = {
        "task": "Relax", "description": "", "path": "x/TrimmedTestScene1_graph/t/1.txt", "id": "1",
        "new_program_lines": ["[WALK] <bedroom> (67)", "[FIND] <bed> (101)", "[LIE] <bed> (101)",
                              "[SWITCHOFF] <tablelamp> (1000)", "[TURNTO] <television> (102)",
                              "[GRAB] <book> (1001)", "[FIND] <book> (1001)", "[STANDUP]", "[GRAB] <cup> (1002)"],
        "object_id_dict": {"bedroom": 67, "bed": 101, "tablelamp": 1000, "television": 102, "book": 1001,
                           "cup": 1002},
        "revised_graph": {"nodes": [], "revised_nodes": [], "revised_add_edges": []},
    }
    task = task_from_dict(record, "1", 1)
    nodes = {i: {"category": "Rooms" if i == 67 else "Furniture"} for i in (67, 101, 102, 1000, 1001, 1002)}
    # the lamp (switched while lying) and the book (grabbed while lying) were within reach of the bed;
    # TURNTO needs no reach, the second FIND of the grabbed book is the program's doing, the cup comes after STANDUP
    assert seated_neighbours(task, nodes) == [(1000, 101, False), (1001, 101, False)]
