"""A generated ALFWorld room (layout + placements + task) and its PDDL problem text.

The PDDL follows the ``alfred`` domain shipped with the ``alfworld`` package. Entity ids are
mangled the ALFRED way (``Drawer_bar__plus_01_dot_37_...``) because the engine's demangler turns
them into the names agents see (``drawer 2``): among ids with the same class name, sorted
ascending, the first gets the highest number. :func:`mangled_id` inverts that rule, so the
generator decides every name itself and the expert can refer to ``drawer 2`` before the engine
has ever run.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property

from steca.generators.alfworld_catalog import (GOAL_TEMPLATES, LAMP, OBJECTS, RECEPTACLES, TASK_TYPES)


@dataclass(frozen=True)
class Layout:
    """A room's furniture: receptacle kinds with counts, in a fixed order. ``name`` is unique."""

    name: str
    room: str
    scene_num: int
    receptacles: tuple[tuple[str, int], ...]

    @property
    def n_receptacles(self) -> int:
        return sum(c for _, c in self.receptacles)

    @cached_property
    def kinds(self) -> frozenset[str]:
        """The receptacle kinds of this layout."""
        return frozenset(k for k, _ in self.receptacles)


@dataclass(frozen=True)
class Recep:
    kind: str
    number: int
    pddl_id: str
    location: str

    @property
    def text(self) -> str:
        """The name agents see, e.g. ``drawer 2``."""
        return f"{self.kind.lower()} {self.number}"

    @property
    def openable(self) -> bool:
        return RECEPTACLES[self.kind].openable


@dataclass(frozen=True)
class Obj:
    kind: str
    number: int
    pddl_id: str
    recep: int  # index into World.receptacles

    @property
    def text(self) -> str:
        return f"{self.kind.lower()} {self.number}"


@dataclass(frozen=True)
class Task:
    """The goal: ``task_type`` on object kind ``obj`` with goal receptacle kind ``recep``
    (for ``look_at_obj_in_light``, ``recep`` is ``DeskLamp``, the toggle target)."""

    task_type: str
    obj: str
    recep: str
    template: int = 0

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"unknown task type {self.task_type!r}")

    @property
    def description(self) -> str:
        """The goal sentence shown after ``Your task is to:`` (without the final period)."""
        text = GOAL_TEMPLATES[self.task_type][self.template]
        return text.format(obj=self.obj.lower(), recep=self.recep.lower())

    @property
    def combo(self) -> tuple[str, str, str]:
        return (self.task_type, self.obj, self.recep)


@dataclass
class World:
    """One game: the layout, every receptacle and object with its place, the task."""

    layout: Layout
    receptacles: list[Recep]
    objects: list[Obj]
    task: Task
    start_location: str = "loc_bar_0_bar_0_bar_0_bar_0"
    extra: dict = field(default_factory=dict)

    def contents(self) -> dict[int, list[int]]:
        """Receptacle index -> indices of the objects in it at the start."""
        out: dict[int, list[int]] = {i: [] for i in range(len(self.receptacles))}
        for j, o in enumerate(self.objects):
            out[o.recep].append(j)
        return out


def _coord(rng: random.Random) -> str:
    sign = rng.choice(("plus", "minus"))
    return f"_{sign}_{rng.randrange(100):02d}_dot_{rng.randrange(100):02d}"


def mangled_id(base: str, rank: int, rng: random.Random, suffix: str = "") -> str:
    """An ALFRED-style id whose demangled number is ``count - rank`` (rank 0 sorts first).

    ``Base_bar__plus_<rank>_dot_<xx>_bar_<y>_bar_<z>[_bar_<suffix>]``: the first coordinate
    carries the rank, so ids of one class sort in rank order.
    """
    head = f"{base}_bar__plus_{rank:02d}_dot_{rng.randrange(100):02d}"
    tail = f"_bar_{_coord(rng)}_bar_{_coord(rng)}"
    return head + tail + (f"_bar_{suffix}" if suffix else "")


def location_id(index: int, rng: random.Random) -> str:
    """A location id like ALFRED's ``loc_bar_3_bar__minus_5_bar_2_bar_30``; ``index`` keeps it unique."""
    return f"loc_bar_{index}_bar__minus_{rng.randrange(10)}_bar_{rng.randrange(4)}_bar_{rng.choice((0, 30, 45, 60))}"


def receptacle_ids(layout: Layout, rng: random.Random) -> list[Recep]:
    """Receptacles numbered 1..count per kind, in layout order, each at its own location."""
    out: list[Recep] = []
    loc_index = 1
    for kind, count in layout.receptacles:
        spec = RECEPTACLES[kind]
        for number in range(1, count + 1):
            pid = mangled_id(spec.pddl_base or kind, count - number, rng, spec.pddl_suffix)
            out.append(Recep(kind, number, pid, location_id(loc_index, rng)))
            loc_index += 1
    return out


def _pddl_type(kind: str, suffix: str) -> str:
    return f"{kind}{suffix}"


def goal_pddl(task: Task) -> str:
    """The PDDL goal of ``task`` (the same predicates the official games use)."""
    ot, rt = _pddl_type(task.obj, "Type"), _pddl_type(task.recep, "Type")
    if task.task_type == "pick_and_place_simple":
        body = f"(inReceptacle ?o ?r) (objectType ?o {ot}) (receptacleType ?r {rt})"
        return f"(exists (?r - receptacle) (exists (?o - object) (and {body})))"
    if task.task_type == "pick_two_obj_and_place":
        return ("(exists (?r - receptacle) (exists (?o1 - object) (and "
                f"(objectType ?o1 {ot}) (receptacleType ?r {rt}) (inReceptacle ?o1 ?r) "
                f"(exists (?o2 - object) (and (not (= ?o1 ?o2)) (objectType ?o2 {ot}) (inReceptacle ?o2 ?r))))))")
    if task.task_type == "look_at_obj_in_light":
        return ("(and (exists (?lamp - object ?r - receptacle ?a - agent ?l - location) (and "
                f"(objectType ?lamp {rt}) (toggleable ?lamp) (isToggled ?lamp) (receptacleAtLocation ?r ?l) "
                "(atLocation ?a ?l) (inReceptacle ?lamp ?r))) "
                f"(exists (?o - object ?a - agent) (and (objectType ?o {ot}) (holds ?a ?o))))")
    prop, state = {
        "pick_clean_then_place_in_recep": ("cleanable", "isClean"),
        "pick_heat_then_place_in_recep": ("heatable", "isHot"),
        "pick_cool_then_place_in_recep": ("coolable", "isCool"),
    }[task.task_type]
    body = f"({prop} ?o) (objectType ?o {ot}) (receptacleType ?r {rt}) ({state} ?o) (inReceptacle ?o ?r)"
    return f"(exists (?r - receptacle) (exists (?o - object) (and {body})))"


def pddl_problem(world: World, name: str) -> str:
    """The PDDL problem of ``world`` for the ``alfred`` domain.

    Only the classes that occur in the room are declared, and ``canContain`` lists every
    (receptacle kind, object kind) pair of the room allowed by the catalog, so that agents may
    put things anywhere sensible, not only where the expert does.
    """
    rkinds = sorted({r.kind for r in world.receptacles})
    okinds = sorted({o.kind for o in world.objects})
    lines = [f"(define (problem {name})", "(:domain alfred)", "(:objects", "agent1 - agent"]
    lines += [f"{k}Type - otype" for k in okinds]
    lines += [f"{k}Type - rtype" for k in rkinds]
    lines += [f"{o.pddl_id} - object" for o in world.objects]
    lines += [f"{r.pddl_id} - receptacle" for r in world.receptacles]
    lines += [f"{world.start_location} - location"] + [f"{r.location} - location" for r in world.receptacles]
    lines += [")", "(:init", f"(atLocation agent1 {world.start_location})"]
    for r in world.receptacles:
        lines.append(f"(receptacleType {r.pddl_id} {r.kind}Type)")
        lines.append(f"(receptacleAtLocation {r.pddl_id} {r.location})")
        if r.openable:
            lines.append(f"(openable {r.pddl_id})")
    for o in world.objects:
        spec = OBJECTS[o.kind]
        rec = world.receptacles[o.recep]
        lines.append(f"(objectType {o.pddl_id} {o.kind}Type)")
        lines.append(f"(inReceptacle {o.pddl_id} {rec.pddl_id})")
        lines.append(f"(objectAtLocation {o.pddl_id} {rec.location})")
        if o.kind != LAMP:
            lines.append(f"(pickupable {o.pddl_id})")
        for flag, pred in ((spec.cleanable, "cleanable"), (spec.heatable, "heatable"),
                           (spec.coolable, "coolable"), (spec.toggleable, "toggleable")):
            if flag:
                lines.append(f"({pred} {o.pddl_id})")
    for rk in rkinds:
        for ok in okinds:
            if rk in OBJECTS[ok].places and ok != LAMP:
                lines.append(f"(canContain {rk}Type {ok}Type)")
    lines += [")", f"(:goal {goal_pddl(world.task)})", ")", ""]
    return "\n".join(lines)
