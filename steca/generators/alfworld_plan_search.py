"""The expert of generated ALFWorld games: a plausible search policy with templated thoughts.

The expert does not peek: it knows the room's receptacles (the first observation lists them)
and, like a person, where an object kind usually is (the catalog's ``places`` order). It visits
likely receptacles in that order, opens closed ones, remembers what it has seen, takes the first
matching object, then does the task (clean/heat/cool with the appliance, turn on the desk lamp,
fetch a second object) and puts the object in the goal receptacle. Each step carries a short
``Thought`` that says why.

Thought styles: ``terse`` (the default) says only why this step; ``memo`` starts every thought
with a short working memory: the task with its goal receptacle and, while searching, the likely
receptacles not yet looked into, in the order the expert visits them (``Task: heat a plate, then
put it in/on countertop 1. To check: shelf 1, fridge 1. There is no plate here. Next, I will check
shelf 1.``). Each memo is the previous one minus what was done, so a model can copy it from its
last turn instead of from the task line many turns back, and the next receptacle is the memo's first.

The plan is computed on the generator's own model of the room and checked by replaying it in the
real engine (see :mod:`steca.generators.alfworld_games`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from steca.generators.alfworld_catalog import APPLIANCE, LAMP, OBJECTS
from steca.generators.alfworld_world import World


@dataclass(frozen=True)
class ExpertStep:
    thought: str
    action: str

    def turn(self) -> str:
        """The assistant turn, ``Thought: ...\\nAction: ...``."""
        return f"Thought: {self.thought}\nAction: {self.action}"


class ExpertError(RuntimeError):
    """The expert could not solve a generated world (a generator bug, never expected)."""


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


THOUGHT_STYLES = ("terse", "memo")


def goal_memo(world: World) -> str:
    """The task in a few words, with the goal receptacle the expert uses (the ``memo`` style)."""
    task = world.task
    word = task.obj.lower()
    if task.task_type == "look_at_obj_in_light":
        return f"look at {_a(word)} under a desklamp"
    goal = world.receptacles[_goal_receptacle(world)].text
    if task.task_type == "pick_two_obj_and_place":
        return f"put two {word}s in/on {goal}"
    appliance = APPLIANCE[task.task_type]
    if appliance is not None:
        return f"{_VERBS[appliance]} {_a(word)}, then put it in/on {goal}"
    return f"put {_a(word)} in/on {goal}"


class _Room:
    """The expert's running model of the room: where it is, what it holds, what it has seen."""

    def __init__(self, world: World, memo: str | None = None):
        self.world = world
        self.memo = memo                    # the task memo that starts every thought (memo style), or None
        self.to_check: list[int] | None = None  # while searching: candidates not yet checked
        self.contents = {i: list(v) for i, v in world.contents().items()}
        self.opened: set[int] = set()
        self.visited: set[int] = set()
        self.seen: dict[int, int] = {}  # object index -> receptacle index where it was seen
        self.at: int | None = None
        self.holding: int | None = None
        self.steps: list[ExpertStep] = []

    def name(self, r: int) -> str:
        return self.world.receptacles[r].text

    def oname(self, o: int) -> str:
        return self.world.objects[o].text

    def _look_inside(self, r: int) -> None:
        self.visited.add(r)
        for o in self.contents[r]:
            self.seen[o] = r

    def act(self, thought: str, action: str) -> None:
        if self.memo is not None:
            unchecked = [r for r in self.to_check or () if r not in self.visited]
            memo = f"Task: {self.memo}." + (f" To check: {', '.join(map(self.name, unchecked))}." if unchecked else "")
            thought = f"{memo} {thought}"
        self.steps.append(ExpertStep(thought, action))

    def go(self, r: int, thought: str) -> None:
        self.act(thought, f"go to {self.name(r)}")
        self.at = r
        if not self.world.receptacles[r].openable or r in self.opened:
            self._look_inside(r)

    def ensure_open(self, r: int, thought: str) -> None:
        if self.world.receptacles[r].openable and r not in self.opened:
            self.act(thought, f"open {self.name(r)}")
            self.opened.add(r)
            self._look_inside(r)

    def take(self, o: int, thought: str) -> None:
        r = self.seen[o]
        self.act(thought, f"take {self.oname(o)} from {self.name(r)}")
        self.contents[r].remove(o)
        del self.seen[o]
        self.holding = o

    def put(self, r: int, thought: str) -> None:
        assert self.holding is not None
        self.act(thought, f"put {self.oname(self.holding)} in/on {self.name(r)}")
        self.contents[r].append(self.holding)
        self.holding = None


def _candidates(world: World, kind: str) -> list[int]:
    """Receptacles where ``kind`` may be, in the order a person would look."""
    order = {k: i for i, k in enumerate(OBJECTS[kind].places)}
    idx = [i for i, r in enumerate(world.receptacles) if r.kind in order]
    return sorted(idx, key=lambda i: (order[world.receptacles[i].kind], world.receptacles[i].number))


def _find(room: _Room, kind: str, exclude_kinds: frozenset[str], rng: random.Random, intro: str) -> int:
    """Walk to likely receptacles until an object of ``kind`` is in view; return its index.

    Objects already inside a receptacle of ``exclude_kinds`` (the goal kind) do not count.
    """
    def visible() -> int | None:
        found = [o for o, r in room.seen.items() if room.world.objects[o].kind == kind
                 and room.world.receptacles[r].kind not in exclude_kinds]
        return min(found, key=lambda o: (room.world.objects[o].number)) if found else None

    obj = visible()
    if obj is not None:
        r = room.seen[obj]
        if room.at != r:
            room.go(r, f"{intro}I remember seeing {_a(room.oname(obj))} in/on {room.name(r)}. I will go there.")
        return obj
    todo = [r for r in _candidates(room.world, kind)
            if r not in room.visited and room.world.receptacles[r].kind not in exclude_kinds]
    if not todo:
        raise ExpertError(f"no {kind} can be found in {room.world.layout.name}")
    kinds = []
    for r in todo:
        k = room.world.receptacles[r].kind.lower()
        if k not in kinds:
            kinds.append(k)
    word = kind.lower()
    first = True
    room.to_check = todo
    for r in todo:
        if first:
            plan = (f"I will check them one by one, starting with {room.name(r)}." if len(todo) > 1
                    else f"I will go to {room.name(r)}.")
            where = "" if room.memo is not None else f"{_a(word).capitalize()} is most likely in/on {_join(kinds[:4])}. "
            thought = f"{intro}{where}{plan}"
            first = False
        else:
            thought = rng.choice((f"There is no {word} here. Next, I will check {room.name(r)}.",
                                  f"No {word} here. I will try {room.name(r)} next.",
                                  f"I don't see {_a(word)} here. Let me go to {room.name(r)}."))
        if room.at != r:
            room.go(r, thought)
            room.ensure_open(r, f"The {room.name(r)} is closed. I will open it to look inside.")
        else:  # already standing at a closed candidate (never for the generated task types)
            room.ensure_open(r, f"{thought} It is right here and closed, so I will open it.")
        obj = visible()
        if obj is not None:
            room.to_check = None
            return obj
    room.to_check = None
    raise ExpertError(f"the {kind} was not found in {room.world.layout.name}")


def _goal_receptacle(world: World) -> int:
    """The goal receptacle the expert uses: the first of the goal kind."""
    for i, r in enumerate(world.receptacles):
        if r.kind == world.task.recep and r.number == 1:
            return i
    raise ExpertError(f"layout {world.layout.name} has no {world.task.recep}")


def _place(room: _Room, goal: int) -> None:
    o = room.oname(room.holding) if room.holding is not None else "object"
    if room.at != goal:
        room.go(goal, f"Now I will bring the {o} to {room.name(goal)}.")
    room.ensure_open(goal, f"The {room.name(goal)} is closed. I will open it so I can put the {o} inside.")
    room.put(goal, f"I will put the {o} in/on the {room.name(goal)}.")


_VERBS = {"SinkBasin": "clean", "Microwave": "heat", "Fridge": "cool"}


def expert_plan(world: World, rng: random.Random, thoughts: str = "terse") -> list[ExpertStep]:
    """The expert's steps for ``world`` with ``thoughts`` in one of :data:`THOUGHT_STYLES`; raises
    :class:`ExpertError` if it cannot solve it."""
    if thoughts not in THOUGHT_STYLES:
        raise ValueError(f"unknown thought style {thoughts!r}; expected one of {list(THOUGHT_STYLES)}")
    task = world.task
    room = _Room(world, goal_memo(world) if thoughts == "memo" else None)
    word = task.obj.lower()
    goal_kinds = frozenset({task.recep}) if task.task_type != "look_at_obj_in_light" else frozenset()
    intro = f"To solve the task, I need to find {_a(word)} first. "
    if task.task_type == "pick_two_obj_and_place":
        intro = f"To solve the task, I need to find two {word}s and put them in/on {task.recep.lower()}. "
    obj = _find(room, task.obj, goal_kinds, rng, intro)
    room.take(obj, f"I found {room.oname(obj)}. I will take it.")

    if task.task_type == "look_at_obj_in_light":
        lamp = _find(room, LAMP, frozenset(), rng,
                     f"Now I hold the {room.oname(obj)}. I need a desklamp to look at it under. ")
        lamp_name = room.oname(lamp)
        room.act(f"The {lamp_name} is here. I will turn it on to look at the {room.oname(obj)} under it.",
                 f"use {lamp_name}")
        return room.steps

    appliance = APPLIANCE[task.task_type]
    if appliance is not None:
        verb = _VERBS[appliance]
        app = next(i for i, r in enumerate(world.receptacles) if r.kind == appliance)
        if room.at != app:
            room.go(app, f"Now I need to {verb} the {room.oname(obj)}. I will go to {room.name(app)}.")
            thought = f"I am at {room.name(app)}. I will {verb} the {room.oname(obj)} with it."
        else:
            thought = f"Now I need to {verb} the {room.oname(obj)}, and {room.name(app)} is right here. I will use it."
        room.act(thought, f"{verb} {room.oname(obj)} with {room.name(app)}")

    goal = _goal_receptacle(world)
    _place(room, goal)

    if task.task_type == "pick_two_obj_and_place":
        second = _find(room, task.obj, goal_kinds, rng, f"I still need a second {word}. ")
        room.take(second, f"I found {room.oname(second)}. I will take it.")
        _place(room, goal)
    return room.steps
