"""ALFWorld through the real TextWorld PDDL engine, as the STeCa pipeline plays it.

Each instance owns one TextWorld ``PddlEnv`` (wrapped by alfworld's ``AlfredDemangler`` and
``AlfredInfos``, as ``AlfredTWEnv`` does) and plays one game at a time. Observations are shown as
STeCa shows them: the ``-= Welcome ... =-`` banner dropped from the first one and the
``You arrive at loc N. `` prefix stripped; an action the engine does not know answers
``Nothing happens.``.

Why it is fast. Loading a game translates its PDDL into fast-downward's SAS format twice (about
0.2 s), and ``PddlEnv.reset`` repeats that translation every time. Here a game is loaded once per
instance and kept (LRU), and every engine state reached by :meth:`reset_to_prefix` is kept as a
*snapshot*: the fast-downward operators applied since the initial state, a copy of the Python-side
fact sets and the last ``GameState``. Restoring a snapshot reloads the cached SAS task, re-applies
those operators inside fast-downward (microseconds each) and puts the copies back, so reaching a
prefix that was reached before costs no translation and no text generation, and reaching prefix
``t`` after prefix ``t-1`` costs one engine step. The result is identical to reset + replay (a test
checks observation by observation).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from eval_agent.bounded_cache import BoundedCache
from eval_agent.envs.alfworld_oracle import AlfredGoal, next_action
from eval_agent.envs.alfworld_memo import EngineMemo
from eval_agent.envs.alfworld_game_files import (GameInfo, collect_games, default_data_root, resolve_game_file)
from eval_agent.envs.task_env import TaskEnv
from eval_agent.types import MAX_STEPS, StepOutcome

logger = logging.getLogger(__name__)

_ARRIVE_RE = re.compile(r"You arrive at loc \d+\. ")
NOTHING_HAPPENS = "Nothing happens."


# ALFWorld's six task types, keyed by the prefix of a game's task folder (``<type>-<args>/<trial>``),
# named as verl-agent reports them; the order is the one results tables use.
ALFWORLD_TASK_TYPES = {
    "pick_and_place_simple": "pick",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "look_at_obj_in_light": "look",
    "pick_two_obj_and_place": "pick two",
}


def alfworld_task_type(game_path: str) -> str | None:
    """The task type of an ALFWorld game path or task id (None when no folder names a known type)."""
    for part in reversed(game_path.replace("\\", "/").split("/")):
        kind = ALFWORLD_TASK_TYPES.get(part.split("-")[0])
        if kind is not None:
            return kind
    return None


def clean_observation(text: str) -> str:
    """STeCa's observation text: no welcome banner, no ``You arrive at loc N. `` prefix, stripped."""
    text = text.strip()
    if text.startswith("-="):
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return _ARRIVE_RE.sub("", text).strip()


@contextmanager
def keep_argv() -> Iterator[None]:
    """fast-downward's translator overwrites ``sys.argv`` while loading a game; put it back."""
    saved = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = saved


def new_textworld(policy_commands: bool = False) -> Any:
    """A TextWorld PDDL env with ALFWorld's wrappers, as ``AlfredTWEnv`` builds it, with no game loaded yet.

    (``textworld.start`` builds the same chain but also loads a first game, which costs a
    translation; ``AlfWorldEnv`` loads its games itself.) ``PddlEnv`` lists the admissible
    commands after every step whatever is requested: it looks the next command up among them.
    """
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    from textworld.envs.pddl import PddlEnv

    infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=policy_commands,
                               extras=["gamefile"])
    return AlfredInfos(AlfredDemangler(PddlEnv(infos)))


def start_textworld(game_path: Path, policy_commands: bool = False) -> Any:
    """A TextWorld env on ``game_path`` with ALFWorld's wrappers, as ``AlfredTWEnv`` builds it."""
    env = new_textworld(policy_commands)
    with keep_argv():
        env.load(str(game_path))
    return env


@dataclass
class _Snapshot:
    """An engine state: fast-downward operators since the initial state plus Python-side copies."""

    ops: tuple[tuple[int, int], ...]  # (operator id, number of effect atoms)
    facts: dict[Any, set]
    vars_by_name: dict
    vars_by_type: dict[Any, set]
    var_counts: Counter
    operators: dict
    game_state: Any
    moves: int
    outcomes: tuple[StepOutcome, ...] = ()


@dataclass
class _LoadedGame:
    path: Path
    game_data: dict
    logic: Any
    pddl_state: Any
    entity_infos: dict
    first_observation: str
    initial: _Snapshot | None = None


class AlfWorldEnv(TaskEnv):
    """ALFWorld games of one split (``train``, ``dev`` = valid_seen, ``test`` = valid_unseen).

    ``reset`` accepts a task id of the split (``<task>/<trial>``) or any game file resolvable under
    the data root (the ``game_file`` of an SFT record, e.g. ``data/json_2.1.1/train/<task>/<trial>``).
    """

    name = "alfworld"

    def __init__(self, data_dir: str | Path | None = None, split: str = "dev", max_steps: int = MAX_STEPS,
                 max_games: int = 128, max_snapshots: int = 4096, memoize: bool = True):
        root = Path(data_dir) if data_dir is not None else default_data_root()
        if root is None:
            raise ValueError("no ALFWorld data root: pass data_dir or set ALFWORLD_DATA")
        self.data_root = root
        self.split = split
        self.max_steps = max_steps
        self.max_games = max_games
        self.max_snapshots = max_snapshots
        self.games: list[GameInfo] = collect_games(root, split)
        self._by_id = {g.task_id: g for g in self.games}
        self._env: Any = None
        self._loaded: BoundedCache[Path, _LoadedGame] = BoundedCache(max_games, on_evict=self._forget_game)
        self._current: _LoadedGame | None = None
        self._pending: tuple[_LoadedGame, _Snapshot] | None = None  # a restore not yet applied to the engine
        self._ops: tuple[tuple[int, int], ...] = ()
        self._history: list[str] = []
        self._expert_cache: dict[Path, list[str]] = {}
        self._memo = EngineMemo() if memoize else None
        # engine states reached by reset_to_prefix, keyed by (game, actions); LRU over all games
        self._snapshots: BoundedCache[tuple[Path, tuple[str, ...]], _Snapshot] = BoundedCache(max_snapshots)

    # ------------------------------------------------------------------ task lookup
    def task_ids(self) -> list[str]:
        return [g.task_id for g in self.games]

    def game_path(self, task_id: str) -> Path:
        if task_id in self._by_id:
            return self._by_id[task_id].path
        return resolve_game_file(task_id, self.data_root)

    def game_file(self, task_id: str) -> str:
        if task_id in self._by_id:
            return self._by_id[task_id].game_file
        return task_id

    def task_type(self, task_id: str) -> str | None:
        """The ALFWorld task type (pick, clean, heat, cool, look, pick two) from the game's folder name."""
        return alfworld_task_type(str(self.game_path(task_id)))

    # ------------------------------------------------------------------ engine plumbing
    def _engine(self) -> Any:
        if self._env is None:
            self._env = new_textworld()
        return self._env

    def _load(self, path: Path) -> _LoadedGame:
        game = self._loaded.get(path)
        if game is not None:
            return game
        env = self._engine()
        with keep_argv(), self._memoized():
            env.load(str(path))
            state = env.reset()
        u = env.unwrapped
        game = _LoadedGame(path, u._game_data, u._logic, u._pddl_state, u._entity_infos,
                           clean_observation(state.feedback))
        game.initial = self._snapshot(u, (), ())
        self._loaded.put(path, game)
        return game

    def _forget_game(self, path: Path, _game: _LoadedGame) -> None:
        """Drop the snapshots of a game pushed out of the loaded-games cache."""
        for key in [k for k in self._snapshots if k[0] == path]:
            self._snapshots.pop(key)

    @staticmethod
    def _snapshot(u: Any, ops: tuple[tuple[int, int], ...], outcomes: tuple[StepOutcome, ...]) -> _Snapshot:
        ps = u._pddl_state
        return _Snapshot(
            ops=ops,
            facts={k: set(v) for k, v in ps._facts.items()},
            vars_by_name=dict(ps._vars_by_name),
            vars_by_type={k: set(v) for k, v in ps._vars_by_type.items()},
            var_counts=Counter(ps._var_counts),
            operators=dict(getattr(ps, "_operators", {})),
            game_state=u.state,
            moves=u._moves,
            outcomes=outcomes,
        )

    def _restore(self, game: _LoadedGame, snap: _Snapshot) -> None:
        """Make ``snap`` of ``game`` the current state. The engine itself is put there lazily, by
        :meth:`_engine_state`, when something reads or steps it: many states reached by
        :meth:`reset_to_prefix` (e.g. the N rollouts of a Monte Carlo state) are never stepped from."""
        self._current = game
        self._ops = snap.ops
        self._pending = (game, snap)

    def _engine_state(self) -> Any:
        """The unwrapped engine, in the current state (applies a pending restore first)."""
        if self._pending is not None:
            import fast_downward

            game, snap = self._pending
            u = self._env.unwrapped
            ps = game.pddl_state
            u._game_data, u._logic, u._pddl_state, u._entity_infos = game.game_data, game.logic, ps, game.entity_infos
            u.walkthrough = game.game_data.get("walkthrough")
            lib = ps.downward_lib
            lib.load_sas(ps.sas.encode("utf-8"))
            for op_id, n_effects in snap.ops:
                lib.apply_operator(op_id, (fast_downward.Atom * n_effects)())
            ps._facts = defaultdict(set, {k: set(v) for k, v in snap.facts.items()})
            ps._vars_by_name = dict(snap.vars_by_name)
            ps._vars_by_type = defaultdict(set, {k: set(v) for k, v in snap.vars_by_type.items()})
            ps._var_counts = Counter(snap.var_counts)
            ps._operators = dict(snap.operators)
            u.state = snap.game_state
            u.prev_state = None
            u._last_action = None
            u._moves = snap.moves
            self._pending = None
        return self._env.unwrapped

    def _memoized(self) -> Any:
        return self._memo.active() if self._memo is not None else nullcontext()

    # ------------------------------------------------------------------ TaskEnv API
    def reset(self, task_id: str) -> str:
        game = self._load(self.game_path(task_id))
        self._restore(game, game.initial)
        self._history = []
        return game.first_observation

    def execute(self, action: str) -> StepOutcome:
        if self._current is None:
            raise RuntimeError("execute() before reset()")
        env = self._env
        u = self._engine_state()
        operators_before = u._pddl_state._operators  # replaced by the step's own bookkeeping
        with self._memoized():
            state, _, _ = env.step(action)
        if u._last_action is not None:
            op = operators_before[u._last_action.id]
            self._ops = self._ops + ((op.id, op.nb_effect_atoms),)
        feedback = clean_observation(state.feedback)
        self._history.append(action)
        return StepOutcome(observation=feedback, won=bool(state["won"]), valid=state.feedback.strip() != NOTHING_HAPPENS)

    def reset_to_prefix(self, task_id: str, actions: Sequence[str]) -> tuple[str, list[StepOutcome]]:
        path = self.game_path(task_id)
        game = self._load(path)
        key = tuple(actions)
        k = len(key)
        while k > 0 and (path, key[:k]) not in self._snapshots:
            k -= 1
        if k:
            snap = self._snapshots.get((path, key[:k]))
        else:
            snap = game.initial
        self._restore(game, snap)
        self._history = list(key[:k])
        outcomes = list(snap.outcomes)
        for i in range(k, len(key)):
            outcomes.append(self.execute(key[i]))
            self._snapshots.put((path, key[: i + 1]), self._snapshot(self._env.unwrapped, self._ops, tuple(outcomes)))
        return game.first_observation, outcomes

    def admissible_commands(self) -> list[str]:
        """The engine's admissible commands in the current state."""
        return list(self._engine_state().state["admissible_commands"])

    def plan_from_here(self) -> list[str]:
        """A plan from fast-downward's planner (the engine's ``policy_commands``) for the current state."""
        u = self._engine_state()
        ps = u._pddl_state
        if self._memo is not None and self._memo.lazy_replan and not getattr(ps, "_steca_replan_sas", False):
            with keep_argv():
                ps.sas_replan = EngineMemo.replan_sas(ps._logic.domain, ps.pddl_problem)
            ps._steca_replan_sas = True
        ps.downward_lib.load_sas_replan(ps.sas_replan.encode("utf-8"))
        return list(ps.replan(u._entity_infos))

    def expert_actions(self, task_id: str) -> list[str]:
        """A winning action list for ``task_id`` (leaves the env reset to the task's initial state).

        The oracle expert of :mod:`eval_agent.envs.alfworld_oracle` acts on the true state; where
        none of its rules applies, fast-downward's planner (the engine's ``policy_commands``)
        finishes from that state. Plans are cached per game.
        """
        path = self.game_path(task_id)
        if path not in self._expert_cache:
            self._expert_cache[path] = self._solve(task_id, path)
        self.reset(task_id)
        return list(self._expert_cache[path])

    def _solve(self, task_id: str, path: Path) -> list[str]:
        goal = AlfredGoal.from_traj_data(path)
        self.reset(task_id)
        actions: list[str] = []
        for _ in range(4 * self.max_steps):
            u = self._engine_state()
            admissible = list(u.state["admissible_commands"])
            action = next_action(u._pddl_state.facts, u._entity_infos, goal, admissible)
            if action is None or action not in admissible:
                logger.info("%s: oracle expert stuck after %d actions; planning from here", task_id, len(actions))
                return actions + self.plan_from_here()
            actions.append(action)
            # through reset_to_prefix, so every state is kept as a snapshot and replaying the
            # solution (to build the episode) restores the final state instead of stepping again
            _, outcomes = self.reset_to_prefix(task_id, actions)
            if outcomes[-1].won:
                return actions
        raise RuntimeError(f"{path}: the expert did not solve the game in {4 * self.max_steps} actions")

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
        self._loaded.clear()
        self._snapshots.clear()
        self._current = None
        self._pending = None


def load_game_json(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)
