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
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from eval_agent.bounded_cache import BoundedCache, PrefixCache
from eval_agent.envs.alfworld_oracle import AlfredGoal, next_action
from eval_agent.envs import textworld_adapter as tw
from eval_agent.envs.textworld_adapter import EngineMemo, LoadedGame, Snapshot, keep_argv
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


class AlfWorldEnv(TaskEnv):
    """ALFWorld games of one split (``train``, ``dev`` = valid_seen, ``test`` = valid_unseen).

    ``reset`` accepts a task id of the split (``<task>/<trial>``) or any game file resolvable under
    the data root (the ``game_file`` of an SFT record, e.g. ``data/json_2.1.1/train/<task>/<trial>``).
    ``internals=False`` (or engine versions the tests do not cover, see
    :func:`~eval_agent.envs.textworld_adapter.internals_supported`) plays through TextWorld's public
    API only: every reset reloads the game and a prefix is replayed; the expert is the planner.
    """

    name = "alfworld"

    def __init__(self, data_dir: str | Path | None = None, split: str = "dev", max_steps: int = MAX_STEPS,
                 max_games: int = 128, max_snapshots: int = 4096, memoize: bool = True, internals: bool = True):
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
        self._loaded: BoundedCache[Path, LoadedGame] = BoundedCache(max_games, on_evict=self._forget_game)
        self._current: LoadedGame | None = None
        self._pending: tuple[LoadedGame, Snapshot] | None = None  # a restore not yet applied to the engine
        self._ops: tuple[tuple[int, int], ...] = ()
        self._history: list[str] = []
        self._expert_cache: dict[Path, list[str]] = {}
        self.fast = internals and tw.internals_supported()
        self._memo = EngineMemo() if memoize and self.fast else None
        self._public_state: Any = None  # the public path's last GameState
        # engine states reached by reset_to_prefix, keyed by (game, actions); LRU over all games
        self._snapshots: PrefixCache[Snapshot] = PrefixCache(max_snapshots)

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

    def _load(self, path: Path) -> LoadedGame:
        game = self._loaded.get(path)
        if game is not None:
            return game
        with keep_argv(), self._memoized():
            game = tw.load_game(self._engine(), path)
        game.first_observation = clean_observation(game.first_observation)
        self._loaded.put(path, game)
        return game

    def _forget_game(self, path: Path, _game: LoadedGame) -> None:
        """Drop the snapshots of a game pushed out of the loaded-games cache."""
        self._snapshots.drop_task(path)

    def _restore(self, game: LoadedGame, snap: Snapshot) -> None:
        """Make ``snap`` of ``game`` the current state. The engine itself is put there lazily, by
        :meth:`_engine_state`, when something reads or steps it: many states reached by
        :meth:`reset_to_prefix` (e.g. the N rollouts of a Monte Carlo state) are never stepped from."""
        self._current = game
        self._ops = snap.ops
        self._pending = (game, snap)

    def _engine_state(self) -> Any:
        """The unwrapped engine, in the current state (applies a pending restore first)."""
        if self._pending is not None:
            tw.restore_snapshot(self._env.unwrapped, *self._pending)
            self._pending = None
        return self._env.unwrapped

    def _memoized(self) -> Any:
        return self._memo.active() if self._memo is not None else nullcontext()

    # ------------------------------------------------------------------ TaskEnv API
    def reset(self, task_id: str) -> str:
        if not self.fast:
            return self._public_reset(self.game_path(task_id))
        game = self._load(self.game_path(task_id))
        self._restore(game, game.initial)
        self._history = []
        return game.first_observation

    def execute(self, action: str) -> StepOutcome:
        if not self.fast:
            if self._public_state is None:
                raise RuntimeError("execute() before reset()")
            self._public_state, _, _ = self._env.step(action)
            return self._outcome(action, self._public_state)
        if self._current is None:
            raise RuntimeError("execute() before reset()")
        u = self._engine_state()
        operators_before = tw.operators(u)  # replaced by the step's own bookkeeping
        with self._memoized():
            state, _, _ = self._env.step(action)
        op = tw.applied_operator(u, operators_before)
        if op is not None:
            self._ops = self._ops + (op,)
        return self._outcome(action, state)

    def _outcome(self, action: str, state: Any) -> StepOutcome:
        self._history.append(action)
        return StepOutcome(observation=clean_observation(state.feedback), won=bool(state["won"]),
                           valid=state.feedback.strip() != NOTHING_HAPPENS)

    def reset_to_prefix(self, task_id: str, actions: Sequence[str]) -> tuple[str, list[StepOutcome]]:
        if not self.fast:
            return super().reset_to_prefix(task_id, actions)
        path = self.game_path(task_id)
        game = self._load(path)
        key = tuple(actions)
        k, snap = self._snapshots.longest(path, key)
        snap = snap or game.initial
        self._restore(game, snap)
        self._history = list(key[:k])
        outcomes = list(snap.outcomes)
        for i in range(k, len(key)):
            outcomes.append(self.execute(key[i]))
            self._snapshots.put(path, key[: i + 1], tw.take_snapshot(self._env.unwrapped, self._ops, tuple(outcomes)))
        return game.first_observation, outcomes

    def _public_reset(self, path: Path, policy_commands: bool = False) -> str:
        """The public path: a fresh load and reset of the game (``policy_commands``: with the planner's plan)."""
        if self._env is None or policy_commands:
            if self._env is not None:
                self._env.close()
            self._env = new_textworld(policy_commands)
        with keep_argv():
            self._env.load(str(path))
            self._public_state = self._env.reset()
        self._history = []
        return clean_observation(self._public_state.feedback)

    def admissible_commands(self) -> list[str]:
        """The engine's admissible commands in the current state."""
        if not self.fast:
            return list(self._public_state["admissible_commands"])
        return list(self._engine_state().state["admissible_commands"])

    def plan_from_here(self) -> list[str]:
        """A plan from fast-downward's planner (the engine's ``policy_commands``) for the current state."""
        return tw.plan_from_state(self._engine_state(), self._memo)

    def expert_actions(self, task_id: str) -> list[str]:
        """A winning action list for ``task_id`` (leaves the env reset to the task's initial state).

        The oracle expert of :mod:`eval_agent.envs.alfworld_oracle` acts on the true state; where
        none of its rules applies, fast-downward's planner (the engine's ``policy_commands``)
        finishes from that state. Plans are cached per game.
        """
        path = self.game_path(task_id)
        if path not in self._expert_cache:
            self._expert_cache[path] = self._solve(task_id, path) if self.fast else self._public_plan(path)
        self.reset(task_id)
        return list(self._expert_cache[path])

    def _solve(self, task_id: str, path: Path) -> list[str]:
        goal = AlfredGoal.from_traj_data(path)
        self.reset(task_id)
        actions: list[str] = []
        for _ in range(4 * self.max_steps):
            u = self._engine_state()
            admissible = list(u.state["admissible_commands"])
            action = next_action(*tw.oracle_view(u), goal, admissible)
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

    def _public_plan(self, path: Path) -> list[str]:
        """The public path's expert: the planner's ``policy_commands`` from the initial state."""
        self._public_reset(path, policy_commands=True)
        plan = list(self._public_state["policy_commands"])
        self._env.close()
        self._env = None
        return plan

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
