"""STeCa-format VirtualHome tasks on VirtualHome's own scene graphs, with a known initial graph.

The seen split (``vh_seen_test.jsonl``) is the only STeCa VirtualHome data we have, and its
per-task initial graphs are not public, so the environment rebuilds them from the records
(:mod:`eval_agent.envs.virtualhome.graph`). This module makes held-out-style tasks *with* a known
initial graph, to test that reconstruction and the simulator on situations the seen split lacks:

* **homes and rooms**: all seven ``TrimmedTestScene`` graphs, every room with the needed furniture;
* **action sequences**: sitting or lying (``[SIT]``, ``[LIE]``) followed by ``[FIND]``,
  ``[SWITCHON]``, ``[SWITCHOFF]``, ``[TYPE]``, ``[GRAB]``, ``[READ]``, ``[WATCH]`` or ``[SLEEP]``,
  with and without a ``[FIND]`` before the act, started from a room or from a ``[FIND]`` walk;
* **object classes and ids beyond the scene graph's**: remote controls, cell phones, novels,
  magazines and mugs are added with ids from 1000, placed as VirtualHome's preparation places a
  missing object (``object_script_placing.json``: ``ON``/``INSIDE`` a destination of a listed
  class), in the room of the seat, ``CLOSE`` to the destination and to the destination's
  neighbours (what Unity's proximity gives the objects of a real scene).

Per task: a *reference* initial graph (the scene with VirtualHome's default states, the added
objects and the character in a start room), a program that the evolving-graph simulator (with the
fixes of :mod:`eval_agent.envs.virtualhome.evolving_graph_adapter`) plays to the end on that graph
(programs that do not play are dropped, as VirtualHome's program set keeps executable programs only), and a record in
STeCa's jsonl format: ``ObserANDState`` written as STeCa's environment writes its observations
(every node of a class the character is close to, with its states; ``a ON b`` relations among the
close objects; ``You have X.``), and ``revised_graph`` from the difference between the reference
initial and final graphs (nodes whose states changed; edges that touch the character or a program
object and appear or disappear).

Output folder::

    vh_generated.jsonl                                   the tasks (STeCa's jsonl schema)
    reference_init_graphs/<Scene>_graph/<family>/<n>.json  {"init_graph": ...} per task

The folder is a task file for :class:`~eval_agent.envs.virtualhome.VirtualHomeEnv` with the shared
data folder as ``data_dir`` (scene graphs and resources are read there, never copied). Without
``init_graph_dir`` the environment rebuilds each graph from the record, as on STeCa's held-out
split; with ``init_graph_dir=<out>/reference_init_graphs`` it plays the reference graphs.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from eval_agent.envs.virtualhome.actions import program_line_to_text
from eval_agent.envs.virtualhome.graph import (ROOM_CATEGORY, Resources, default_node_states, load_resources,
                                               load_scene)
from eval_agent.envs.virtualhome.evolving_graph_adapter import Simulator, load_simulator
from eval_agent.envs.virtualhome.task_files import Edge, ProgramLine

logger = logging.getLogger(__name__)

SCENES = tuple(f"TrimmedTestScene{k}" for k in range(1, 8))
FIRST_ADDED_ID = 1000
PATH_PREFIX = "generated/programs_processed_precond_nograb_morepreconds/executable_programs"
TASK_FILE = "vh_generated.jsonl"
REFERENCE_DIR = "reference_init_graphs"
_HIDDEN_RELATIONS = ("CLOSE", "FACING", "INSIDE", "HOLDS_LH", "HOLDS_RH")
Line = tuple[str, tuple[tuple[str, int], ...]]


@dataclass
class _Home:
    """One reference initial graph under construction: nodes by id, a set of edge triples."""

    scene: str
    nodes: dict[int, dict[str, Any]]
    edges: set[Edge]
    char: int
    next_id: int = FIRST_ADDED_ID

    def room_of(self, nid: int) -> int | None:
        for a, r, b in self.edges:
            if a == nid and r == "INSIDE" and self.nodes[b]["category"] == ROOM_CATEGORY:
                return b
        return None

    def of_class(self, classes: Sequence[str], room: int | None = None) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n["class_name"] in classes
                      and (room is None or self.room_of(i) == room))

    def close(self, nid: int) -> set[int]:
        return {b for a, r, b in self.edges if a == nid and r == "CLOSE"}

    def add_object(self, cls: str, res: Resources, dest: int, relation: str | None) -> int:
        """Add a ``cls`` (id from 1000) in ``dest``'s room, ``relation`` ``dest`` when given (VirtualHome's
        placing), ``CLOSE`` to ``dest`` and to ``dest``'s neighbours in that room."""
        nid = self.next_id
        self.next_id += 1
        same = self.of_class([cls])
        props = list(self.nodes[same[0]]["properties"]) if same else list(res.properties.get(cls, []))
        category = self.nodes[same[0]]["category"] if same else "placable_objects"
        node = {"id": nid, "class_name": cls, "category": category, "properties": props, "states": []}
        node["states"] = default_node_states(node)
        if "HAS_SWITCH" in props and not {"ON", "OFF"} & set(node["states"]):
            node["states"].append("OFF")
        self.nodes[nid] = node
        room = self.room_of(dest)
        assert room is not None
        self.edges |= {(nid, "INSIDE", room), (nid, "CLOSE", dest), (dest, "CLOSE", nid)}
        if relation:
            self.edges.add((nid, relation, dest))
        for m in self.close(dest):
            if m != nid and self.nodes[m]["category"] != ROOM_CATEGORY and self.room_of(m) == room:
                self.edges |= {(nid, "CLOSE", m), (m, "CLOSE", nid)}
        return nid

    def graph(self) -> dict[str, Any]:
        return {"nodes": [self.nodes[i] for i in sorted(self.nodes)],
                "edges": [{"from_id": a, "relation_type": r, "to_id": b} for a, r, b in sorted(self.edges)]}


def reference_home(scene: dict[str, Any], scene_name: str) -> _Home:
    """The scene with VirtualHome's default states and a character without edges (placed later)."""
    nodes = {}
    for nid, n in scene["nodes"].items():
        node = {"id": nid, "class_name": n["class_name"], "category": n.get("category") or "placable_objects",
                "properties": list(n.get("properties", [])), "states": list(n.get("states", []))}
        node["states"] = default_node_states(node)
        if "HAS_SWITCH" in node["properties"] and not {"ON", "OFF"} & set(node["states"]):
            node["states"].append("OFF")  # VirtualHome's default for switches (lights are ON already)
        nodes[nid] = node
    char = min(i for i, n in nodes.items() if n["class_name"] == "character")
    edges = {e for e in scene["edges"] if char not in (e[0], e[2])}
    return _Home(scene_name, nodes, edges, char)


# ------------------------------------------------------------------ program families
@dataclass(frozen=True)
class Draft:
    """A family's proposal: title, description and program (``(ACTION, ((class, id), ...))`` lines)."""

    title: str
    description: str
    lines: tuple[Line, ...]


def _p(home: _Home, *ids: int) -> tuple[tuple[str, int], ...]:
    return tuple((home.nodes[i]["class_name"], i) for i in ids)


def _room_name(home: _Home, room: int) -> str:
    return home.nodes[room]["class_name"]


def _seat_near(home: _Home, rng: random.Random, target: int, prop: str) -> int | None:
    """A node with ``prop`` (not a mat) in ``target``'s room that is close to it."""
    room = home.room_of(target)
    near = home.close(target)
    seats = [i for i in sorted(home.nodes) if prop in home.nodes[i]["properties"] and home.room_of(i) == room
             and home.nodes[i]["class_name"] != "mat" and i in near]
    return rng.choice(seats) if seats else None


def _place(home: _Home, res: Resources, rng: random.Random, cls: str, room: int, near: int) -> int | None:
    """Add a ``cls`` on a listed destination in ``room``, preferring ``near`` or its neighbours."""
    options = []
    for d in res.placing.get(cls, []):
        if d["relation"] != "ON":  # inside a closed container it could not be grabbed without opening
            continue
        for i in home.of_class([d["destination"]], room):
            options.append((0 if i == near or i in home.close(near) else 1, i, "ON"))
    if not options:
        return None
    best = min(o[0] for o in options)
    _, dest, rel = rng.choice(sorted(o for o in options if o[0] == best))
    return home.add_object(cls, res, dest, rel)


def _go(home: _Home, rng: random.Random, target: int) -> Line:
    return (rng.choice(("FIND", "WALK")), _p(home, target))


def _target_and_seat(home: _Home, res: Resources, rng: random.Random, classes: Sequence[str],
                     seat_classes: Sequence[str], prop: str) -> tuple[int, int] | None:
    """An object of ``classes`` and a seat close to it: from the scene, or (VirtualHome's preparation of a
    program whose room lacks the object) a new ``classes[0]`` (id from 1000) next to a seat of the scene."""
    targets = home.of_class(classes)
    rng.shuffle(targets)
    if rng.random() < 0.6:
        for t in targets:
            seat = _seat_near(home, rng, t, prop)
            if seat is not None:
                return t, seat
    seats = [i for i in home.of_class(seat_classes) if prop in home.nodes[i]["properties"]
             and home.room_of(i) is not None]
    if not seats:
        return None
    seat = rng.choice(seats)
    return home.add_object(classes[0], res, seat, None), seat


def family_tv(home: _Home, res: Resources, rng: random.Random) -> Draft | None:
    """Grab the remote, sit near the television, find it, switch it on, watch."""
    for tv, seat in [p for p in [_target_and_seat(home, res, rng, ["television"], ["couch", "sofa", "chair"],
                                                  "SITTABLE")] if p]:
        room = home.room_of(tv)
        remote = _place(home, res, rng, "remote_control", room, seat)
        if remote is None:
            return None
        lines = [("WALK", _p(home, room)), ("FIND", _p(home, remote)), ("GRAB", _p(home, remote)),
                 _go(home, rng, seat), ("SIT", _p(home, seat))]
        if rng.random() < 0.7:
            lines.append(("FIND", _p(home, tv)))
        lines += [("SWITCHON", _p(home, tv))] + ([("TURNTO", _p(home, tv)), ("WATCH", _p(home, tv))] if rng.random() < 0.5 else [])
        return Draft("Watch TV", f"Take the remote control, sit on the {home.nodes[seat]['class_name']} "
                                 f"and turn on the television.", tuple(lines))
    return None


def family_computer(home: _Home, res: Resources, rng: random.Random) -> Draft | None:
    """Sit at the computer, switch it on, type on the keyboard."""
    for pc, seat in [p for p in [_target_and_seat(home, res, rng, ["computer"], ["chair"], "SITTABLE")] if p]:
        keyboards = [k for k in home.of_class(["keyboard"], home.room_of(pc)) if k in home.close(pc)]
        kb = keyboards[0] if keyboards else home.add_object("keyboard", res, pc, None)
        room = home.room_of(pc)
        lines: list[Line] = [("WALK", _p(home, room))]
        if rng.random() < 0.3:
            lines.append(("WALK", _p(home, pc)))
        lines += [_go(home, rng, seat), ("SIT", _p(home, seat))]
        if rng.random() < 0.7:
            lines.append(("FIND", _p(home, pc)))
        lines.append(("SWITCHON", _p(home, pc)))
        if rng.random() < 0.6:
            lines.append(("FIND", _p(home, kb)))
        lines.append(("TYPE", _p(home, kb)))
        return Draft("Work", "Sit down at the computer, turn it on and type.", tuple(lines))
    return None


def family_lamp_in_bed(home: _Home, res: Resources, rng: random.Random) -> Draft | None:
    """Lie down in bed and switch off the lamp next to it."""
    for lamp, bed in [p for p in [_target_and_seat(home, res, rng, ["tablelamp", "light"], ["bed", "couch", "sofa"],
                                                   "LIEABLE")] if p]:
        lines: list[Line] = [("WALK", _p(home, home.room_of(lamp))), _go(home, rng, bed), ("LIE", _p(home, bed))]
        if rng.random() < 0.7:
            lines.append(("FIND", _p(home, lamp)))
        lines.append(("SWITCHOFF", _p(home, lamp)))
        if rng.random() < 0.5:
            lines.append(("SLEEP", ()))
        return Draft("Go to sleep", f"Lie on the {home.nodes[bed]['class_name']} and turn off the light.", tuple(lines))
    return None


def family_grab_lying(home: _Home, res: Resources, rng: random.Random) -> Draft | None:
    """Lie or sit down, then find and grab a pillow (of the scene) or a phone (added)."""
    beds = [b for b in home.of_class(["bed", "couch", "sofa"])]
    rng.shuffle(beds)
    for bed in beds:
        room = home.room_of(bed)
        if room is None:
            continue
        pillows = [p for p in home.of_class(["pillow"], room) if p in home.close(bed)]
        if pillows and rng.random() < 0.5:
            obj = pillows[0]
        else:
            obj = _place(home, res, rng, rng.choice(("cellphone", "magazine", "mug")), room, bed)
            if obj is None:
                continue
        pose = "LIE" if "LIEABLE" in home.nodes[bed]["properties"] and rng.random() < 0.6 else "SIT"
        lines: list[Line] = [("WALK", _p(home, room)), _go(home, rng, bed), (pose, _p(home, bed))]
        if rng.random() < 0.7:
            lines.append(("FIND", _p(home, obj)))
        lines.append(("GRAB", _p(home, obj)))
        if home.nodes[obj]["class_name"] == "cellphone" and rng.random() < 0.6:
            lines.append(("SWITCHON", _p(home, obj)))
        name = home.nodes[obj]["class_name"].replace("_", " ")
        return Draft("Relax", f"{'Lie' if pose == 'LIE' else 'Sit'} on the {home.nodes[bed]['class_name']} and "
                              f"pick up the {name}.", tuple(lines))
    return None


def family_read(home: _Home, res: Resources, rng: random.Random) -> Draft | None:
    """Take a novel or magazine (added), sit or lie down, read it."""
    seats = home.of_class(["bed", "couch", "sofa", "chair"])
    rng.shuffle(seats)
    for seat in seats:
        room = home.room_of(seat)
        if room is None:
            continue
        book = _place(home, res, rng, rng.choice(("novel", "magazine")), room, seat)
        if book is None:
            continue
        pose = "LIE" if "LIEABLE" in home.nodes[seat]["properties"] and rng.random() < 0.5 else "SIT"
        lines = (("WALK", _p(home, room)), ("FIND", _p(home, book)), ("GRAB", _p(home, book)),
                 _go(home, rng, seat), (pose, _p(home, seat)), ("READ", _p(home, book)))
        return Draft("Read book", f"Take the {home.nodes[book]['class_name']} and read it on the "
                                  f"{home.nodes[seat]['class_name']}.", lines)
    return None


_STANDING_OBJECTS = {"SWITCHON": ("laptop", "cellphone", "radio", "candle"),
                     "GRAB": ("mug", "bowl", "notes", "toothbrush", "towel", "cellphone")}


def family_standing_act(home: _Home, res: Resources, rng: random.Random) -> Draft | None:
    """Go to a table or counter, switch on or grab an object (added) resting on it without finding it
    first; a grabbed object is then put on another surface."""
    act = rng.choice(sorted(_STANDING_OBJECTS))
    cls = rng.choice(_STANDING_OBJECTS[act])
    spots = [i for d in res.placing.get(cls, []) if d["relation"] == "ON"
             for i in home.of_class([d["destination"]]) if home.room_of(i) is not None]
    if not spots:
        return None
    spot = rng.choice(sorted(set(spots)))
    room = home.room_of(spot)
    assert room is not None
    obj = home.add_object(cls, res, spot, "ON")
    lines: list[Line] = [("WALK", _p(home, room)), _go(home, rng, spot), (act, _p(home, obj))]
    name = cls.replace("_", " ")
    if act == "SWITCHON":
        return Draft(f"Turn on {name}", f"Go to the {home.nodes[spot]['class_name']} and switch on the {name}.",
                     tuple(lines))
    surfaces = [i for i in sorted(home.nodes) if "SURFACES" in home.nodes[i]["properties"] and i != spot
                and home.room_of(i) is not None and home.nodes[i]["category"] == "Furniture"]
    if not surfaces:
        return None
    dest = rng.choice(surfaces)
    lines += [_go(home, rng, dest), ("PUTBACK", _p(home, obj, dest))]
    return Draft(f"Put away {name}", f"Take the {name} from the {home.nodes[spot]['class_name']} and put it on the "
                                     f"{home.nodes[dest]['class_name']}.", tuple(lines))


FAMILIES: dict[str, Callable[[_Home, Resources, random.Random], Draft | None]] = {
    "tv": family_tv, "computer": family_computer, "lamp_in_bed": family_lamp_in_bed,
    "grab_lying": family_grab_lying, "read": family_read, "standing_act": family_standing_act,
}


# ------------------------------------------------------------------ recording (STeCa's formats)
def steca_observation(state: Any, sim: Simulator, char: int) -> str:
    """The observation text STeCa's environment shows after a successful step (its layout, sorted).

    Every node whose class is among the classes the character is close to is listed with its states
    (``couch is DIRTY, couch is CLEAN``), then the non-spatial relations (``a ON b``) among the
    objects close to the character, then ``You have X.``; empty when nothing is close.
    """
    R = sim.environment.Relation
    char_node = state.get_node(char)
    close = {n.id: n for n in state.get_nodes_from(char_node, R.CLOSE)}
    classes = {n.class_name for n in close.values()}
    items = sorted({f"{n.class_name} is {' and '.join(sorted(s.name for s in n.states))}" if n.states
                    else n.class_name for c in classes for n in state.get_nodes_by_attr("class_name", c)})
    rels = sorted({f"{a.class_name} {r.name} {b.class_name}" for a in close.values() for r in R
                   if r.name not in _HIDDEN_RELATIONS for b in state.get_nodes_from(a, r) if b.id in close})
    held = sorted(n.class_name for r in (R.HOLDS_RH, R.HOLDS_LH) for n in state.get_nodes_from(char_node, r))
    text = ", ".join(items + rels) + ". " if items or rels else ""
    if held:
        text += f"You have {', '.join(held)}. "
    return text


def play_reference(sim: Simulator, graph: dict[str, Any], program: Sequence[ProgramLine], char: int,
                   name_equivalence: dict[str, list[str]]) -> tuple[Any, list[str]] | None:
    """Play ``program`` on ``graph``: the final state and one STeCa observation per line, or None if a line fails."""
    E, S, X = sim.environment, sim.scripts, sim.execution
    state = E.EnvironmentState(E.EnvironmentGraph(graph), name_equivalence, instance_selection=True)
    observations = []
    for line in program:
        script = S.Script([S.ScriptLine(S.Action[line.action], [S.ScriptObject(n, i) for n, i in line.params], 0)])
        try:
            state = next(X.ScriptExecutor.call_action_method(script, state, X.ExecutionInfo(), 0), None)
        except Exception as e:  # noqa: BLE001 - a rough edge of the simulator: the program is not executable
            logger.debug("reference play of %s raised %r", line, e)
            state = None
        if state is None:
            return None
        observations.append(steca_observation(state, sim, char))
    return state, observations


def revised_graph(init: dict[str, Any], final: dict[str, Any], program: Sequence[ProgramLine],
                  char: int) -> dict[str, Any]:
    """STeCa's goal record from the reference initial and final graphs (see the module doc)."""
    start = {n["id"]: n for n in init["nodes"]}
    involved = {char} | {i for line in program for _, i in line.params}
    nodes = []
    for n in final["nodes"]:
        s = start.get(n["id"])
        if s is not None and set(s["states"]) != set(n["states"]):
            nodes.append({"id": n["id"], "class_name": n["class_name"], "category": n["category"],
                          "properties": list(n["properties"]), "states": list(n["states"]),
                          "prefab_name": None, "bounding_box": None})
    triple = lambda e: (e["from_id"], e["relation_type"], e["to_id"])  # noqa: E731
    e0 = {triple(e) for e in init["edges"] if e["from_id"] in involved or e["to_id"] in involved}
    e1 = {triple(e) for e in final["edges"] if e["from_id"] in involved or e["to_id"] in involved}
    edge = lambda t: {"from_id": t[0], "relation_type": t[1], "to_id": t[2]}  # noqa: E731
    return {"nodes": nodes, "revised_nodes": [edge(t) for t in sorted(e0 - e1)],
            "revised_add_edges": [edge(t) for t in sorted(e1 - e0)]}


def task_record(task_id: str, path: str, draft: Draft, program: Sequence[ProgramLine], observations: list[str],
                goal: dict[str, Any]) -> dict[str, Any]:
    """One line of STeCa's VirtualHome jsonl (all 12 keys)."""
    texts = [program_line_to_text(line) for line in program]
    object_ids: dict[str, int] = {}
    for line in program:
        for n, i in line.params:
            object_ids.setdefault(n, i)
    return {"task": draft.title, "description": draft.description,
            "new_program_lines": [str(line) for line in program],
            "steps": "\n".join(f"Step {k + 1}: {t}" for k, t in enumerate(texts)), "path": path,
            "action_list": texts, "ObserANDState": observations, "SuccessOrFail": [True] * len(texts),
            "FailReasons": [""] * len(texts), "revised_graph": goal, "id": task_id, "object_id_dict": object_ids}


# ------------------------------------------------------------------ entry point
def generate_scene_tasks(data_dir: str | Path, out_dir: str | Path, per_family_and_scene: int = 2,
                         seed: int = 0, families: Sequence[str] | None = None) -> dict[str, int]:
    """Write ``vh_generated.jsonl`` and the reference graphs under ``out_dir``; returns tasks per family.

    ``data_dir`` holds VirtualHome's ``scene_graphs/`` and ``resources/`` (read only). For each scene,
    family and ``n < per_family_and_scene`` a seeded draft is built and kept when the simulator plays it
    on its reference graph and its goal changes something. Deterministic for a given seed.
    """
    data = Path(data_dir)
    res = load_resources(data / "resources")
    sim = load_simulator()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(families or FAMILIES)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {sorted(FAMILIES)}")
    records: list[dict[str, Any]] = []
    counts = {f: 0 for f in names}
    for scene_name in SCENES:
        scene_path = data / "scene_graphs" / f"{scene_name}_graph.json"
        if not scene_path.exists():
            logger.warning("%s: missing; scene skipped", scene_path)
            continue
        scene = load_scene(str(scene_path))
        for fam in names:
            for n in range(per_family_and_scene):
                rng = random.Random(f"{seed}|{scene_name}|{fam}|{n}")
                home = reference_home(scene, scene_name)
                draft = FAMILIES[fam](home, res, rng)
                if draft is None:
                    continue
                rooms = sorted(i for i, nd in home.nodes.items() if nd["category"] == ROOM_CATEGORY)
                home.edges.add((home.char, "INSIDE", rng.choice(rooms)))
                program = [ProgramLine(a, p) for a, p in draft.lines]
                pairs = {p for line in program for p in line.params}
                if len({c for c, _ in pairs}) != len(pairs):  # text actions name classes: one object per class
                    continue
                init = home.graph()
                played = play_reference(sim, init, program, home.char, res.name_equivalence)
                if played is None:
                    logger.info("%s %s #%d: the program does not play on its reference graph; dropped",
                                scene_name, fam, n)
                    continue
                final_state, observations = played
                goal = revised_graph(init, final_state.to_dict(), program, home.char)
                if not goal["nodes"] and not goal["revised_add_edges"]:
                    continue
                rel = f"{scene_name}_graph/{fam}/{n}"
                tid = f"gen_{scene_name[-1]}_{fam}_{n}"
                records.append(task_record(tid, f"{PATH_PREFIX}/{rel}.txt", draft, program, observations, goal))
                ref = out / REFERENCE_DIR / f"{rel}.json"
                ref.parent.mkdir(parents=True, exist_ok=True)
                ref.write_text(json.dumps({"init_graph": init}))
                counts[fam] += 1
    (out / TASK_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    logger.info("scene tasks: %s -> %s", counts, out / TASK_FILE)
    return counts
