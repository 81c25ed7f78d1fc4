"""Initial graphs for STeCa's VirtualHome tasks, rebuilt from the scene graphs and the task record.

STeCa started every task from a per-program initial graph of VirtualHome's program set that is not
available. :func:`build_initial_graph` reconstructs one, deterministically:

1. **Scene clean-up** (:func:`clean_scene`): the scene's edges become a set of ``(from, rel, to)``
   triples (exact duplicates, self-loops and edges to unknown nodes are dropped). This is linear in
   the number of edges and keeps every valid edge; STeCa's ``remove_duplicate_edge`` was quadratic
   and also dropped an edge whenever the reverse ``INSIDE`` edge existed (e.g. ``A CLOSE B`` with
   ``B INSIDE A``), with a result that depended on the edge order.
2. **Default states**, as VirtualHome's graph preparation sets them: openable things ``CLOSED``
   (doors ``OPEN``), pluggable things ``PLUGGED_IN``, every object ``CLEAN``, lights and lamps ``ON``;
   the character has no state and no edges.
3. **Missing program objects** (ids in ``object_id_dict`` that the scene lacks, 1000-1004) are
   added as VirtualHome's preparation adds them: properties from ``properties_data.json`` (or from
   the goal node when the goal lists it), the category of a same-class node (else
   ``placable_objects``), ``INSIDE`` a room.
4. **What the record reveals**:

   * ``revised_graph.revised_nodes`` are edges that held at the start and that the program removes
     (the character's start room, clothes worn, closeness...), so they are added;
   * ``ObserANDState`` (what STeCa's environment showed after each step): an object that an
     observation newly lists right after the character went to another program object (the
     *anchor*, see :func:`_observed_neighbours`) was close to it, so the pair gets ``CLOSE`` edges
     both ways (VirtualHome's "at reach" precondition), and an ``x ON y`` statement adds ``ON``;
     an added object then lives in its anchor's room (observations after the program moved an
     object are not used for it);
   * ``revised_graph.nodes`` give the class, category and properties of the goal nodes, and their
     start states are the goal states with the program's state changes undone (last line first);
     the first state-changing line on any other object implies its start state (``[OPEN]`` needs
     ``CLOSED``, ``[SWITCHON]`` needs ``OFF``, ``[PLUGIN]`` needs ``PLUGGED_OUT``...); a program
     that starts with ``[STANDUP]``/``[WAKEUP]``/``[SLEEP]`` starts sitting/lying;
   * what the program reaches without walking to it (:func:`reach_neighbours`): every recorded
     step succeeded, so an object that a line needing reach (``[FIND]`` while seated,
     ``[SWITCHON]``, ``[TYPE]``, ``[GRAB]``...) names was within reach of the seat the character
     sits or lies on (a seated character cannot walk), or, standing, of the last object walked to
     when no observation listed it: the pair gets ``CLOSE`` edges both ways. Which ``[FIND]`` lines
     walk is decided by :class:`Whereabouts`;
   * an added object with no room yet goes to the room the character is in when the program
     first uses it.
5. Sitting/lying targets are freed of objects resting on them when the program sits or lies on
   them (VirtualHome's ``free`` precondition).

With this, the ground-truth programs reach the goal in 186 of the 188 reachable tasks of
``vh_seen_test.jsonl`` (and 186 of all 247), and in every task of the held-out-style sets that
:mod:`steca.generators.virtualhome_scene_tasks` writes (sitting or lying before an act included).

Reachability (:func:`unreachable_reason`): a task is *reachable* when every node that its goal
requires to exist (ids in ``revised_graph.nodes`` and in ``revised_add_edges``) exists in the
initial graph. The goals of some tasks require relations to VirtualHome's random filler objects
(ids >= 2000); those objects are in no reconstruction, so such a task is *unreachable* (it still
runs and counts as a failure in the overall success rate).

A real initial graph (``init_graph`` of STeCa's ``init_and_final_graphs/<scene>/<subset>/<file>.json``)
can be used instead when a user has STeCa's archive; see :func:`load_real_init_graph`.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from eval_agent.envs.virtualhome.task_files import Edge, ProgramLine, VHTask

logger = logging.getLogger(__name__)

ROOM_CATEGORY = "Rooms"
_PAIRS = (("OPEN", "CLOSED"), ("ON", "OFF"), ("PLUGGED_IN", "PLUGGED_OUT"), ("CLEAN", "DIRTY"))
_OTHER = {a: b for p in _PAIRS for a, b in (p, p[::-1])}
# state a line needs before it runs (for the first line on an object), and the state it leaves.
_NEEDS = {"OPEN": "CLOSED", "CLOSE": "OPEN", "SWITCHON": "OFF", "SWITCHOFF": "ON",
          "PLUGIN": "PLUGGED_OUT", "PLUGOUT": "PLUGGED_IN"}
_LEAVES = {"OPEN": "OPEN", "CLOSE": "CLOSED", "SWITCHON": "ON", "SWITCHOFF": "OFF",
           "PLUGIN": "PLUGGED_IN", "PLUGOUT": "PLUGGED_OUT", "WASH": "CLEAN", "RINSE": "CLEAN",
           "SCRUB": "CLEAN", "WIPE": "CLEAN"}
_WALKS = ("WALK", "RUN", "FIND")


@dataclass(frozen=True)
class Resources:
    """VirtualHome's resource tables (read from a data folder; the wheel ships none)."""

    name_equivalence: dict[str, list[str]]
    properties: dict[str, list[str]]
    placing: dict[str, list[dict[str, Any]]]
    object_states: dict[str, list[str]]


def load_resources(folder: str | Path) -> Resources:
    """Read the four tables of ``<folder>`` (``class_name_equivalence.json`` ...)."""
    f = Path(folder)
    names = ("class_name_equivalence.json", "properties_data.json", "object_script_placing.json",
             "object_states.json")
    missing = [n for n in names if not (f / n).exists()]
    if missing:
        raise FileNotFoundError(f"{f}: missing VirtualHome resource files {missing}")
    tables = [json.loads((f / n).read_text(encoding="utf-8")) for n in names]
    return Resources(*tables)


@lru_cache(maxsize=16)
def load_scene(path: str) -> dict[str, Any]:
    """A scene graph file, cleaned (see :func:`clean_scene`). Cached; treat the result as read-only."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such scene graph")
    return clean_scene(json.loads(p.read_text(encoding="utf-8")), str(p))


def clean_scene(graph: dict[str, Any], source: str = "<scene>") -> dict[str, Any]:
    """Nodes by id and a set of edge triples; linear time, keeps every valid edge.

    Drops exact duplicate edges, self-loops and edges whose ends are not nodes (logged).
    """
    nodes = {int(n["id"]): n for n in graph["nodes"]}
    edges: set[Edge] = set()
    dropped = 0
    for e in graph["edges"]:
        a, r, b = int(e["from_id"]), str(e["relation_type"]).upper(), int(e["to_id"])
        if a == b or a not in nodes or b not in nodes:
            dropped += 1
            continue
        edges.add((a, r, b))
    if dropped:
        logger.debug("%s: dropped %d invalid edges", source, dropped)
    return {"nodes": nodes, "edges": frozenset(edges)}


def _set_state(states: list[str], state: str) -> None:
    other = _OTHER.get(state)
    if other in states:
        states.remove(other)
    if state not in states:
        states.append(state)


def _default_states(node: dict[str, Any]) -> list[str]:
    states = [s.upper() for s in node.get("states", [])]
    props = set(node.get("properties", []))
    if node["category"] in (ROOM_CATEGORY, "Characters"):
        return [] if node["class_name"] == "character" else states
    if "CAN_OPEN" in props:
        _set_state(states, "OPEN" if node["class_name"] == "door" or node["category"] == "Doors" else "CLOSED")
    if "HAS_PLUG" in props:
        _set_state(states, "PLUGGED_IN")
    if "light" in node["class_name"] or "lamp" in node["class_name"]:
        _set_state(states, "ON")
    _set_state(states, "CLEAN")
    return states


def default_node_states(node: dict[str, Any]) -> list[str]:
    """The states VirtualHome's graph preparation gives ``node`` (a node dict; see step 2 of the module doc)."""
    return _default_states(node)


def _props_for(name: str, res: Resources) -> list[str]:
    if name in res.properties:
        return list(res.properties[name])
    for alt in res.name_equivalence.get(name, []):
        if alt in res.properties:
            return list(res.properties[alt])
    return []


def _initial_states_from_goal(final: list[str], node_id: int, program: tuple[ProgramLine, ...],
                              char_id: int) -> list[str]:
    """Undo the program's state changes on ``node_id`` (last line first) starting from ``final``."""
    states = [s.upper() for s in final]
    for line in reversed(program):
        ids = [i for _, i in line.params]
        if node_id == char_id:
            if line.action in ("SIT", "LIE", "STANDUP", "WAKEUP"):
                for s in ("SITTING", "LYING"):
                    if s in states:
                        states.remove(s)
            continue
        if ids and ids[0] == node_id and line.action in _NEEDS:
            _set_state(states, _NEEDS[line.action])
    return states


def _room_of(node_id: int, inside: dict[int, list[int]], nodes: dict[int, dict[str, Any]]) -> int | None:
    seen = set()
    frontier = [node_id]
    while frontier:
        nid = frontier.pop(0)
        if nid in seen:
            continue
        seen.add(nid)
        if nodes.get(nid, {}).get("category") == ROOM_CATEGORY and nid != node_id:
            return nid
        frontier.extend(sorted(inside.get(nid, [])))
    return None


def build_initial_graph(task: VHTask, scene: dict[str, Any], res: Resources) -> dict[str, Any]:
    """The reconstructed initial graph of ``task`` as ``{"nodes": [...], "edges": [...]}`` (see module doc)."""
    nodes: dict[int, dict[str, Any]] = {}
    for nid, n in scene["nodes"].items():
        node = {"id": nid, "class_name": n["class_name"], "category": n.get("category") or "placable_objects",
                "properties": list(n.get("properties", [])), "states": []}
        node["states"] = _default_states({**node, "states": list(n.get("states", []))})
        nodes[nid] = node
    char_ids = sorted(i for i, n in nodes.items() if n["class_name"] == "character")
    if not char_ids:
        raise ValueError(f"task {task.task_id}: scene {task.scene} has no character node")
    char = char_ids[0]
    edges: set[Edge] = {e for e in scene["edges"] if e[0] != char and e[2] != char}
    goal_nodes = {int(n["id"]): n for n in task.goal.nodes}
    category_of_class: dict[str, str] = {}
    for n in nodes.values():
        category_of_class.setdefault(n["class_name"], n["category"])

    # missing program objects
    for name, oid in sorted(task.object_ids.items(), key=lambda kv: kv[1]):
        if oid in nodes:
            continue
        g = goal_nodes.get(oid, {})
        props = list(g.get("properties") or _props_for(name, res))
        category = g.get("category") or category_of_class.get(name, "placable_objects")
        node = {"id": oid, "class_name": g.get("class_name", name), "category": category,
                "properties": props, "states": []}
        node["states"] = _default_states(node)
        nodes[oid] = node

    # revealed start edges (they held at the start and the program removes them)
    revealed = [e for e in task.goal.absent if e[0] in nodes and e[2] in nodes]
    for e in revealed:
        if e[0] == char and e[1] == "INSIDE" and nodes[e[2]]["category"] != ROOM_CATEGORY:
            continue
        edges.add(e)

    inside: dict[int, list[int]] = {}  # INSIDE edges only: the simulator finds rooms through them
    for a, r, b in edges:
        if r == "INSIDE":
            inside.setdefault(a, []).append(b)

    # the character's start room: revealed, else the first room the program walks to
    start_rooms = sorted(b for a, r, b in revealed if a == char and r == "INSIDE"
                         and nodes[b]["category"] == ROOM_CATEGORY)
    if not start_rooms:
        walked = [line.params[0][1] for line in task.program
                  if line.action in ("WALK", "RUN") and line.params and line.params[0][1] in nodes
                  and nodes[line.params[0][1]]["category"] == ROOM_CATEGORY]
        rooms = sorted(i for i, n in nodes.items() if n["category"] == ROOM_CATEGORY)
        start_rooms = walked[:1] or rooms[:1]
    start_room = start_rooms[0]
    edges.add((char, "INSIDE", start_room))
    inside.setdefault(char, []).append(start_room)

    # closeness the recorded observations reveal between task objects (one side added)
    added = {i for i in nodes if i not in scene["nodes"]}
    rooms = {i: r for i in nodes if (r := _room_of(i, inside, nodes)) is not None and i != char}
    for x, t, on in (_observed_neighbours(task, nodes, added, rooms=rooms, start_room=start_room)
                     + reach_neighbours(task, nodes, rooms, start_room)):
        edges.update({(x, "CLOSE", t), (t, "CLOSE", x)})
        mover, anchor = (x, t) if x in added else (t, x)
        if _room_of(mover, inside, nodes) is not None:
            continue
        anchor_room = _room_of(anchor, inside, nodes)
        if anchor_room is None:
            continue
        if mover == x and on:
            edges.add((x, "ON", t))
        edges.add((mover, "INSIDE", anchor_room))
        inside.setdefault(mover, []).append(anchor_room)

    # place the added objects that have no room yet: the room of the character when first used
    room = start_room
    placed: set[int] = set()
    for line in task.program:
        for k, (_, oid) in enumerate(line.params):
            if oid not in nodes:
                continue
            if nodes[oid]["category"] == ROOM_CATEGORY:
                if k == 0 and line.action in _WALKS:
                    room = oid
                continue
            if oid not in scene["nodes"] and oid not in placed:
                placed.add(oid)
                if _room_of(oid, inside, nodes) is None:
                    container = next((b for b in sorted(inside.get(oid, [])) if b in nodes), None)
                    target = _room_of(container, inside, nodes) if container is not None else None
                    target = target if target is not None else room
                    edges.add((oid, "INSIDE", target))
                    inside.setdefault(oid, []).append(target)
            if k == 0 and line.action in _WALKS:
                r = _room_of(oid, inside, nodes)
                if r is not None:
                    room = r

    # start states: goal nodes by undoing the program, others by the first state-changing line
    seen_var: set[tuple[int, str]] = set()
    for line in task.program:
        if not line.params:
            continue
        oid = line.params[0][1]
        if oid in nodes and oid not in goal_nodes and line.action in _NEEDS:
            need = _NEEDS[line.action]
            var = min(need, _OTHER[need])
            if (oid, var) not in seen_var:
                seen_var.add((oid, var))
                _set_state(nodes[oid]["states"], need)
        if oid in nodes and line.action in _LEAVES:
            seen_var.add((oid, min(_LEAVES[line.action], _OTHER[_LEAVES[line.action]])))
    for gid, g in goal_nodes.items():
        if gid not in nodes:
            continue
        node = nodes[gid]
        for key in ("class_name", "category"):
            if g.get(key) is not None:
                node[key] = g[key]
        if g.get("properties") is not None:
            node["properties"] = list(g["properties"])
        node["states"] = _initial_states_from_goal(list(g.get("states") or []), gid, task.program, char)

    # the character's start posture: a first STANDUP/WAKEUP/SLEEP means it sat or lay
    if char not in goal_nodes:
        for line in task.program:
            if line.action in ("SIT", "LIE"):
                break
            if line.action in ("STANDUP", "WAKEUP", "SLEEP"):
                nodes[char]["states"] = ["LYING" if line.action != "STANDUP" else "SITTING"]
                break

    # free the things the program sits or lies on
    for line in task.program:
        if line.action in ("SIT", "LIE") and line.params and line.params[0][1] in nodes:
            target = line.params[0][1]
            edges = {e for e in edges if not (e[1] == "ON" and e[2] == target and e[0] not in task.object_ids.values())}

    return {"nodes": [nodes[i] for i in sorted(nodes)],
            "edges": [{"from_id": a, "relation_type": r, "to_id": b} for a, r, b in sorted(edges)]}


def parse_observation(text: str) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """Names listed in a recorded STeCa observation, its ``a ON b`` pairs and the held names."""
    body, _, held_part = text.partition("You have ")
    held = {h.strip().strip(".").strip() for h in re.split(r",| and ", held_part) if h.strip().strip(".")}
    names: set[str] = set()
    on: set[tuple[str, str]] = set()
    for part in body.strip().rstrip(".").split(", "):
        part = part.strip().rstrip(".")
        if not part:
            continue
        m = re.match(r"^([a-z0-9_]+) (ON|INSIDE) ([a-z0-9_]+)$", part)
        if m:
            if m.group(2) == "ON":
                on.add((m.group(1), m.group(3)))
            continue
        names.add(part.split(" is ")[0].strip())
    return names, on, held


def _observed_neighbours(task: VHTask, nodes: dict[int, dict[str, Any]], added: set[int],
                         base_pairs: bool = True, rooms: dict[int, int] | None = None,
                         start_room: int | None = None) -> list[tuple[int, int, bool]]:
    """Pairs ``(x, a, x_on_a)`` of task objects that the recorded observations show side by side.

    ``a`` is the *anchor*, the non-room object the program last walked or ran to (a ``[FIND]`` walks
    too when :class:`Whereabouts` says so). An object ``x``
    that an observation newly lists (not listed by the previous one; after a ``WALK``/``RUN`` every
    listed object counts, since walking resets closeness) and that the character does not hold was
    close to the anchor. ``x ON y`` statements give pairs too. An object newly listed right after
    ``[GRAB] x`` is what ``x`` was on, in or close to (the simulator makes the character close to
    it), so it pairs with ``x``, and replaces ``x`` as the anchor when ``x`` was the anchor. Once the
    program has grabbed, put, poured or dropped an object, later observations of it show the
    program's doing and are not used. ``base_pairs=False`` keeps only pairs with an added object. First occurrence per pair,
    in program order.
    """
    out: list[tuple[int, int, bool]] = []
    seen: set[frozenset[int]] = set()

    moved: set[int] = set()  # objects the program has grabbed so far: later relations are its doing

    def add(x: int | None, a: int | None, on: bool) -> None:
        if x is None or a is None or x == a or x not in nodes or a not in nodes or x in moved or a in moved:
            return
        if not base_pairs and x not in added and a not in added:
            return
        if frozenset((x, a)) in seen:
            return
        seen.add(frozenset((x, a)))
        out.append((x, a, on))

    anchor: int | None = None
    before: set[str] = set()
    where = Whereabouts(nodes, rooms or {}, start_room)
    for i, line in enumerate(task.program):
        if i >= len(task.observations):
            break
        grabbed = line.params[0][1] if line.action == "GRAB" and line.params else None
        if line.action in ("PUTBACK", "PUTIN", "PUTOBJBACK", "POUR", "DROP", "RELEASE"):
            moved.update(i for _, i in line.params[:1])
        names, on, held = parse_observation(task.observations[i])
        walked = where.step(line, bool(before - names - held))
        if walked:
            tid = line.params[0][1]
            anchor = tid if tid in nodes and nodes[tid]["category"] != ROOM_CATEGORY else None
        for a_name, b_name in sorted(on):
            add(task.object_ids.get(a_name), task.object_ids.get(b_name), True)
        fresh = names if walked else names - before
        before = names
        if grabbed is not None:
            # grabbing makes the character close to the first thing the object was on, in or close to
            partners = [p for n in sorted(fresh - held) if (p := task.object_ids.get(n)) in nodes and p != grabbed]
            for p in partners:
                add(p, grabbed, False)
            if anchor == grabbed:
                anchor = partners[0] if partners else None
            moved.add(grabbed)
            continue
        if anchor is None:
            continue
        for name in sorted(fresh - held):
            add(task.object_ids.get(name), anchor, False)
    return out


# actions whose executor needs the character close to the line's first object (the destination for
# PUTBACK/PUTIN/POUR): ``_is_character_close_to`` in evolving_graph's ``execution.py``
_NEEDS_CLOSE = frozenset({"FIND", "GRAB", "SWITCHON", "SWITCHOFF", "TYPE", "OPEN", "CLOSE", "PLUGIN", "PLUGOUT",
                          "TOUCH", "CUT", "EAT", "PUSH", "PULL", "MOVE", "SQUEEZE", "WASH", "RINSE", "SCRUB", "WIPE",
                          "SIT", "LIE"})
_NEEDS_CLOSE_DEST = frozenset({"PUTBACK", "PUTIN", "POUR"})
_MOVES = ("GRAB", "PUTBACK", "PUTIN", "PUTOBJBACK", "POUR", "DROP", "RELEASE")


@dataclass
class Whereabouts:
    """Where the record puts the character, line by line: its room when known, and whether it sits or lies.

    ``rooms`` maps nodes to their rooms where the rebuilt graph knows them. :meth:`step` says whether a
    line moved the character: ``[WALK]``/``[RUN]`` always; ``[FIND]`` (evolving_graph's ``FindExecutor``
    walks to an object out of reach unless the character sits or lies) when nothing is within reach
    (at the start, or right after walking into a room) or when its object is in another room than the
    character: the cases the record settles (objects in different rooms are never within reach).
    Body parts are always within reach. A ``[FIND]`` in the same room, or of an object without a known room, counts as a
    find within reach: STeCa's observations keep listing what was close before it in nearly all such
    steps of the seen split.
    """

    nodes: dict[int, dict[str, Any]]
    rooms: dict[int, int]
    room: int | None = None
    seated: bool = False
    reaches_nothing: bool = True  # just walked into a room (or started): nothing is within reach

    def room_of(self, nid: int) -> int | None:
        if self.nodes.get(nid, {}).get("category") == ROOM_CATEGORY:
            return nid
        return self.rooms.get(nid)

    def step(self, line: ProgramLine, dropped: bool = False) -> bool:
        """Advance over ``line``; True when it moved the character. ``dropped``: the observation after the
        line no longer lists something that the one before listed (and that the character does not hold)."""
        walks = False
        if line.params:
            target = self.room_of(line.params[0][1])
            obj = self.nodes.get(line.params[0][1], {})
            walks = line.action in ("WALK", "RUN") or (
                line.action == "FIND" and not self.seated and "BODY_PART" not in obj.get("properties", ())
                and (self.reaches_nothing or dropped
                     or (target is not None and self.room is not None and target != self.room)))
            if walks:
                self.room = target
            self.reaches_nothing = walks and obj.get("category") == ROOM_CATEGORY
        if line.action in ("SIT", "LIE"):
            self.seated = True
        elif line.action == "STANDUP":
            self.seated = False
        return walks


def reach_neighbours(task: VHTask, nodes: dict[int, dict[str, Any]], rooms: dict[int, int] | None = None,
                     start_room: int | None = None) -> list[tuple[int, int, bool]]:
    """Pairs ``(x, anchor, False)``: objects a program line reaches without walking to them, and what the
    character stood or sat at when it did.

    Every recorded step succeeded, so the object of a line that needs reach (``[SWITCHON]``,
    ``[TYPE]``, ``[GRAB]``, ``[FIND]`` while seated..., the destination of a put) was within reach:
    close to the character, or close to something the character was close to
    (``_is_character_close_to``). The *anchor* is that something:

    * while the character sits or lies on a seat (from ``[SIT]``/``[LIE]`` until ``[STANDUP]``) it
      cannot walk (``[WALK]`` fails, ``[FIND]`` only finds what is within reach), so the anchor is
      the seat, for every such line;
    * standing, the anchor is the last object walked to (``[WALK]``/``[RUN]``, or a ``[FIND]`` that
      walks, see :class:`Whereabouts`), and a line gets a pair only when the previous observation
      does not list its object (a listed object is close already).

    Objects the program has moved before are skipped (their later place is the program's doing).
    First occurrence per pair, in program order.
    """
    out: list[tuple[int, int, bool]] = []
    seen: set[frozenset[int]] = set()
    moved: set[int] = set()
    seat: int | None = None
    anchor: int | None = None
    listed: set[str] = set()  # names in the previous recorded observation
    where = Whereabouts(nodes, rooms or {}, start_room)
    for i, line in enumerate(task.program):
        ids = [k for _, k in line.params]
        k = 0 if line.action in _NEEDS_CLOSE and ids else (
            1 if line.action in _NEEDS_CLOSE_DEST and len(ids) > 1 else None)
        target = ids[k] if k is not None else None
        name = line.params[k][0] if k is not None else ""
        usable = target is not None and target in nodes and nodes[target]["category"] != ROOM_CATEGORY
        after = parse_observation(task.observations[i]) if i < len(task.observations) else None
        walks = where.step(line, after is not None and bool(listed - after[0] - after[2]))
        near = seat if seat is not None else (None if walks else anchor)
        if (usable and near is not None and target != near and target not in moved
                and (seat is not None or name not in listed) and frozenset((target, near)) not in seen):
            seen.add(frozenset((target, near)))
            out.append((target, near, False))  # type: ignore[arg-type]
        if walks and ids:
            anchor = ids[0] if ids[0] in nodes and nodes[ids[0]]["category"] != ROOM_CATEGORY else None
        if line.action in ("SIT", "LIE") and ids and ids[0] in nodes:
            seat = ids[0]
        elif line.action == "STANDUP":
            seat = None
        if line.action in _MOVES and ids:
            moved.add(ids[0])
        listed = after[0] if after is not None else set()
    return out


def unreachable_reason(task: VHTask, node_ids: set[int]) -> str | None:
    """Why ``task``'s goal cannot hold in a graph with ``node_ids`` (None when it is reachable)."""
    missing = sorted({i for i in task.goal.node_ids() if i not in node_ids}
                     | {i for a, _, b in task.goal.present for i in (a, b) if i not in node_ids})
    if not missing:
        return None
    return f"goal requires nodes absent from the initial graph: {missing}"


def load_real_init_graph(init_graph_dir: str | Path, task: VHTask) -> dict[str, Any] | None:
    """STeCa's own initial graph for ``task`` (``init_graph`` of ``<dir>/<scene>/<subset>/<file>.json``), if present."""
    if not task.init_graph_key:
        return None
    p = Path(init_graph_dir) / (task.init_graph_key + ".json")
    if not p.exists():
        return None
    data = json.loads(p.read_text(encoding="utf-8"))
    graph = data.get("init_graph", data)
    if "nodes" not in graph or "edges" not in graph:
        raise ValueError(f"{p}: expected 'init_graph' with 'nodes' and 'edges'")
    cleaned = clean_scene(graph, str(p))
    return {"nodes": [cleaned["nodes"][i] for i in sorted(cleaned["nodes"])],
            "edges": [{"from_id": a, "relation_type": r, "to_id": b} for a, r, b in sorted(cleaned["edges"])]}
