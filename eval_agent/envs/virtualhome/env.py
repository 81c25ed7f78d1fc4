"""STeCa's VirtualHome environment on the symbolic ``evolving_graph`` simulator (no Unity).

One instance plays the tasks of one jsonl file. Per step: the text action is parsed
(:mod:`.actions`), its object names are resolved to node ids, the script line runs in the
(fixed, see :mod:`.evolving_graph_adapter`) simulator, and the goal (:class:`~.task_files.Goal`) is checked.

Object resolution, in order: the task's ``object_id_dict``; the last object the agent used, if of
that class; objects of that class close to the agent; any node of that class (or of an equivalent
class from ``class_name_equivalence.json``). Ties are broken by a choice that depends only on
``(seed, task, step, name)`` through SHA-256, never on process state, so the same seed gives the
same choices run after run, across processes and after :meth:`reset_to_prefix`.

Observation: the objects the character is close to, sorted by ``(class name, id)``, each with its
states (``dresser is OPEN and CLEAN``), then the ``ON``/``INSIDE`` relations among them and the
character (``plate ON table``), then ``You have X.`` for held objects; ``Nothing happens.`` when an
action fails. The first observation also names the room and the task.

Speed: the task's base graph is built once (LRU cache) and an episode is a copy-on-write overlay
on it, so a reset costs O(1); :meth:`reset_to_prefix` restores a cached snapshot of the longest
already-executed prefix and replays only the rest.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eval_agent.bounded_cache import BoundedCache, PrefixCache
from eval_agent.envs.task_env import TaskEnv
from eval_agent.envs.virtualhome.actions import TextAction, parse_text_action, program_line_to_text
from eval_agent.envs.virtualhome.graph import (ROOM_CATEGORY, Resources, build_initial_graph, load_real_init_graph,
                                               load_resources, load_scene, unreachable_reason)
from eval_agent.envs.virtualhome.evolving_graph_adapter import (ALL_FIXES, Simulator, copy_state, internals_supported,
                                                               load_simulator)
from eval_agent.envs.virtualhome.task_files import Goal, TaskFileError, VHTask, load_tasks
from eval_agent.types import MAX_STEPS, StepOutcome

logger = logging.getLogger(__name__)

NOTHING_HAPPENS = "Nothing happens."
SPLIT_FILES = {"train": "vh_train.jsonl", "dev": "vh_seen_test.jsonl", "seen": "vh_seen_test.jsonl",
               "test": "vh_seen_test.jsonl", "unseen": "vh_unseen_test.jsonl"}
_STATE_ORDER = ("OPEN", "CLOSED", "ON", "OFF", "PLUGGED_IN", "PLUGGED_OUT", "CLEAN", "DIRTY", "SITTING", "LYING")
_NAMED_RELATIONS = ("ON", "INSIDE")


@dataclass
class _Episode:
    """Everything that changes during an episode (restorable as a snapshot)."""

    task_id: str
    state: Any
    first_observation: str = ""
    last_object: int | None = None
    steps: int = 0
    won: bool = False
    outcomes: list[StepOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class _Prepared:
    task: VHTask
    graph: Any  # EnvironmentGraph
    char_id: int
    unreachable: str | None


class VirtualHomeEnv(TaskEnv):
    """The VirtualHome environment over the tasks of ``test_path`` (or of ``split``'s file in ``data_dir``,
    see :data:`SPLIT_FILES`; ``VirtualHomeEnv(data_dir, split="train")`` works too).

    ``data_dir`` holds ``scene_graphs/`` and ``resources/``; ``init_graph_dir`` (default
    ``<data_dir>/init_graphs`` when it exists) optionally holds real initial graphs
    (``<scene>_graph/<subset>/<file>.json`` with an ``init_graph`` key, as in STeCa's
    ``init_and_final_graphs``), used for the tasks that have one.

    ``internals`` (default on): copy episode states through the simulator's internals when the installed
    version is a tested one (:mod:`.evolving_graph_adapter`); off, or with an untested version, through
    its public API (``self.fast`` says which). Both give the same episodes.
    """

    name = "virtualhome"
    max_steps = MAX_STEPS

    def __init__(self, test_path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                 seed: int = 0, max_steps: int = MAX_STEPS, split: str | None = None,
                 init_graph_dir: str | os.PathLike | None = None, cache_size: int = 32,
                 prefix_cache_size: int = 1024, fixes: Sequence[str] = tuple(sorted(ALL_FIXES)),
                 internals: bool = True):
        if data_dir is None and test_path is not None and Path(test_path).is_dir():
            data_dir, test_path = test_path, None  # VirtualHomeEnv(data_dir, split=...)
        data_dir = data_dir or os.environ.get("STECA_VH_DATA")
        if data_dir is None:
            raise ValueError("VirtualHome needs data_dir (scene_graphs/ and resources/) or $STECA_VH_DATA")
        if test_path is None:
            split = split or "test"
            if split not in SPLIT_FILES:
                raise ValueError(f"unknown VirtualHome split {split!r}; expected one of {sorted(SPLIT_FILES)} "
                                 f"or a test_path")
            test_path = Path(data_dir) / SPLIT_FILES[split]
        self.data_dir = Path(data_dir)
        self.scene_dir = self.data_dir / "scene_graphs"
        if not self.scene_dir.is_dir():
            raise FileNotFoundError(f"{self.scene_dir}: no scene_graphs folder in the VirtualHome data dir")
        self.resources: Resources = load_resources(self.data_dir / "resources")
        scenes = {p.name[: -len("_graph.json")] for p in self.scene_dir.glob("*_graph.json")}
        tasks, self.load_errors = load_tasks(test_path, known_scenes=scenes)
        self._tasks: dict[str, VHTask] = {t.task_id: t for t in tasks}
        # SFT records name their game by the task's ``path`` (``game_file``): accept it as an id too
        self._by_path: dict[str, VHTask] = {}
        for t in tasks:
            self._by_path.setdefault(t.path, t)
        self.test_path = str(test_path)
        self.max_steps = max_steps
        self.seed = seed
        if init_graph_dir is None and (self.data_dir / "init_graphs").is_dir():
            init_graph_dir = self.data_dir / "init_graphs"
        self.init_graph_dir = Path(init_graph_dir) if init_graph_dir else None
        self.sim: Simulator = load_simulator(fixes)
        self.fast = internals and internals_supported()
        self._cache: BoundedCache[str, _Prepared] = BoundedCache(cache_size)
        self._prefix_cache: PrefixCache[_Episode] = PrefixCache(prefix_cache_size)
        self._ep: _Episode | None = None
        E = self.sim.environment
        self._rel = {r.name: r for r in E.Relation}
        self._executor = self.sim.execution.ScriptExecutor

    # ------------------------------------------------------------------ TaskEnv interface
    def task_ids(self) -> list[str]:
        return list(self._tasks)

    def task(self, task_id: str) -> VHTask:
        """The task with this id, or with this ``path`` (what SFT records store as ``game_file``)."""
        task = self._tasks.get(task_id) or self._by_path.get(task_id)
        if task is None:
            raise KeyError(f"unknown VirtualHome task {task_id!r} in {self.test_path}")
        return task

    def game_file(self, task_id: str) -> str:
        return self.task(task_id).path

    def expert_actions(self, task_id: str) -> list[str]:
        """The task's ground-truth program as STeCa text actions (``Walk to bedroom``...)."""
        return [program_line_to_text(line) for line in self.task(task_id).program]

    def task_type(self, task_id: str) -> str | None:
        """The task's category: its title in the task file (``Watch TV``, ``Work``...)."""
        return self.task(task_id).title.strip() or None

    def is_reachable(self, task_id: str) -> bool:
        """False when the goal needs nodes that the initial graph lacks (see :mod:`.graph`)."""
        return self._prepare(task_id).unreachable is None

    def unreachable_reason(self, task_id: str) -> str | None:
        return self._prepare(task_id).unreachable

    def reset(self, task_id: str) -> str:
        prep = self._prepare(task_id)
        state = self.sim.environment.EnvironmentState(prep.graph, self.resources.name_equivalence,
                                                      instance_selection=True)
        self._ep = _Episode(task_id, state)
        self._ep.first_observation = self._first_observation(prep)
        return self._ep.first_observation

    def execute(self, action: str) -> StepOutcome:
        if self._ep is None:
            raise RuntimeError("execute() before reset()")
        ep = self._ep
        prep = self._prepare(ep.task_id)
        ep.steps += 1
        outcome = self._step(prep, ep, action)
        ep.outcomes.append(outcome)
        return outcome

    def reset_to_prefix(self, task_id: str, actions: Sequence[str]) -> tuple[str, list[StepOutcome]]:
        """Same result as reset + execute of each action, from a cached snapshot when possible."""
        self._prepare(task_id)
        acts = tuple(actions)
        start, snap = self._prefix_cache.longest(task_id, acts)
        if snap is None:
            self.reset(task_id)
        else:
            self._ep = self._copy_episode(snap)
        for i in range(start, len(acts)):
            self.execute(acts[i])
            if self._prefix_cache.enabled:
                self._prefix_cache.put(task_id, acts[: i + 1], self._copy_episode(self._ep))
        assert self._ep is not None
        return self._ep.first_observation, list(self._ep.outcomes)

    # ------------------------------------------------------------------ preparation
    def _prepare(self, task_id: str) -> _Prepared:
        task = self.task(task_id)
        task_id = task.task_id  # one cache entry per task, whether named by id or by path
        prep = self._cache.get(task_id)
        if prep is not None:
            return prep
        graph_dict = None
        if self.init_graph_dir is not None:
            graph_dict = load_real_init_graph(self.init_graph_dir, task)
        if graph_dict is None:
            scene_path = self.scene_dir / f"{task.scene}_graph.json"
            graph_dict = build_initial_graph(task, load_scene(str(scene_path)), self.resources)
        graph = self.sim.environment.EnvironmentGraph(graph_dict)
        chars = sorted(n["id"] for n in graph_dict["nodes"] if n["class_name"] == "character")
        reason = unreachable_reason(task, {n["id"] for n in graph_dict["nodes"]})
        prep = _Prepared(task, graph, chars[0], reason)
        self._cache.put(task_id, prep)
        return prep

    def _copy_episode(self, ep: _Episode) -> _Episode:
        """An independent copy of ``ep`` (its simulator state through :func:`copy_state`)."""
        return _Episode(ep.task_id, copy_state(ep.state, self.fast), ep.first_observation, ep.last_object, ep.steps,
                        ep.won, list(ep.outcomes))

    # ------------------------------------------------------------------ stepping
    def _step(self, prep: _Prepared, ep: _Episode, action: str) -> StepOutcome:
        parsed = parse_text_action(action)
        if parsed is None:
            return StepOutcome(NOTHING_HAPPENS, won=ep.won, valid=False)
        ids = []
        for k, name in enumerate(parsed.names):
            nid = self._resolve(prep, ep, name, k)
            if nid is None:
                return StepOutcome(NOTHING_HAPPENS, won=ep.won, valid=False)
            ids.append(nid)
        ok = self._run_line(ep, parsed, ids)
        if not ok:
            return StepOutcome(NOTHING_HAPPENS, won=ep.won, valid=False)
        if ids:
            ep.last_object = ids[-1] if parsed.action not in ("PUTBACK", "PUTIN", "POUR") else ids[0]
        if not ep.won and self._goal_reached(prep, ep.state):
            ep.won = True
        return StepOutcome(self.observe(prep, ep.state), won=ep.won, valid=True)

    def _run_line(self, ep: _Episode, parsed: TextAction, ids: list[int]) -> bool:
        S = self.sim.scripts
        objs = [S.ScriptObject(ep.state.get_node(i).class_name, i) for i in ids]
        line = S.ScriptLine(S.Action[parsed.action], objs, 0)
        info = self.sim.execution.ExecutionInfo()
        try:
            new_state = next(self._executor.call_action_method(S.Script([line]), ep.state, info, 0,
                                                                modify=True, in_place=True), None)
        except Exception as e:  # the simulator has rough edges; one bad action must not end a run
            logger.debug("simulator error on %s: %r", line, e)
            return False
        if new_state is None:
            return False
        ep.state = new_state
        return True

    def _resolve(self, prep: _Prepared, ep: _Episode, name: str, position: int) -> int | None:
        state = ep.state
        oid = prep.task.object_ids.get(name)
        if oid is not None and state.get_node(oid) is not None:
            return oid
        classes = [name] + list(self.resources.name_equivalence.get(name, []))
        cands = sorted({n.id for c in classes for n in state.get_nodes_by_attr("class_name", c)})
        if not cands:
            return None
        if ep.last_object in cands:
            return ep.last_object
        close = sorted(set(cands) & set(state.get_node_ids_from(prep.char_id, self._rel["CLOSE"])))
        pool = close or cands
        return pool[self._choice(prep.task.task_id, ep.steps, name, position, len(pool))]

    def _choice(self, task_id: str, step: int, name: str, position: int, n: int) -> int:
        key = f"{self.seed}|{task_id}|{step}|{name}|{position}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % n

    # ------------------------------------------------------------------ goal and observations
    def _goal_reached(self, prep: _Prepared, state: Any) -> bool:
        return goal_reached(state, prep.task.goal, self._rel)

    def _has(self, state: Any, a: int, r: str, b: int) -> bool:
        return has_edge(state, a, r, b, self._rel)

    def room_of_character(self, prep: _Prepared, state: Any) -> str:
        for n in state.get_nodes_from(state.get_node(prep.char_id), self._rel["INSIDE"]):
            if n.category == ROOM_CATEGORY:
                return n.class_name
        return "house"

    def observe(self, prep: _Prepared, state: Any) -> str:
        """The observation text after a successful action (deterministic order; see module doc)."""
        char = state.get_node(prep.char_id)
        close = sorted((n for n in state.get_nodes_from(char, self._rel["CLOSE"]) if n.category != ROOM_CATEGORY),
                       key=lambda n: (n.class_name, n.id))
        parts = []
        for n in close:
            states = [s.name for s in n.states]
            states.sort(key=lambda s: _STATE_ORDER.index(s) if s in _STATE_ORDER else len(_STATE_ORDER))
            parts.append(f"{n.class_name} is {' and '.join(states)}" if states else n.class_name)
        char_states = sorted(s.name for s in char.states if s.name in ("SITTING", "LYING"))
        if char_states:
            parts.append(f"character is {' and '.join(char_states)}")
        listed = {n.id: n for n in close}
        listed[char.id] = char
        for n in sorted(listed.values(), key=lambda n: (n.class_name, n.id)):
            for rel in _NAMED_RELATIONS:
                for m in sorted(state.get_nodes_from(n, self._rel[rel]), key=lambda m: (m.class_name, m.id)):
                    if m.id in listed and m.id != n.id:
                        parts.append(f"{n.class_name} {rel} {m.class_name}")
        text = ", ".join(parts) + ". " if parts else ""
        held = sorted((m for rel in ("HOLDS_RH", "HOLDS_LH") for m in state.get_nodes_from(char, self._rel[rel])),
                      key=lambda m: (m.class_name, m.id))
        if held:
            text += f"You have {' and '.join(m.class_name for m in held)}. "
        return text.strip() or "Nothing is close to you."

    def _first_observation(self, prep: _Prepared) -> str:
        assert self._ep is not None
        room = self.room_of_character(prep, self._ep.state)
        seen = self.observe(prep, self._ep.state)
        return f"You are in the {room}. {seen}\nYour task is to: {prep.task.instruction()}"


def has_edge(state: Any, a: int, rel: str, b: int, relations: dict[str, Any]) -> bool:
    """Whether ``a rel b`` holds in simulator state ``state`` (False when a node is missing)."""
    na, nb = state.get_node(a), state.get_node(b)
    if na is None or nb is None:
        return False
    return bool(state.has_edge(na, relations[rel], nb))


def goal_reached(state: Any, goal: Goal, relations: dict[str, Any]) -> bool:
    """STeCa's goal test: every goal node equals the current node (lists as sets), no ``absent``
    edge holds and every ``present`` edge holds."""
    for g in goal.nodes:
        node = state.get_node(int(g["id"]))
        if node is None:
            return False
        d = node.to_dict()
        for key, want in g.items():
            have = d.get(key)
            if isinstance(want, list):
                if have is None or set(want) != set(have):
                    return False
            elif want != have:
                return False
    if any(has_edge(state, a, r, b, relations) for a, r, b in goal.absent):
        return False
    return all(has_edge(state, a, r, b, relations) for a, r, b in goal.present)


def make_virtualhome_env(split: str = "test", data_dir: str | os.PathLike | None = None,
                         test_path: str | os.PathLike | None = None, **kwargs: Any) -> VirtualHomeEnv:
    """Build the env for the registry and the stages.

    ``data_dir`` (default ``$STECA_VH_DATA``) holds ``scene_graphs/``, ``resources/`` and the split
    files; ``test_path`` overrides the split file, which is otherwise ``SPLIT_FILES[split]``
    (``train`` -> ``vh_train.jsonl``; ``dev``/``seen``/``test`` -> ``vh_seen_test.jsonl``;
    ``unseen`` -> ``vh_unseen_test.jsonl``). Other keyword arguments go to :class:`VirtualHomeEnv`.
    """
    return VirtualHomeEnv(test_path, data_dir, split=split, **kwargs)


__all__ = ["VirtualHomeEnv", "make_virtualhome_env", "TaskFileError", "NOTHING_HAPPENS"]
