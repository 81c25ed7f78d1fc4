"""A fast oracle expert for ALFWorld games: reads the engine's PDDL facts and acts toward the goal.

The fast-downward planner solves every solvable game but takes minutes on some (a cleaning game in
valid_seen needs over two minutes), and ALFWorld's handcoded expert fails on some games. This
expert is a small policy over the true state: while empty-handed it walks to an unplaced target
object, opens its receptacle if closed and takes it; holding it, it cleans/heats/cools it with the
right appliance, then puts it in (or on) a goal receptacle, or turns on the lamp for the
"examine in light" task. Every chosen command must be admissible; if a rule ever proposes one that
is not, the caller falls back to the planner from the current state.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRANSFORMS = {
    "pick_clean_then_place_in_recep": ("clean", "sinkbasin", "isclean"),
    "pick_heat_then_place_in_recep": ("heat", "microwave", "ishot"),
    "pick_cool_then_place_in_recep": ("cool", "fridge", "iscool"),
}


@dataclass(frozen=True)
class AlfredGoal:
    """What a game asks for, from its ``traj_data.json``."""

    task_type: str
    object_cls: str
    parent_cls: str
    toggle_cls: str
    n_objects: int

    @classmethod
    def from_traj_data(cls, game_path: Path) -> "AlfredGoal":
        with (game_path.parent / "traj_data.json").open(encoding="utf-8") as f:
            traj = json.load(f)
        params = traj["pddl_params"]
        task_type = traj["task_type"]
        return cls(task_type, params["object_target"].lower(), params["parent_target"].lower(),
                   params["toggle_target"].lower(), 2 if task_type == "pick_two_obj_and_place" else 1)


class _Facts:
    """The current state's facts, indexed by display name (``desk 1``)."""

    def __init__(self, facts: Any, entity_infos: dict):
        def name(var: Any) -> str:
            info = entity_infos.get(var.name)
            return (info.name if info is not None and info.name else var.name).strip()

        self.by_pred: dict[str, list[tuple[str, ...]]] = {}
        for f in facts:
            self.by_pred.setdefault(f.name, []).append(tuple(name(a) for a in f.arguments))

    def pairs(self, pred: str) -> list[tuple[str, ...]]:
        return self.by_pred.get(pred, [])

    def unary(self, pred: str) -> set[str]:
        return {a[0] for a in self.pairs(pred)}

    def of_type(self, pred: str, cls: str) -> list[str]:
        return sorted(a[0] for a in self.pairs(pred) if a[1] == f"{cls}type")


def next_action(facts: Any, entity_infos: dict, goal: AlfredGoal, admissible: list[str]) -> str | None:
    """The expert's next command in the current state, or None if no rule applies."""
    fx = _Facts(facts, entity_infos)
    loc_of = {r: l for r, l in fx.pairs("receptacleatlocation")}
    agent_loc = next((l for a, l in fx.pairs("atlocation")), None)
    inside = {o: r for o, r in fx.pairs("inreceptacle")}
    opened = fx.unary("opened")
    openable = fx.unary("openable")
    held = [o for a, o in fx.pairs("holds")]
    targets = set(fx.of_type("objecttype", goal.object_cls))
    transform = TRANSFORMS.get(goal.task_type)
    done_state = fx.unary(transform[2]) if transform else set()
    goal_receps = fx.of_type("receptacletype", goal.parent_cls) if goal.parent_cls else []

    def reach(r: str, then: str) -> str:
        if agent_loc != loc_of.get(r):
            return f"go to {r}"
        if r in openable and r not in opened:
            return f"open {r}"
        return then

    def placed(o: str) -> bool:
        return inside.get(o) in goal_receps and (not transform or o in done_state)

    if held:
        o = held[0]
        if transform and o not in done_state:
            verb, appliance_cls, _ = transform
            appliances = fx.of_type("receptacletype", appliance_cls)
            if not appliances:
                return None
            a = appliances[0]
            return reach(a, f"{verb} {o} with {a}")
        if goal.task_type == "look_at_obj_in_light":
            lamps = fx.of_type("objecttype", goal.toggle_cls)
            if not lamps or lamps[0] not in inside:
                return None
            lamp = lamps[0]
            return reach(inside[lamp], f"use {lamp}")
        if not goal_receps:
            return None
        # prefer a goal receptacle that already holds a placed target (pick two), else the first
        used = [inside[t] for t in targets if t in inside and inside[t] in goal_receps]
        r = used[0] if used else goal_receps[0]
        return reach(r, f"put {o} in/on {r}")
    candidates = [t for t in sorted(targets) if t in inside and not placed(t)]
    # objects already in a goal receptacle are taken last (pick two must not move a placed one)
    candidates.sort(key=lambda t: inside[t] in goal_receps)
    if not candidates:
        return None
    o = candidates[0]
    r = inside[o]
    return reach(r, f"take {o} from {r}")
