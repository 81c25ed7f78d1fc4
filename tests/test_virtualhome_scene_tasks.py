"""Held-out-style VirtualHome tasks on the real scene graphs (``virtualhome_scene_tasks``), played in the
real ``evolving_graph`` simulator: with their reference initial graphs and with the graphs the
environment rebuilds from the records (sitting or lying before an act included)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eval_agent.envs.virtualhome import VirtualHomeEnv
from eval_agent.envs.virtualhome.graph import Whereabouts, reach_neighbours
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
    assert len(seated) >= 20
    for tid in results:  # the seated ones and the standing acts on objects no observation lists
        assert results[tid] == (True, []), (tid, results[tid])


def _task(lines: list[str], ids: dict[str, int], observations: list[str] | None = None):
    record = {"task": "t", "description": "", "path": "x/TrimmedTestScene1_graph/t/1.txt", "id": "1",
              "new_program_lines": lines, "object_id_dict": ids, "ObserANDState": observations or [],
              "revised_graph": {"nodes": [], "revised_nodes": [], "revised_add_edges": []}}
    return task_from_dict(record, "1", 1)


def _nodes(rooms: set[int], others: set[int]) -> dict[int, dict]:
    return {i: {"category": "Rooms" if i in rooms else "Furniture", "class_name": f"c{i}", "properties": []}
            for i in rooms | others}


def test_reach_neighbours_while_seated():
    """Regression (seated reach): what a sitting/lying character reaches was within reach of its seat."""
    task = _task(["[WALK] <bedroom> (67)", "[FIND] <bed> (101)", "[LIE] <bed> (101)",
                  "[SWITCHOFF] <tablelamp> (1000)", "[TURNTO] <television> (102)", "[GRAB] <book> (1001)",
                  "[FIND] <book> (1001)", "[STANDUP]", "[GRAB] <cup> (1002)"],
                 {"bedroom": 67, "bed": 101, "tablelamp": 1000, "television": 102, "book": 1001, "cup": 1002})
    nodes = _nodes({67}, {101, 102, 1000, 1001, 1002})
    # lamp (switched while lying) and book (grabbed while lying) were within reach of the bed; TURNTO needs
    # no reach; the second FIND of the grabbed book is the program's doing; after STANDUP the anchor is the
    # bed the character walked to (FIND after entering the room walks), so the cup pairs with it
    assert reach_neighbours(task, nodes) == [(1000, 101, False), (1001, 101, False), (1002, 101, False)]


def test_reach_neighbours_standing():
    """Regression (standing reach): an object acted on without being listed was within reach of the
    last thing walked to; a listed one needs no pair."""
    task = _task(["[WALK] <kitchen> (1)", "[WALK] <table> (10)", "[SWITCHON] <radio> (1000)", "[GRAB] <cup> (11)"],
                 {"kitchen": 1, "table": 10, "radio": 1000, "cup": 11},
                 ["", "table is CLEAN", "table is CLEAN", "cup is CLEAN, table is CLEAN"])
    task_listed = _task(list(task.program and [str(x) for x in task.program]), task.object_ids,
                        ["", "table is CLEAN, radio is OFF", "table is CLEAN, radio is ON", "cup is CLEAN"])
    nodes = _nodes({1}, {10, 11, 1000})
    assert reach_neighbours(task, nodes) == [(1000, 10, False), (11, 10, False)]
    assert reach_neighbours(task_listed, nodes) == [(11, 10, False)]


def test_whereabouts_decides_which_finds_walk():
    """Regression (a [FIND] that walks): FIND walks when nothing is within reach, into another room, or
    when the observation drops what was close; never while seated, never to a body part."""
    nodes = _nodes({1, 2}, {10, 11, 12, 13})
    nodes[13]["properties"] = ["BODY_PART"]
    rooms = {10: 1, 11: 1, 12: 2}
    line = lambda t: task_from_dict({"task": "t", "path": "x/S1_graph/a.txt", "object_id_dict": {},  # noqa: E731
                                     "new_program_lines": [t], "revised_graph": {}}, "1", 1).program[0]
    w = Whereabouts(nodes, rooms, 1)
    assert w.step(line("[FIND] <c10> (10)"))  # nothing within reach at the start
    assert not w.step(line("[FIND] <c11> (11)"))  # same room, nothing dropped: within reach
    assert w.step(line("[FIND] <c11> (11)"), dropped=True)
    assert not w.step(line("[FIND] <c13> (13)"), dropped=True)  # body part
    assert w.step(line("[FIND] <c12> (12)")) and w.room == 2  # another room
    assert not w.step(line("[SIT] <c12> (12)"))
    assert not w.step(line("[FIND] <c10> (10)"), dropped=True)  # seated: FIND never walks
