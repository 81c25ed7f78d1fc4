"""A generator of VirtualHome tasks for the mini benchmark, with no outside data.

Everything comes from this module: small home graphs built from our own object/property table
(the VirtualHome scene graphs in ``shared/`` carry a non-commercial licence and stay test data),
goals (switch on an appliance, put an object in or on a receptacle, sit, open or close, and pairs
of these), expert programs found by breadth-first search in the real ``evolving_graph``
simulator, short templated thoughts, and STeCa's formats:

``<out>/``
  ``scene_graphs/MiniHome<k>_graph.json``   the homes (nodes, edges)
  ``resources/*.json``                      our object tables in VirtualHome's resource format
  ``init_graphs/MiniHome<k>_graph/gen/<task>.json``  each task's initial graph (``init_graph``)
  ``vh_train.jsonl``, ``vh_seen_test.jsonl``, ``vh_unseen_test.jsonl``  tasks in STeCa's jsonl format
  ``vh_sft_train.json``                     expert trajectories in STeCa's SFT format

Splits: ``unseen`` uses held-out homes (the last ``n_unseen_homes``); ``train`` and ``seen`` share
the other homes but not goal instances. Every task is verified by playing its expert actions in
:class:`~eval_agent.envs.virtualhome.VirtualHomeEnv` on the written files; tasks that fail are
dropped (logged). Deterministic for a given seed.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from eval_agent.envs.virtualhome.actions import program_line_to_text
from eval_agent.envs.virtualhome.evolving_graph_adapter import Simulator, load_simulator
from eval_agent.envs.virtualhome.task_files import Goal, ProgramLine
from eval_agent.prompts import builtin_instruction

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------ our object table
# class -> (category, properties)
OBJECTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kitchen": ("Rooms", ()), "living_room": ("Rooms", ()), "bedroom": ("Rooms", ()), "bathroom": ("Rooms", ()),
    "character": ("Characters", ()),
    "kitchen_table": ("Furniture", ("SURFACES",)),
    "chair": ("Furniture", ("SITTABLE", "MOVABLE")),
    "sofa": ("Furniture", ("SITTABLE", "LIEABLE", "SURFACES")),
    "bed": ("Furniture", ("SITTABLE", "LIEABLE", "SURFACES")),
    "desk": ("Furniture", ("SURFACES",)),
    "bookshelf": ("Furniture", ("SURFACES", "CONTAINERS")),
    "kitchen_cabinet": ("Furniture", ("CAN_OPEN", "CONTAINERS")),
    "bathroom_cabinet": ("Furniture", ("CAN_OPEN", "CONTAINERS")),
    "dresser": ("Furniture", ("CAN_OPEN", "CONTAINERS")),
    "fridge": ("Appliances", ("CAN_OPEN", "CONTAINERS", "HAS_PLUG")),
    "microwave": ("Appliances", ("CAN_OPEN", "CONTAINERS", "HAS_SWITCH", "HAS_PLUG")),
    "dishwasher": ("Appliances", ("CAN_OPEN", "CONTAINERS", "HAS_SWITCH", "HAS_PLUG")),
    "washing_machine": ("Appliances", ("CAN_OPEN", "CONTAINERS", "HAS_SWITCH", "HAS_PLUG")),
    "television": ("Electronics", ("HAS_SWITCH", "HAS_PLUG", "LOOKABLE")),
    "computer": ("Electronics", ("HAS_SWITCH", "LOOKABLE")),
    "radio": ("Electronics", ("HAS_SWITCH", "HAS_PLUG")),
    "table_lamp": ("Lamps", ("HAS_SWITCH", "HAS_PLUG")),
    "cup": ("placable_objects", ("GRABBABLE", "RECIPIENT", "MOVABLE")),
    "plate": ("placable_objects", ("GRABBABLE", "SURFACES", "RECIPIENT", "MOVABLE")),
    "apple": ("placable_objects", ("GRABBABLE", "EATABLE", "MOVABLE")),
    "milk": ("placable_objects", ("GRABBABLE", "DRINKABLE", "POURABLE", "MOVABLE")),
    "book": ("placable_objects", ("GRABBABLE", "READABLE", "CAN_OPEN", "MOVABLE")),
    "remote_control": ("placable_objects", ("GRABBABLE", "MOVABLE")),
    "towel": ("placable_objects", ("GRABBABLE", "MOVABLE")),
    "soap": ("placable_objects", ("GRABBABLE", "MOVABLE")),
    "pillow": ("placable_objects", ("GRABBABLE", "MOVABLE")),
    "clothes_shirt": ("placable_objects", ("GRABBABLE", "CLOTHES", "MOVABLE")),
}
# room -> furniture/appliances that may stand in it
ROOM_FURNITURE: dict[str, tuple[str, ...]] = {
    "kitchen": ("kitchen_table", "chair", "fridge", "microwave", "kitchen_cabinet", "dishwasher"),
    "living_room": ("sofa", "television", "bookshelf", "table_lamp", "radio", "desk", "chair"),
    "bedroom": ("bed", "dresser", "desk", "computer", "table_lamp", "chair"),
    "bathroom": ("bathroom_cabinet", "washing_machine"),
}
# small object -> (relation, receptacle) where it may start
PLACES: dict[str, tuple[tuple[str, str], ...]] = {
    "cup": (("ON", "kitchen_table"), ("INSIDE", "kitchen_cabinet"), ("ON", "desk")),
    "plate": (("ON", "kitchen_table"), ("INSIDE", "kitchen_cabinet"), ("INSIDE", "dishwasher")),
    "apple": (("ON", "kitchen_table"), ("INSIDE", "fridge")),
    "milk": (("INSIDE", "fridge"), ("ON", "kitchen_table")),
    "book": (("ON", "bookshelf"), ("ON", "desk"), ("ON", "bed")),
    "remote_control": (("ON", "sofa"), ("ON", "desk")),
    "towel": (("INSIDE", "bathroom_cabinet"), ("ON", "bed")),
    "soap": (("INSIDE", "bathroom_cabinet"),),
    "pillow": (("ON", "bed"), ("ON", "sofa")),
    "clothes_shirt": (("INSIDE", "dresser"), ("INSIDE", "washing_machine"), ("ON", "bed")),
}
# put goals: object -> receptacles it may be put on/in
PUT_TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "cup": (("INSIDE", "dishwasher"), ("ON", "kitchen_table"), ("INSIDE", "kitchen_cabinet"), ("ON", "desk")),
    "plate": (("INSIDE", "dishwasher"), ("ON", "kitchen_table"), ("INSIDE", "kitchen_cabinet")),
    "apple": (("INSIDE", "fridge"), ("ON", "kitchen_table"), ("ON", "plate")),
    "milk": (("INSIDE", "fridge"), ("ON", "kitchen_table")),
    "book": (("ON", "bookshelf"), ("ON", "desk"), ("ON", "bed")),
    "remote_control": (("ON", "sofa"), ("ON", "desk")),
    "towel": (("INSIDE", "bathroom_cabinet"), ("INSIDE", "washing_machine"), ("ON", "bed")),
    "soap": (("INSIDE", "bathroom_cabinet"),),
    "pillow": (("ON", "bed"), ("ON", "sofa")),
    "clothes_shirt": (("INSIDE", "dresser"), ("INSIDE", "washing_machine"), ("ON", "bed")),
}
# the instruction of the SFT data = the evaluation's built-in one, so a model is evaluated on the prompt it learned
VIRTUALHOME_INSTRUCTION = builtin_instruction("virtualhome")
# For models trained from scratch on the generated tasks (the CPU demo): the reply format only, so that
# training does not spend most of its compute on a constant first turn (the full text is ~70% of a record's characters)
VIRTUALHOME_SHORT_INSTRUCTION = (
    "You are a household agent in a simulated home. Reach the goal below, one action per turn. Reply with\n"
    "Thought: <your reasoning>\nAction: <one action>"
)
INSTRUCTIONS = {"full": VIRTUALHOME_INSTRUCTION, "short": VIRTUALHOME_SHORT_INSTRUCTION}


def _props(cls: str) -> list[str]:
    return list(OBJECTS[cls][1])


def _default_states(cls: str) -> list[str]:
    props = set(OBJECTS[cls][1])
    states: list[str] = []
    if "CAN_OPEN" in props:
        states.append("CLOSED")
    if "HAS_SWITCH" in props:
        states.append("OFF")
    if "HAS_PLUG" in props:
        states.append("PLUGGED_IN")
    if OBJECTS[cls][0] not in ("Rooms", "Characters"):
        states.append("CLEAN")
    return states


# ------------------------------------------------------------------ homes
def make_home(index: int, seed: int) -> dict[str, Any]:
    """A small home: 3-4 rooms, their furniture, small objects on/in receptacles, one character.

    Returns ``{"name", "nodes", "edges"}``; every non-room node is ``INSIDE`` its room, placed
    objects are ``ON``/``INSIDE`` their receptacle and ``CLOSE`` to it both ways.
    """
    rng = random.Random(f"home|{seed}|{index}")
    rooms = ["kitchen", "living_room", "bedroom"] + (["bathroom"] if rng.random() < 0.7 else [])
    nodes: list[dict[str, Any]] = []
    edges: list[tuple[int, str, int]] = []
    ids = iter(range(1, 10_000))

    def add(cls: str) -> int:
        nid = next(ids)
        nodes.append({"id": nid, "class_name": cls, "category": OBJECTS[cls][0], "properties": _props(cls),
                      "states": _default_states(cls)})
        return nid

    room_ids = {r: add(r) for r in rooms}
    by_class: dict[str, list[tuple[int, int]]] = {}  # class -> [(id, room id)]
    for r in rooms:
        pool = list(ROOM_FURNITURE[r])
        keep = [c for c in pool if rng.random() < 0.8] or pool[:1]
        for cls in keep:
            nid = add(cls)
            edges.append((nid, "INSIDE", room_ids[r]))
            by_class.setdefault(cls, []).append((nid, room_ids[r]))
    for cls, places in PLACES.items():
        options = [(rel, rec) for rel, rec in places if rec in by_class]
        if not options or rng.random() < 0.15:
            continue
        rel, rec = options[rng.randrange(len(options))]
        rec_id, room = by_class[rec][rng.randrange(len(by_class[rec]))]
        nid = add(cls)
        edges += [(nid, "INSIDE", room), (nid, rel, rec_id), (nid, "CLOSE", rec_id), (rec_id, "CLOSE", nid)]
        by_class.setdefault(cls, []).append((nid, room))
    char = add("character")
    edges.append((char, "INSIDE", room_ids[rooms[0]]))
    return {"name": f"MiniHome{index}", "nodes": nodes,
            "edges": [{"from_id": a, "relation_type": r, "to_id": b} for a, r, b in edges]}


# ------------------------------------------------------------------ goals
@dataclass(frozen=True)
class GoalSpec:
    """One atomic goal: ``kind`` in switch_on/put/sit/open/close; ``obj`` (and ``dest``, ``rel``) node ids."""

    kind: str
    obj: int
    dest: int = -1
    rel: str = ""


def _describe(spec: GoalSpec, names: dict[int, str]) -> tuple[str, str]:
    """(title, description) of a goal, in words."""
    o = names[spec.obj].replace("_", " ")
    d = names.get(spec.dest, "").replace("_", " ")
    if spec.kind == "switch_on":
        return f"Turn on {o}", f"Find the {o} and switch it on"
    if spec.kind == "put":
        prep = "in" if spec.rel == "INSIDE" else "on"
        return f"Put {o} {prep} {d}", f"Take the {o} and put it {prep} the {d}"
    if spec.kind == "sit":
        return f"Sit on {o}", f"Go to the {o} and sit on it"
    if spec.kind == "open":
        return f"Open {o}", f"Go to the {o} and open it"
    return f"Close {o}", f"Go to the {o} and close it"


def candidate_goals(home: dict[str, Any]) -> list[GoalSpec]:
    """All atomic goals that make sense in ``home``, in a stable order."""
    nodes = {n["id"]: n for n in home["nodes"]}
    out: list[GoalSpec] = []
    by_class: dict[str, list[int]] = {}
    for n in home["nodes"]:
        by_class.setdefault(n["class_name"], []).append(n["id"])
    for nid, n in sorted(nodes.items()):
        props = set(n["properties"])
        if n["category"] in ("Appliances", "Electronics", "Lamps") and "HAS_SWITCH" in props:
            out.append(GoalSpec("switch_on", nid))
        if "SITTABLE" in props:
            out.append(GoalSpec("sit", nid))
        if "CAN_OPEN" in props and n["category"] != "placable_objects":
            out.append(GoalSpec("open", nid))
            out.append(GoalSpec("close", nid))  # the task starts with it open
        if n["class_name"] in PUT_TARGETS:
            for rel, rec in PUT_TARGETS[n["class_name"]]:
                for rid in by_class.get(rec, []):
                    out.append(GoalSpec("put", nid, rid, rel))
    return out


def goal_of(specs: Sequence[GoalSpec], init: dict[str, Any], final_nodes: dict[int, dict[str, Any]],
            char: int) -> Goal:
    """STeCa's goal record for ``specs``: goal nodes take their final form, put goals need their edge
    present and the object's start placement absent."""
    nodes, absent, present = [], [], []
    start_edges = {(e["from_id"], e["relation_type"], e["to_id"]) for e in init["edges"]}
    for s in specs:
        if s.kind in ("switch_on", "open", "close"):
            nodes.append(final_nodes[s.obj])
        elif s.kind == "sit":
            nodes.append(final_nodes[char])
            present.append((char, "ON", s.obj))
        elif s.kind == "put":
            present.append((s.obj, s.rel, s.dest))
            absent += [e for e in start_edges if e[0] == s.obj and e[1] in ("ON", "INSIDE") and e[2] != s.dest
                       and final_nodes.get(e[2], {}).get("category") != "Rooms"]
    return Goal(tuple(nodes), tuple(sorted(set(absent))), tuple(sorted(set(present))))


# ------------------------------------------------------------------ search
def _relevant(specs: Sequence[GoalSpec], init: dict[str, Any]) -> list[int]:
    ids = {s.obj for s in specs} | {s.dest for s in specs if s.dest >= 0}
    for e in init["edges"]:  # the receptacles holding goal objects (to open them)
        if e["from_id"] in ids and e["relation_type"] in ("ON", "INSIDE"):
            ids.add(e["to_id"])
    nodes = {n["id"]: n for n in init["nodes"]}
    return sorted(i for i in ids if nodes[i]["category"] not in ("Rooms", "Characters"))


def _candidate_lines(sim: Simulator, state: Any, relevant: list[int], char: int) -> list[ProgramLine]:
    R = sim.environment.Relation
    held = [n.id for r in (R.HOLDS_RH, R.HOLDS_LH) for n in state.get_nodes_from(state.get_node(char), r)]
    out = []
    for i in relevant:
        n = state.get_node(i)
        props = {p.name for p in n.properties}
        pl = ((n.class_name, i),)
        out.append(ProgramLine("WALK", pl))
        if "GRABBABLE" in props and i not in held:
            out.append(ProgramLine("GRAB", pl))
        if "CAN_OPEN" in props and n.category != "placable_objects":
            out.append(ProgramLine("OPEN", pl))
            out.append(ProgramLine("CLOSE", pl))
        if "HAS_SWITCH" in props:
            out.append(ProgramLine("SWITCHON", pl))
        if "SITTABLE" in props:
            out.append(ProgramLine("SIT", pl))
        for h in held:
            if h == i:
                continue
            hp = ((state.get_node(h).class_name, h), (n.class_name, i))
            if "SURFACES" in props:
                out.append(ProgramLine("PUTBACK", hp))
            if "CONTAINERS" in props or "CAN_OPEN" in props:
                out.append(ProgramLine("PUTIN", hp))
    return out


def _signature(sim: Simulator, state: Any, ids: Iterable[int]) -> tuple:
    sig = []
    for i in sorted(ids):
        node = state.get_node(i)
        sig.append((i, tuple(sorted(s.name for s in node.states))))
        for r in sim.environment.Relation:
            sig.append((i, r.name, tuple(sorted(state.get_node_ids_from(i, r)))))
    return tuple(sig)


def search_program(sim: Simulator, init: dict[str, Any], specs: Sequence[GoalSpec], goal_check,
                   max_depth: int = 10, max_states: int = 20000) -> list[ProgramLine] | None:
    """Shortest program (breadth-first, over actions on the goal-relevant objects) reaching the goal."""
    E, S = sim.environment, sim.scripts
    graph = E.EnvironmentGraph(init)
    char = next(n["id"] for n in init["nodes"] if n["class_name"] == "character")
    relevant = _relevant(specs, init)
    sig_ids = relevant + [char]
    start = E.EnvironmentState(graph, {}, instance_selection=True)
    queue: deque[tuple[Any, list[ProgramLine]]] = deque([(start, [])])
    seen = {_signature(sim, start, sig_ids)}
    while queue and len(seen) < max_states:
        state, prog = queue.popleft()
        if len(prog) >= max_depth:
            continue
        for line in _candidate_lines(sim, state, relevant, char):
            script = S.Script([S.ScriptLine(S.Action[line.action], [S.ScriptObject(n, i) for n, i in line.params], 0)])
            info = sim.execution.ExecutionInfo()
            try:
                nxt = next(sim.execution.ScriptExecutor.call_action_method(script, state, info, 0), None)
            except Exception:  # noqa: BLE001 - the simulator rejects some combinations by raising
                nxt = None
            if nxt is None:
                continue
            sig = _signature(sim, nxt, sig_ids)
            if sig in seen:
                continue
            seen.add(sig)
            if goal_check(nxt):
                return prog + [line]
            queue.append((nxt, prog + [line]))
    return None


# ------------------------------------------------------------------ thoughts and records
_THOUGHTS = {
    "WALK": "To {goal}, I need to get to the {o} first.",
    "GRAB": "The {o} is within reach, so I will pick it up.",
    "OPEN": "The {o} is closed; I should open it.",
    "CLOSE": "I am done with the {o}, so I will close it.",
    "SWITCHON": "Now I can switch on the {o}.",
    "SIT": "I am next to the {o}, so I can sit on it.",
    "PUTBACK": "I am holding the {o} and I am at the {d}, so I will put it there.",
    "PUTIN": "The {d} is ready, so I will put the {o} in it.",
}


def thought_for(line: ProgramLine, title: str) -> str:
    """A short templated thought leading to ``line``."""
    names = [n.replace("_", " ") for n, _ in line.params]
    tpl = _THOUGHTS.get(line.action, "Next I will {a}.")
    return tpl.format(goal=title[:1].lower() + title[1:], o=names[0] if names else "",
                      d=names[1] if len(names) > 1 else "", a=line.action.lower())


def task_record(task_id: str, home: str, title: str, description: str, program: Sequence[ProgramLine],
                goal: Goal) -> dict[str, Any]:
    """A task line in STeCa's VirtualHome jsonl format (what :func:`load_tasks` reads)."""
    texts = [program_line_to_text(line) for line in program]
    object_ids: dict[str, int] = {}
    for line in program:
        for n, i in line.params:
            object_ids.setdefault(n, i)
    edge = lambda e: {"from_id": e[0], "relation_type": e[1], "to_id": e[2]}  # noqa: E731
    return {
        "task": title, "description": description, "new_program_lines": [str(line) for line in program],
        "steps": "\n".join(f"Step {k + 1}: {t}" for k, t in enumerate(texts)),
        "path": f"generated/{home}_graph/gen/{task_id}.txt", "action_list": texts,
        "ObserANDState": [], "SuccessOrFail": [True] * len(texts), "FailReasons": [""] * len(texts),
        "revised_graph": {"nodes": list(goal.nodes), "revised_nodes": [edge(e) for e in goal.absent],
                          "revised_add_edges": [edge(e) for e in goal.present]},
        "id": task_id, "object_id_dict": object_ids,
    }


def resources_tables() -> dict[str, dict[str, Any]]:
    """Our object table in VirtualHome's four resource formats."""
    placing = {c: [{"destination": rec, "relation": "IN" if rel == "INSIDE" else "ON", "room": None}
                   for rel, rec in p] for c, p in PLACES.items()}
    states = {c: [s.lower() for s in _default_states(c)] for c in OBJECTS}
    return {"class_name_equivalence.json": {"tv": ["television"], "lamp": ["table_lamp"], "fridge": ["fridge"]},
            "properties_data.json": {c: list(p) for c, (_, p) in OBJECTS.items()},
            "object_script_placing.json": placing, "object_states.json": states}


# ------------------------------------------------------------------ main entry
def generate(out_dir: str | Path, n_homes: int = 6, n_unseen_homes: int = 2, tasks_per_home: int = 20,
             seen_per_home: int = 4, seed: int = 0, pair_fraction: float = 0.3, max_depth: int = 10,
             instruction: str | None = None) -> dict[str, int]:
    """Write homes, resources, tasks and SFT data under ``out_dir``; returns counts per split."""
    from eval_agent.envs.virtualhome import VirtualHomeEnv
    from eval_agent.envs.virtualhome.env import goal_reached

    out = Path(out_dir)
    (out / "scene_graphs").mkdir(parents=True, exist_ok=True)
    (out / "resources").mkdir(parents=True, exist_ok=True)
    for name, table in resources_tables().items():
        (out / "resources" / name).write_text(json.dumps(table, indent=1, sort_keys=True))
    sim = load_simulator()
    rels = {r.name: r for r in sim.environment.Relation}
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "seen": [], "unseen": []}
    for h in range(n_homes):
        home = make_home(h, seed)
        (out / "scene_graphs" / f"{home['name']}_graph.json").write_text(json.dumps({"nodes": home["nodes"],
                                                                                     "edges": home["edges"]}))
        rng = random.Random(f"tasks|{seed}|{h}")
        names = {n["id"]: n["class_name"] for n in home["nodes"]}
        char = next(i for i, c in names.items() if c == "character")
        rooms = [n["id"] for n in home["nodes"] if n["category"] == "Rooms"]
        atoms = candidate_goals(home)
        rng.shuffle(atoms)
        want = tasks_per_home
        made: list[dict[str, Any]] = []
        used: set[tuple] = set()
        tries = 0
        while len(made) < want and tries < want * 6 and atoms:
            tries += 1
            k = 2 if rng.random() < pair_fraction else 1
            specs = tuple(sorted(rng.sample(atoms, min(k, len(atoms))), key=lambda s: (s.kind, s.obj, s.dest)))
            if len({s.obj for s in specs}) < len(specs) or sum(s.kind == "sit" for s in specs) > 1 or specs in used:
                continue
            used.add(specs)
            if len({s.obj for s in specs if s.kind in ("open", "close")}) < sum(s.kind in ("open", "close") for s in specs):
                continue
            init = {"nodes": [dict(n, states=list(n["states"])) for n in home["nodes"]],
                    "edges": [e for e in home["edges"] if e["from_id"] != char]}
            init["edges"].append({"from_id": char, "relation_type": "INSIDE", "to_id": rooms[rng.randrange(len(rooms))]})
            for spec in specs:
                if spec.kind == "close":
                    node = next(n for n in init["nodes"] if n["id"] == spec.obj)
                    node["states"] = [st for st in node["states"] if st != "CLOSED"] + ["OPEN"]
            specs_goal = _placeholder_goal(specs, init, char)
            program = search_program(sim, init, specs, lambda st: goal_reached(st, specs_goal, rels), max_depth)
            if program is None:
                logger.info("%s: no program found for %s", home["name"], specs)
                continue
            pairs = {p for line in program for p in line.params}
            if len({n for n, _ in pairs}) != len(pairs):  # text actions name classes: keep them unambiguous
                logger.info("%s: program uses two objects of one class; skipped", home["name"])
                continue
            final = _final_nodes(sim, init, program)
            goal = goal_of(specs, init, final, char)
            parts = [_describe(s, names) for s in specs]
            title = " and ".join([parts[0][0]] + [p[0][:1].lower() + p[0][1:] for p in parts[1:]])
            description = ". ".join(p[1] for p in parts) + "."
            tid = f"{home['name']}_{len(made):03d}"
            made.append({"record": task_record(tid, home["name"], title, description, program, goal),
                         "init": init, "home": home["name"]})
        target = "unseen" if h >= n_homes - n_unseen_homes else None
        for i, t in enumerate(made):
            split = target or ("seen" if i < seen_per_home else "train")
            splits[split].append(t)
            p = out / "init_graphs" / f"{t['home']}_graph" / "gen" / f"{t['record']['id']}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"init_graph": t["init"]}))
    files = {"train": "vh_train.jsonl", "seen": "vh_seen_test.jsonl", "unseen": "vh_unseen_test.jsonl"}
    counts: dict[str, int] = {}
    prompt = instruction if instruction is not None else VIRTUALHOME_INSTRUCTION
    for split, items in splits.items():
        path = out / files[split]
        path.write_text("".join(json.dumps(t["record"]) + "\n" for t in items))
        env = VirtualHomeEnv(path, out)
        kept, sft = [], []
        for t in items:
            rec = t["record"]
            conv = expert_sft_conversation(env, rec["id"], prompt)
            if conv is None:
                logger.warning("%s: expert program does not reach the goal in the env; dropped", rec["id"])
                continue
            kept.append(rec)
            sft.append({"id": rec["id"], "game_file": rec["path"], "conversations": conv})
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        counts[split] = len(kept)
        if split == "train":
            (out / "vh_sft_train.json").write_text(json.dumps(sft, indent=1))
    logger.info("generated VirtualHome tasks: %s", counts)
    return counts


def _placeholder_goal(specs: Sequence[GoalSpec], init: dict[str, Any], char: int) -> Goal:
    """The goal used during search: states/edges only (final node forms are not known yet)."""
    nodes = {n["id"]: n for n in init["nodes"]}
    goal_nodes = []
    for s in specs:
        if s.kind == "switch_on":
            goal_nodes.append({"id": s.obj, "states": sorted((set(nodes[s.obj]["states"]) - {"OFF"}) | {"ON"})})
        elif s.kind == "open":
            goal_nodes.append({"id": s.obj, "states": sorted((set(nodes[s.obj]["states"]) - {"CLOSED"}) | {"OPEN"})})
        elif s.kind == "close":
            goal_nodes.append({"id": s.obj, "states": sorted((set(nodes[s.obj]["states"]) - {"OPEN"}) | {"CLOSED"})})
        elif s.kind == "sit":
            goal_nodes.append({"id": char, "states": ["SITTING"]})
    present = [(s.obj, s.rel, s.dest) for s in specs if s.kind == "put"] + \
              [(char, "ON", s.obj) for s in specs if s.kind == "sit"]
    return Goal(tuple(goal_nodes), (), tuple(present))


def _final_nodes(sim: Simulator, init: dict[str, Any], program: Sequence[ProgramLine]) -> dict[int, dict[str, Any]]:
    E, S = sim.environment, sim.scripts
    state = E.EnvironmentState(E.EnvironmentGraph(init), {}, instance_selection=True)
    for line in program:
        script = S.Script([S.ScriptLine(S.Action[line.action], [S.ScriptObject(n, i) for n, i in line.params], 0)])
        state = next(sim.execution.ScriptExecutor.call_action_method(script, state, sim.execution.ExecutionInfo(), 0))
    return {n.id: n.to_dict() for n in state.get_nodes()}


def expert_sft_conversation(env: Any, task_id: str, instruction: str) -> list[dict[str, str]] | None:
    """Play task ``task_id``'s ground-truth program in ``env`` (a ``VirtualHomeEnv``).

    Returns the SFT conversation ``[instruction, "OK", first observation, (Thought/Action,
    Observation)*]`` up to the step that wins, or None when an action is rejected or the goal is
    never reached.
    """
    first = env.reset(task_id)
    conv = [{"role": "user", "content": instruction}, {"role": "assistant", "content": "OK"},
            {"role": "user", "content": first}]
    task = env.task(task_id)
    for line, action in zip(task.program, env.expert_actions(task_id)):
        outcome = env.execute(action)
        if not outcome.valid:
            return None
        conv.append({"role": "assistant", "content": f"Thought: {thought_for(line, task.title)}\nAction: {action}"})
        conv.append({"role": "user", "content": f"Observation: {outcome.observation}"})
        if outcome.won:
            return conv
    return None


def expert_sft_from_tasks(task_file: str | Path, data_dir: str | Path, output: str | Path,
                          limit: int | None = None, instruction: str | None = None) -> dict[str, int]:
    """Expert SFT trajectories for an existing task file (e.g. the shared ``vh_seen_test.jsonl``).

    Every task's ground-truth program is played in :class:`~eval_agent.envs.virtualhome.VirtualHomeEnv`
    over ``data_dir``; the tasks whose program wins become SFT records (``id`` = the env's unique
    task id, ``game_file`` = the task's ``path``), the others are skipped and logged. ``limit``
    keeps the first ``limit`` winning tasks. Returns ``{"tasks", "written", "skipped"}``.
    """
    from eval_agent.envs.virtualhome import VirtualHomeEnv

    env = VirtualHomeEnv(task_file, data_dir)
    prompt = instruction if instruction is not None else VIRTUALHOME_INSTRUCTION
    sft: list[dict[str, Any]] = []
    skipped = 0
    for tid in env.task_ids():
        if limit is not None and len(sft) >= limit:
            break
        try:
            conv = expert_sft_conversation(env, tid, prompt)
        except Exception as e:  # noqa: BLE001 - one broken task must not stop the run
            logger.warning("%s, task %s: expert replay raised %s: %s", task_file, tid, type(e).__name__, e)
            conv = None
        if conv is None:
            logger.info("%s, task %s: the expert program does not win (%s); skipped", task_file, tid,
                        env.unreachable_reason(tid) or "reachable")
            skipped += 1
            continue
        sft.append({"id": tid, "game_file": env.game_file(tid), "conversations": conv})
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(sft, indent=1))
    counts = {"tasks": len(env.task_ids()), "written": len(sft), "skipped": skipped}
    logger.info("expert SFT from %s: %s -> %s", task_file, counts, out)
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Generate VirtualHome mini-benchmark tasks (no outside data); with --sft_from, "
                    "write expert SFT trajectories for an existing task file; with --scene_tasks_from, "
                    "write held-out-style tasks on VirtualHome's scene graphs.")
    ap.add_argument("--out", help="output data folder (usable as the env's data_dir)")
    ap.add_argument("--n_homes", type=int, default=6)
    ap.add_argument("--n_unseen_homes", type=int, default=2)
    ap.add_argument("--tasks_per_home", type=int, default=20)
    ap.add_argument("--seen_per_home", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--instruction", choices=sorted(INSTRUCTIONS), default="full",
                    help="first user turn of the SFT data: full (actions and rules) | short (reply format only, "
                         "for tiny models trained from scratch)")
    ap.add_argument("--sft_from", default=None,
                    help="a task jsonl (e.g. vh_seen_test.jsonl): play its programs and write --sft_out instead")
    ap.add_argument("--data_dir", default=None, help="with --sft_from: the folder with scene_graphs/ and resources/")
    ap.add_argument("--sft_out", default=None, help="with --sft_from: the SFT file to write (JSON array)")
    ap.add_argument("--limit", type=int, default=None, help="with --sft_from: keep the first N winning tasks")
    ap.add_argument("--scene_tasks_from", default=None,
                    help="a VirtualHome data folder (scene_graphs/, resources/): write held-out-style tasks on its "
                         "scene graphs to --out instead (see steca.generators.virtualhome_scene_tasks)")
    ap.add_argument("--per_family_and_scene", type=int, default=6,
                    help="with --scene_tasks_from: drafts per program family and scene")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.scene_tasks_from:
        if not args.out:
            ap.error("--scene_tasks_from needs --out")
        from steca.generators.virtualhome_scene_tasks import generate_scene_tasks
        logger.info("done: %s", generate_scene_tasks(args.scene_tasks_from, args.out, args.per_family_and_scene,
                                                     args.seed))
        return
    if args.sft_from:
        if not args.data_dir or not args.sft_out:
            ap.error("--sft_from needs --data_dir and --sft_out")
        logger.info("done: %s", expert_sft_from_tasks(args.sft_from, args.data_dir, args.sft_out, args.limit,
                                                      INSTRUCTIONS[args.instruction]))
        return
    if not args.out:
        ap.error("--out is required (or use --sft_from)")
    counts = generate(args.out, args.n_homes, args.n_unseen_homes, args.tasks_per_home, args.seen_per_home, args.seed,
                      instruction=INSTRUCTIONS[args.instruction])
    logger.info("done: %s", counts)


if __name__ == "__main__":
    main()
