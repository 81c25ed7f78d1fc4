"""Generate small, real ALFWorld games and expert trajectories: the project's mini benchmark.

``python -m steca.generators.alfworld_games --output_dir DIR --seed 0 --n_train 400 --n_seen 50 --n_unseen 50``
writes, in ALFWorld's own layout so that every other part of the project reads it like the
official data::

    DIR/json_2.1.1/{train,valid_seen,valid_unseen}/<task>-<Object>-None-<Receptacle>-<scene>/<trial>/
        game.tw-pddl     the PDDL domain shipped with alfworld, this game's PDDL problem, the
                         project's text grammar (steca/generators/alfworld_grammar.twl2) with the
                         task sentence, "solvable": true and the expert's "walkthrough"
        traj_data.json   task_type, pddl_params, scene (layout), turk_annotations (task sentence)
    DIR/sft_{train,valid_seen,valid_unseen}.json   expert trajectories in STeCa's SFT format
    DIR/manifest.json    the arguments and the split definition (layouts, held-out combinations)

Splits. Layouts (a room type with its receptacle counts) and goal combinations (task type,
object kind, goal receptacle kind) are drawn from the seed. ``train`` and ``valid_seen`` use the
same seen layouts and seen combinations with new placements; ``valid_unseen`` uses held-out
layouts and held-out combinations only.

Every expert trajectory is replayed in the real TextWorld engine (the same wrappers as
``AlfredTWEnv``) in a process pool; the observations of the SFT records are the engine's, and a
trajectory that does not win (never expected) is regenerated from the next sub-seed. The same
seed gives byte-identical files. A run that is interrupted resumes: replayed games are streamed
to ``DIR/.progress_<split>.jsonl`` and not replayed again.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from eval_agent.envs.alfworld_env import clean_observation, keep_argv, start_textworld
from eval_agent.envs.textworld_adapter import EngineMemo
from eval_agent.types import Message
from steca.generators.alfworld_catalog import (APPLIANCE, GOAL_EXCLUDED, GOAL_TEMPLATES, LAMP, NEEDS, OBJECTS,
                                               ROOMS, SIZES, TASK_TYPES, RoomType)
from steca.generators.alfworld_plan_search import THOUGHT_STYLES, ExpertError, ExpertStep, expert_plan
from steca.generators.alfworld_world import (Layout, Obj, Task, World, mangled_id, pddl_problem,
                                             receptacle_ids)
from eval_agent.storage import JsonlSink, read_jsonl_objects
from steca.records import SFTRecord, write_records

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLITS = ("train", "valid_seen", "valid_unseen")
LAYOUTS_PER_ROOM = 8          # per room type: 6 seen, 2 held out
UNSEEN_LAYOUTS_PER_ROOM = 2
UNSEEN_COMBO_FRACTION = 0.25  # of each task type's goal combinations, held out for valid_unseen
MAX_ATTEMPTS = 20
MAX_PER_KIND = 3              # objects of one kind in a room

ALFWORLD_INSTRUCTION = (
    "You are a household agent in a text-based room. At the start you are told what you see around you "
    "and what your task is. In each turn, think about the situation and then choose one action. Reply in "
    "exactly this format:\nThought: <your reasoning>\nAction: <one action>\n\n"
    "Available actions:\n"
    "- go to {recep}\n- open {recep}\n- close {recep}\n- take {obj} from {recep}\n- put {obj} in/on {recep}\n"
    "- use {obj}\n- clean {obj} with {recep}\n- heat {obj} with {recep}\n- cool {obj} with {recep}\n"
    "- examine {obj} or examine {recep}\n- look\n- inventory\n"
    "Here {obj} and {recep} name an object or a receptacle with its number, such as \"apple 1\" or "
    "\"countertop 2\". After each action you get an observation. If it says \"Nothing happens.\", the "
    "action was not possible; try something else."
)


# For models trained from scratch on the generated data (the CPU demo): the same reply format in a few
# tokens, so that training does not spend a third of its compute on a constant first turn.
ALFWORLD_SHORT_INSTRUCTION = (
    "You are a household agent. Solve the task in the room below. Reply with\n"
    "Thought: <your reasoning>\nAction: <one action>"
)
INSTRUCTIONS = {"full": ALFWORLD_INSTRUCTION, "short": ALFWORLD_SHORT_INSTRUCTION}


def alfworld_instruction(style: str = "full") -> str:
    """The task instruction (first user turn) of the generated SFT data: ``full`` (the action list and the
    rules, for any LLM) or ``short`` (only the reply format, for tiny models trained from scratch)."""
    if style not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction style {style!r}; expected one of {sorted(INSTRUCTIONS)}")
    return INSTRUCTIONS[style]


# ---------------------------------------------------------------- split definition
@dataclass(frozen=True)
class SplitPlan:
    """Which layouts and goal combinations each split may use."""

    layouts: dict[str, tuple[Layout, ...]]           # split -> layouts
    combos: dict[str, frozenset[tuple[str, str, str]]]  # split -> (task_type, obj, recep)

    def to_json(self) -> dict[str, Any]:
        return {
            "layouts": {s: [{"name": l.name, "room": l.room, "scene_num": l.scene_num,
                             "receptacles": [list(x) for x in l.receptacles]} for l in ls]
                        for s, ls in self.layouts.items()},
            "combos": {s: sorted(list(c) for c in cs) for s, cs in self.combos.items()},
        }


def make_layout(room: RoomType, n_target: int, name: str, scene_num: int, rng: random.Random) -> Layout:
    """A layout of ``room`` with about ``n_target`` receptacles (clamped to what the room allows)."""
    counts = {k: lo for k, (lo, _) in room.required.items()}
    optional = sorted(room.optional)
    rng.shuffle(optional)
    maxima = {**{k: hi for k, (_, hi) in room.required.items()}, **{k: hi for k, (_, hi) in room.optional.items()}}
    for k in optional:  # a few optional kinds first, so small rooms still vary
        if sum(counts.values()) >= n_target:
            break
        counts[k] = room.optional[k][0]
    while sum(counts.values()) < n_target:
        growable = sorted(k for k in counts if counts[k] < maxima[k])
        if not growable:
            break
        k = rng.choice(growable)
        counts[k] += 1
    order = sorted(counts)
    return Layout(name, room.name, scene_num, tuple((k, counts[k]) for k in order))


def room_combos(room: RoomType) -> set[tuple[str, str, str]]:
    """Every goal combination (task type, object kind, goal receptacle kind) a room type can host."""
    kinds = set(room.required) | set(room.optional)
    out: set[tuple[str, str, str]] = set()
    for task_type in room.tasks:
        appliance, need = APPLIANCE[task_type], NEEDS[task_type]
        if appliance is not None and appliance not in room.required:
            continue
        for ok in room.objects:
            spec = OBJECTS[ok]
            if need is not None and not getattr(spec, need):
                continue
            if task_type == "look_at_obj_in_light":
                if room.has_lamp:
                    out.add((task_type, ok, LAMP))
                continue
            for rk in spec.places:
                if rk in kinds and rk not in GOAL_EXCLUDED.get(task_type, frozenset()):
                    out.add((task_type, ok, rk))
    return out


def make_split_plan(seed: int, size: str) -> SplitPlan:
    """Draw the layouts and hold out layouts and goal combinations for ``valid_unseen``."""
    rng = random.Random(f"alfworld-split-plan:{seed}:{size}")
    lo, hi = SIZES[size].receptacles
    seen_layouts: list[Layout] = []
    unseen_layouts: list[Layout] = []
    scene = 1
    for room_name in sorted(ROOMS):
        room = ROOMS[room_name]
        layouts = [make_layout(room, rng.randint(lo, hi), f"{room_name}_{seed}_{i:02d}", scene + i, rng)
                   for i in range(LAYOUTS_PER_ROOM)]
        scene += 100
        unseen_layouts += layouts[:UNSEEN_LAYOUTS_PER_ROOM]
        seen_layouts += layouts[UNSEEN_LAYOUTS_PER_ROOM:]
    all_combos: set[tuple[str, str, str]] = set()
    for room in ROOMS.values():
        all_combos |= room_combos(room)
    unseen: set[tuple[str, str, str]] = set()
    for task_type in TASK_TYPES:
        group = sorted(c for c in all_combos if c[0] == task_type)
        rng.shuffle(group)
        unseen |= set(group[: max(1, round(UNSEEN_COMBO_FRACTION * len(group)))])
    seen = frozenset(all_combos - unseen)
    return SplitPlan(
        layouts={"train": tuple(seen_layouts), "valid_seen": tuple(seen_layouts), "valid_unseen": tuple(unseen_layouts)},
        combos={"train": seen, "valid_seen": seen, "valid_unseen": frozenset(unseen)},
    )


# ---------------------------------------------------------------- one game
def _feasible(layout: Layout, combo: tuple[str, str, str]) -> bool:
    task_type, ok, rk = combo
    kinds = layout.kinds
    if task_type == "look_at_obj_in_light":
        room_ok = ROOMS[layout.room].has_lamp
        return room_ok and ok in ROOMS[layout.room].objects and any(k in kinds for k in OBJECTS[LAMP].places) \
            and any(k in kinds for k in OBJECTS[ok].places)
    appliance = APPLIANCE[task_type]
    if rk not in kinds or (appliance is not None and appliance not in kinds) or ok not in ROOMS[layout.room].objects:
        return False
    return any(k in kinds and k != rk for k in OBJECTS[ok].places)


def sample_world(plan: SplitPlan, split: str, index: int, seed: int, size: str, attempt: int = 0) -> World:
    """The world of game ``index`` of ``split`` (deterministic in all arguments)."""
    rng = random.Random(f"alfworld-game:{seed}:{size}:{split}:{index}:{attempt}")
    task_type = TASK_TYPES[(index + attempt) % len(TASK_TYPES)]
    of_type = sorted(c for c in plan.combos[split] if c[0] == task_type)
    options = [(layout, combo) for layout in plan.layouts[split] for combo in of_type if _feasible(layout, combo)]
    if not options:
        raise ExpertError(f"split {split}: no layout can host a {task_type} task")
    # two-stage choice keeps combos balanced instead of favouring big layouts
    combos = sorted({c for _, c in options})
    combo = rng.choice(combos)
    layout = rng.choice([l for l, c in options if c == combo])
    task = Task(task_type, combo[1], combo[2], template=rng.randrange(len(GOAL_TEMPLATES[task_type])))
    receps = receptacle_ids(layout, rng)
    room = ROOMS[layout.room]
    d_lo, d_hi = SIZES[size].distractors

    def spots(kind: str, avoid_goal: bool) -> list[int]:
        places = OBJECTS[kind].places
        return [i for i, r in enumerate(receps) if r.kind in places and not (avoid_goal and r.kind == task.recep)]

    placed: list[tuple[str, int]] = []
    n_target = 1 if task_type != "pick_two_obj_and_place" else rng.choice((2, 2, 3))
    for _ in range(n_target):
        placed.append((task.obj, rng.choice(spots(task.obj, True))))
    if room.has_lamp:
        placed.append((LAMP, rng.choice(spots(LAMP, False))))
    distractor_kinds = [k for k in room.objects if k != LAMP]
    for _ in range(rng.randint(d_lo, d_hi)):
        kind = rng.choice(distractor_kinds)
        where = spots(kind, kind == task.obj)
        if where and sum(k == kind for k, _ in placed) < MAX_PER_KIND:
            placed.append((kind, rng.choice(where)))
    # number the objects of each kind in a random order, then give them ALFRED ids
    by_kind: dict[str, list[int]] = {}
    for j, (kind, _) in enumerate(placed):
        by_kind.setdefault(kind, []).append(j)
    numbers: dict[int, int] = {}
    for kind in sorted(by_kind):
        js = by_kind[kind]
        nums = list(range(1, len(js) + 1))
        rng.shuffle(nums)
        numbers.update(zip(js, nums))
    objects = []
    for j, (kind, r) in enumerate(placed):
        count = len(by_kind[kind])
        objects.append(Obj(kind, numbers[j], mangled_id(kind, count - numbers[j], rng), r))
    return World(layout, receps, objects, task, extra={"split": split, "index": index, "attempt": attempt})


@dataclass(frozen=True)
class GameJob:
    """A game written to disk and waiting to be replayed in the engine."""

    split: str
    index: int
    attempt: int
    game_path: str
    game_file: str  # json_2.1.1/<split>/<task>/<trial>
    steps: tuple[ExpertStep, ...]


def _domain_text() -> str:
    return (resources.files("alfworld") / "data" / "alfred.pddl").read_text(encoding="utf-8")


def _grammar_template() -> str:
    return (resources.files("steca.generators") / "alfworld_grammar.twl2").read_text(encoding="utf-8")


def game_folder(world: World, seed: int) -> str:
    """``<task_type>-<Object>-None-<Receptacle>-<scene>/trial_S<seed>_<index>`` (ALFWorld's naming)."""
    t = world.task
    return f"{t.task_type}-{t.obj}-None-{t.recep}-{world.layout.scene_num}/trial_S{seed}_{world.extra['index']:05d}"


def write_game(world: World, steps: Sequence[ExpertStep], out_dir: Path, seed: int, size: str,
               domain: str, grammar_template: str) -> tuple[Path, str]:
    """Write ``game.tw-pddl`` and ``traj_data.json``; return the game path and its ``game_file`` name."""
    split = world.extra["split"]
    rel = game_folder(world, seed)
    trial = out_dir / "json_2.1.1" / split / rel
    trial.mkdir(parents=True, exist_ok=True)
    t = world.task
    name = f"gen_{seed}_{split}_{world.extra['index']:05d}"
    game = {
        "pddl_domain": domain,
        "grammar": grammar_template.replace("TASK_DESCRIPTION", t.description),
        "pddl_problem": pddl_problem(world, name),
        "solvable": True,
        "walkthrough": [s.action for s in steps],
    }
    look = t.task_type == "look_at_obj_in_light"
    traj = {
        "task_type": t.task_type,
        "task_id": name,
        "pddl_params": {"object_target": t.obj, "parent_target": "" if look else t.recep,
                        "toggle_target": LAMP if look else "", "mrecep_target": "", "object_sliced": False},
        "scene": {"floor_plan": world.layout.name, "scene_num": world.layout.scene_num, "room": world.layout.room,
                  "random_seed": random.Random(name).randrange(2**31), "dirty_and_empty": False},
        "turk_annotations": {"anns": [{"task_desc": t.description[0].upper() + t.description[1:] + ".",
                                       "high_descs": [s.thought for s in steps], "assignment_id": "generated",
                                       "votes": []}]},
        "generator": {"name": "steca.generators.alfworld_games", "version": GENERATOR_VERSION, "seed": seed,
                      "size": size, "split": split, "index": world.extra["index"], "attempt": world.extra["attempt"],
                      "layout": world.layout.name, "combo": list(t.combo),
                      "n_receptacles": len(world.receptacles), "n_objects": len(world.objects)},
    }
    game_path = trial / "game.tw-pddl"
    game_path.write_text(json.dumps(game, indent=1) + "\n", encoding="utf-8")
    (trial / "traj_data.json").write_text(json.dumps(traj, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    return game_path, f"json_2.1.1/{split}/{rel}"


# ---------------------------------------------------------------- replay in the engine
@dataclass(frozen=True)
class Replay:
    """What the engine said while the expert played: raw first observation, raw observations, wins."""

    first: str
    observations: tuple[str, ...]
    won: tuple[bool, ...]


class EnginePlayer:
    """One TextWorld ``PddlEnv`` with ALFWorld's wrappers (as ``AlfredTWEnv`` builds it), reused
    across games: loading fast-downward's library once per player instead of once per game."""

    def __init__(self) -> None:
        self._env: Any = None

    def play(self, game_path: str | os.PathLike, actions: Sequence[str]) -> Replay:
        """Load the game, reset it and play ``actions``; return what the engine said."""
        with keep_argv():
            if self._env is None:
                self._env = start_textworld(Path(game_path))
            else:
                self._env.load(str(game_path))
            state = self._env.reset()
        first = state.feedback
        observations, won = [], []
        for action in actions:
            state, _, _ = self._env.step(action)
            observations.append(state.feedback)
            won.append(bool(state["won"]))
        return Replay(first, tuple(observations), tuple(won))

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def replay_in_engine(game_path: str | os.PathLike, actions: Sequence[str]) -> Replay:
    """Play ``actions`` in ``game_path`` with a fresh engine."""
    player = EnginePlayer()
    try:
        return player.play(game_path, actions)
    finally:
        player.close()


def check_replay(job: GameJob, replay: Replay) -> str | None:
    """None when the expert won exactly at its last step without a rejected action, else the problem."""
    for i, (obs, won) in enumerate(zip(replay.observations, replay.won)):
        if obs.strip() == "Nothing happens.":
            return f"step {i} ({job.steps[i].action!r}) was rejected by the engine"
        if won and i != len(job.steps) - 1:
            return f"won early at step {i}"
    if not replay.won or not replay.won[-1]:
        return "the expert trajectory does not win"
    return None


def _replay_job(job: GameJob, player: EnginePlayer | None = None) -> tuple[GameJob, Replay | None, str | None]:
    own = player is None
    player = player or EnginePlayer()
    try:
        replay = player.play(job.game_path, [s.action for s in job.steps])
    except Exception as e:  # one broken game must not stop the pool; the parent regenerates it
        player.close()  # the engine may be in a bad state
        return job, None, f"engine error: {type(e).__name__}: {e}"
    finally:
        if own:
            player.close()
    return job, replay, check_replay(job, replay)


def _replay_chunk(jobs: list[GameJob]) -> list[tuple[GameJob, Replay | None, str | None]]:
    """Replay a chunk of games with one engine (run in a pool worker)."""
    player = EnginePlayer()
    try:
        with EngineMemo().active():
            return [_replay_job(job, player) for job in jobs]
    finally:
        player.close()


def sft_record(job: GameJob, replay: Replay, seed: int, instruction: str = "full") -> SFTRecord:
    """STeCa's SFT layout: instruction, "OK", first observation, then Thought/Action and Observation turns."""
    conv = [Message("user", alfworld_instruction(instruction)), Message("assistant", "OK"),
            Message("user", clean_observation(replay.first))]
    for i, (step, obs) in enumerate(zip(job.steps, replay.observations)):
        conv.append(Message("assistant", step.turn()))
        if i < len(job.steps) - 1:
            conv.append(Message("user", f"Observation: {clean_observation(obs)}"))
    return SFTRecord(id=f"alfworld_gen_{seed}_{job.split}_{job.index:05d}", game_file=job.game_file,
                     conversations=conv)


# ---------------------------------------------------------------- the whole benchmark
def _make_job(plan: SplitPlan, split: str, index: int, attempt: int, out_dir: Path, seed: int, size: str,
              domain: str, grammar: str, thoughts: str = "terse") -> GameJob:
    while True:
        if attempt >= MAX_ATTEMPTS:
            raise ExpertError(f"split {split}, game {index}: no valid game after {MAX_ATTEMPTS} attempts")
        world = sample_world(plan, split, index, seed, size, attempt)
        try:
            steps = expert_plan(world, random.Random(f"alfworld-expert:{seed}:{split}:{index}:{attempt}"), thoughts)
        except ExpertError as e:
            logger.warning("split %s, game %d, attempt %d: %s; trying the next sub-seed", split, index, attempt, e)
            attempt += 1
            continue
        path, game_file = write_game(world, steps, out_dir, seed, size, domain, grammar)
        return GameJob(split, index, attempt, str(path), game_file, tuple(steps))


def generate(output_dir: str | os.PathLike, seed: int = 0, n_train: int = 400, n_seen: int = 50,
             n_unseen: int = 50, size: str = "small", workers: int | None = None,
             progress: bool = True, instruction: str = "full", thoughts: str = "terse") -> dict[str, Path]:
    """Generate the benchmark into ``output_dir``; returns the SFT file of each split.

    Resumable: games already replayed (listed in ``.progress_<split>.jsonl``) are not replayed
    again. Deterministic: the same arguments give byte-identical files.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    alfworld_instruction(instruction)  # validates the style
    if thoughts not in THOUGHT_STYLES:
        raise ValueError(f"unknown thought style {thoughts!r}; expected one of {list(THOUGHT_STYLES)}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "valid_seen": n_seen, "valid_unseen": n_unseen}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"--n for split {split} must be >= 0, got {n}")
    plan = make_split_plan(seed, size)
    domain, grammar = _domain_text(), _grammar_template()
    manifest = {"generator": "steca.generators.alfworld_games", "version": GENERATOR_VERSION, "seed": seed,
                "size": size, "counts": counts, "split_plan": plan.to_json()}
    if instruction != "full":  # manifests of earlier runs (full instruction) stay valid
        manifest["instruction"] = instruction
    if thoughts != "terse":  # likewise for the thought style
        manifest["thoughts"] = thoughts
    manifest_path = out / "manifest.json"
    if (out / "json_2.1.1").exists() and not manifest_path.exists():
        raise FileExistsError(f"{out / 'json_2.1.1'} exists but {manifest_path} does not: this folder holds games "
                              f"that this generator did not write; choose an empty --output_dir")
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if old != manifest:
            logger.warning("%s was made with other arguments; its progress files are discarded", manifest_path)
            for split in SPLITS:
                (out / f".progress_{split}.jsonl").unlink(missing_ok=True)
                shutil.rmtree(out / "json_2.1.1" / split, ignore_errors=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    workers = workers or min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()
    progress_paths = {split: out / f".progress_{split}.jsonl" for split in SPLITS}
    jobs: list[GameJob] = []
    for split in SPLITS:
        done = {int(o["index"]): o for o in read_jsonl_objects(progress_paths[split])
                if isinstance(o, dict) and "index" in o and "record" in o}
        for index in range(counts[split]):
            attempt = int(done[index]["attempt"]) if index in done else 0
            job = _make_job(plan, split, index, attempt, out, seed, size, domain, grammar, thoughts)
            if index not in done:
                jobs.append(job)
    logger.info("wrote %d games in %.1f s; replaying %d expert trajectories in the engine (%d workers)",
                sum(counts.values()), time.perf_counter() - t0, len(jobs), workers)
    sinks = {split: JsonlSink(progress_paths[split]) for split in SPLITS}
    try:
        for job, replay, problem in _run_pool(jobs, workers, progress):
            while problem is not None:
                logger.warning("split %s, game %d: %s; regenerating it", job.split, job.index, problem)
                shutil.rmtree(Path(job.game_path).parent, ignore_errors=True)
                job = _make_job(plan, job.split, job.index, job.attempt + 1, out, seed, size, domain, grammar, thoughts)
                job, replay, problem = _replay_job(job)
            assert replay is not None
            rec = sft_record(job, replay, seed, instruction)
            sinks[job.split].write({"index": job.index, "attempt": job.attempt, "record": rec.to_dict()})
    finally:
        for sink in sinks.values():
            sink.close()
    results: dict[str, Path] = {}
    for split in SPLITS:
        records = {int(o["index"]): o["record"] for o in read_jsonl_objects(progress_paths[split])}
        missing = [i for i in range(counts[split]) if i not in records]
        if missing:
            raise RuntimeError(f"{progress_paths[split]}: games {missing[:10]} have no trajectory")
        sft_path = out / f"sft_{split}.json"
        write_records(sft_path, [SFTRecord.from_dict(records[i]) for i in range(counts[split])], fmt="json")
        progress_paths[split].unlink(missing_ok=True)
        results[split] = sft_path
        logger.info("%s: %d games, SFT file %s", split, counts[split], sft_path)
    logger.info("generated %d games in %.1f s", sum(counts.values()), time.perf_counter() - t0)
    return results


def _run_pool(jobs: list[GameJob], workers: int, progress: bool
              ) -> Iterator[tuple[GameJob, Replay | None, str | None]]:
    """Replay ``jobs`` in ``workers`` processes, in order, in chunks that share one engine each."""
    bar = tqdm(total=len(jobs), desc="replay", disable=not progress, unit="game")
    chunk = max(1, min(16, len(jobs) // (4 * max(workers, 1))))
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    try:
        if workers <= 1 or len(chunks) < 2:
            for c in chunks:
                for item in _replay_chunk(c):
                    yield item
                    bar.update(1)
            return
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(workers) as pool:
            for results in pool.imap(_replay_chunk, chunks):
                for item in results:
                    yield item
                    bar.update(1)
    finally:
        bar.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate small ALFWorld games with expert trajectories.")
    parser.add_argument("--output_dir", required=True, help="where json_2.1.1/ and the sft_*.json files go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=400)
    parser.add_argument("--n_seen", type=int, default=50, help="games in valid_seen (the dev split)")
    parser.add_argument("--n_unseen", type=int, default=50, help="games in valid_unseen (the test split)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="room size: tiny = 4-7 receptacles, small = 6-12 receptacles, medium = 10-16, large = 14-22")
    parser.add_argument("--instruction", choices=sorted(INSTRUCTIONS), default="full",
                        help="first user turn: full (actions and rules, for any LLM) or short (reply format only, "
                             "for tiny models trained from scratch)")
    parser.add_argument("--thoughts", choices=THOUGHT_STYLES, default="terse",
                        help="the expert's thoughts: terse (why this step) or memo (also the task and the receptacles "
                             "not yet checked, repeated in every thought: a working memory for tiny models)")
    parser.add_argument("--workers", type=int, default=None, help="engine replay processes (default: min(2, CPUs))")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    paths = generate(args.output_dir, args.seed, args.n_train, args.n_seen, args.n_unseen, args.size,
                     args.workers, not args.no_progress, args.instruction, args.thoughts)
    logger.info("done in %.1f s: %s", time.perf_counter() - t0, ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
