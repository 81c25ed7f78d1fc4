"""The evolving-graph adapter: its import shim and three fixes (each test shows the bug in an unfixed copy
of the real simulator and the fixed behaviour in a copy with only that fix missing or present), and its
state copy, whose fast path (simulator internals) and public-API fallback give the same episodes."""
from __future__ import annotations

from pathlib import Path

import pytest

from eval_agent.envs.virtualhome import VirtualHomeEnv, evolving_graph_adapter
from eval_agent.envs.virtualhome.evolving_graph_adapter import ALL_FIXES, copy_state, load_simulator

CHAR, KITCHEN, BEDROOM, TABLE, BED, SHIRT = 1, 10, 20, 11, 21, 22


def _graph(sim):
    nodes = [
        {"id": CHAR, "class_name": "character", "category": "Characters", "properties": [], "states": []},
        {"id": KITCHEN, "class_name": "kitchen", "category": "Rooms", "properties": [], "states": []},
        {"id": BEDROOM, "class_name": "bedroom", "category": "Rooms", "properties": [], "states": []},
        {"id": TABLE, "class_name": "table", "category": "Furniture", "properties": ["SURFACES"], "states": []},
        {"id": BED, "class_name": "bed", "category": "Furniture", "properties": ["LIEABLE", "SITTABLE", "SURFACES"],
         "states": []},
        {"id": SHIRT, "class_name": "clothes_shirt", "category": "Clothes",
         "properties": ["CLOTHES", "GRABBABLE"], "states": []},
    ]
    edges = [(CHAR, "INSIDE", KITCHEN), (TABLE, "INSIDE", KITCHEN), (BED, "INSIDE", BEDROOM),
             (SHIRT, "ON", CHAR), (SHIRT, "INSIDE", KITCHEN)]
    return sim.environment.EnvironmentGraph(
        {"nodes": nodes, "edges": [{"from_id": a, "relation_type": r, "to_id": b} for a, r, b in edges]})


def _run(sim, lines: list[str]):
    """Execute script lines one by one on a fresh state; returns (ok flags, final state)."""
    graph = _graph(sim)
    state = sim.environment.EnvironmentState(graph, {}, instance_selection=True)
    executor = sim.execution.ScriptExecutor(graph, {})
    oks = []
    for text in lines:
        script = sim.scripts.read_script_from_list_string([text])
        ok, state = executor.execute_one_step(script, state)
        oks.append(ok)
    return oks, state


def _has(sim, state, a, rel, b):
    return state.has_edge(state.get_node(a), sim.environment.Relation[rel], state.get_node(b))


def test_shim_loads_private_copies_without_the_unity_client():
    fixed, unfixed = load_simulator(), load_simulator(())
    assert fixed is load_simulator(ALL_FIXES)  # cached per set of fixes
    assert fixed.execution is not unfixed.execution
    assert fixed.execution.ScriptExecutor._action_executors is not unfixed.execution.ScriptExecutor._action_executors
    import sys
    assert "virtualhome" not in sys.modules or not hasattr(sys.modules["virtualhome"], "UnityCommunication")
    with pytest.raises(ValueError, match="unknown simulator fixes"):
        load_simulator({"nope"})


def test_fix_find_of_a_distant_object():
    line = [f"[FIND] <bed> ({BED})"]
    with pytest.raises(TypeError):
        _run(load_simulator(ALL_FIXES - {"find"}), line)
    sim = load_simulator()
    oks, state = _run(sim, line)
    assert oks == [True]
    assert _has(sim, state, CHAR, "CLOSE", BED) and _has(sim, state, CHAR, "INSIDE", BEDROOM)


def test_fix_character_state_is_seen_by_later_actions():
    lines = [f"[WALK] <bed> ({BED})", f"[LIE] <bed> ({BED})", "[SLEEP]", "[STANDUP]"]
    oks, _ = _run(load_simulator(ALL_FIXES - {"char_state"}), lines)
    assert oks[:2] == [True, True] and oks[2] is False  # sleeping after lying down fails without the fix
    sim = load_simulator()
    oks, state = _run(sim, lines)
    assert oks == [True, True, True, True]
    assert "LYING" not in {s.name for s in state.get_node(CHAR).states}


def test_fix_putoff():
    line = [f"[PUTOFF] <clothes_shirt> ({SHIRT})"]
    with pytest.raises(TypeError):
        _run(load_simulator(ALL_FIXES - {"putoff"}), line)
    sim = load_simulator()
    oks, state = _run(sim, line)
    assert oks == [True]
    assert not _has(sim, state, SHIRT, "ON", CHAR)
    oks, _ = _run(sim, line + line)  # not worn any more: the second one fails cleanly
    assert oks == [True, False]


def test_fast_and_public_state_copies_are_equal_and_independent():
    sim = load_simulator()
    graph = _graph(sim)
    state = sim.environment.EnvironmentState(graph, {}, instance_selection=True)
    executor = sim.execution.ScriptExecutor(graph, {})
    for text in (f"[WALK] <bed> ({BED})", f"[LIE] <bed> ({BED})"):
        ok, state = executor.execute_one_step(sim.scripts.read_script_from_list_string([text]), state)
        assert ok
    before = state.to_dict()
    fast, public = copy_state(state, fast=True), copy_state(state, fast=False)
    assert fast.to_dict() == public.to_dict() == before
    stood = []
    for copy in (fast, public):  # a step on a copy leaves the original as it was, and both copies step alike
        ok, after = executor.execute_one_step(sim.scripts.read_script_from_list_string(["[STANDUP]"]), copy)
        assert ok and "LYING" not in {s.name for s in after.get_node(CHAR).states}
        stood.append(after.to_dict())
    assert stood[0] == stood[1] != before
    assert state.to_dict() == before


def test_fast_path_and_public_fallback_play_the_same_episodes(virtualhome_data: Path):
    fast = VirtualHomeEnv(virtualhome_data / "vh_seen_test.jsonl", virtualhome_data)
    public = VirtualHomeEnv(virtualhome_data / "vh_seen_test.jsonl", virtualhome_data, internals=False)
    assert fast.fast and not public.fast
    for tid in ("132", "1651", "132"):  # a task again after another (restored from a cached snapshot)
        actions = fast.expert_actions(tid) + ["walk to bed", "grab towel"]
        for t in (0, len(actions) // 2, len(actions)):
            assert fast.reset_to_prefix(tid, actions[:t]) == public.reset_to_prefix(tid, actions[:t])
            assert fast.execute("walk to dresser") == public.execute("walk to dresser")


def test_an_untested_virtualhome_takes_the_public_path(virtualhome_data: Path, monkeypatch, caplog):
    assert evolving_graph_adapter.internals_supported()  # the pinned version is the tested one
    monkeypatch.setitem(evolving_graph_adapter.TESTED_VERSIONS, "virtualhome", ("0.0.1",))
    evolving_graph_adapter.internals_supported.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=evolving_graph_adapter.__name__):
            env = VirtualHomeEnv(virtualhome_data / "vh_seen_test.jsonl", virtualhome_data)
        assert not env.fast
        assert "virtualhome 2.3.0 (tested: 0.0.1)" in caplog.text
    finally:
        monkeypatch.undo()
        evolving_graph_adapter.internals_supported.cache_clear()
    assert VirtualHomeEnv(virtualhome_data / "vh_seen_test.jsonl", virtualhome_data).fast
