"""The batched rollout engine: many episodes in flight, one generation call per turn.

Every later stage is "run a policy in many environments at once": evaluation (one greedy episode
per task), exploration (one episode from an expert prefix) and Monte Carlo step rewards (N sampled
rollouts from the state after an expert prefix plus one action). The engine runs them all:

* a :class:`RolloutJob` names a task, the prompt turns, an optional prefix of assistant turns to
  replay first (their actions reach the state through ``env.reset_to_prefix``), an optional forced
  first assistant turn, sampling parameters, a seed and ``n`` rollouts;
* each turn, the unfinished episodes send their chats to the policy in **one** ``generate`` call;
* environments live in ``num_workers`` worker processes (0: in this process). Each worker builds
  its own environment from a picklable factory (e.g. ``functools.partial(make_env, "alfworld",
  "dev", data_dir=...)``); the actions of one turn are dispatched to all workers before any answer
  is awaited, so workers step in parallel. Episodes of the same task always go to the same worker
  (its environment caches the game and its prefix states). Episodes admitted to the batch (as
  others finish) are sent to their workers before the turn's ``generate`` call and collected after
  it, so workers load games and reach prefix states while the model generates; they join the
  batch from the next turn;
* an episode leaves the batch the moment it ends (success, ``max_steps``, environment done, an
  environment error or a generation error) and is handed to the caller at once
  (:meth:`RolloutEngine.run_iter` yields it; :meth:`RolloutEngine.run` also calls a sink, e.g.
  :class:`eval_agent.storage.JsonlSink`, which flushes each record), so a crash loses only episodes in flight;
* determinism: rollout ``k`` of a job has the seed ``mix(job seed, k)`` and its turn ``t`` samples
  with ``mix(rollout seed, t)``. Backends that take per-row parameters (all of ours) sample each row
  with its own seed, so an episode's trajectory does not depend on which episodes share its batch,
  on the number of workers or on the batch size.

Worker environments. A worker holds ONE environment and multiplexes its episodes over it when the
environment overrides ``reset_to_prefix`` (``env_mode="multiplex"``): a step of episode ``e``
calls ``reset_to_prefix(task, actions_of_e + [action])``; ALFWorld restores a cached snapshot of
``actions_of_e`` and executes one action. Environments without a fast ``reset_to_prefix`` get one
instance per in-flight episode (``env_mode="pool"``, instances are reused).
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.errors import FatalPolicyError, RowErrors
from eval_agent.envs.task_env import TaskEnv
from eval_agent.episode import expert_turn, new_episode, record_step
from eval_agent.storage import kill_point, load_finished_json, write_json_atomic
from eval_agent.types import MAX_STEPS, EndReason, EpisodeState, Message, parse_action_as

logger = logging.getLogger(__name__)

EnvFactory = Callable[[], TaskEnv]


def mix_seed(*parts: Any) -> int:
    """A stable 63-bit seed from ``parts`` (blake2b of their repr; independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class RolloutJob:
    """Roll out ``n`` episodes of ``task_id``.

    ``prompt``: the turns before the first observation (instruction, in-context example, "OK").
    ``prefix``: assistant turns (``Thought: ...\\nAction: ...``) replayed before generation starts;
    their observations come from the environment. ``forced_output``: the first turn of the rollout
    itself, executed without asking the policy (the expert action ``a*_t`` or an explored action
    ``â_t`` of Monte Carlo sampling). Prefix and forced turns count towards ``max_steps``.
    ``params``: sampling (None: the engine's default). ``seed``: None derives one from the engine
    seed and ``job_id``. ``meta``: copied into every result's ``meta``. ``expert``: the scripted
    expert plays the episode (:class:`ExpertPolicy`): its plan, ``TaskEnv.expert_actions``, is
    computed by the environment worker and replayed as the episode's turns; an episode the plan
    leaves unfinished ends as ``expert_exhausted``.
    """

    job_id: str
    task_id: str
    prompt: Sequence[Message]
    prefix: Sequence[str] = ()
    forced_output: str | None = None
    params: SamplingParams | None = None
    seed: int | None = None
    n: int = 1
    max_steps: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    expert: bool = False


@dataclass
class RolloutResult:
    """One finished rollout. ``episode.extra`` holds job_id, rollout, seed, n_prefix_turns, error."""

    job_id: str
    rollout: int
    episode: EpisodeState

    def to_output(self) -> dict[str, Any]:
        return self.episode.to_output()


# Same shape as steca.sampling.replay.ReplaySummary (a dataclass of counters), on purpose: the two count
# different things in packages that do not import each other, and a shared base would only share "= 0".
@dataclass
class EngineStats:
    generate_calls: int = 0
    generations: int = 0
    env_steps: int = 0
    episodes: int = 0
    generate_s: float = 0.0
    env_s: float = 0.0


# ---------------------------------------------------------------------------------------- workers
class StartEpisode(NamedTuple):
    """Open episode ``ep`` at the state after ``actions`` of ``task_id`` (``expert``: after the
    environment's expert plan instead). Answer: ``(first_observation, outcomes, game_file,
    max_steps, actions)``."""

    ep: int
    task_id: str
    actions: tuple[str, ...]
    expert: bool = False


class StepEpisode(NamedTuple):
    """Execute ``action`` in episode ``ep``. Answer: the :class:`StepOutcome`."""

    ep: int
    action: str


class DropEpisode(NamedTuple):
    """Forget episode ``ep`` (it ended). Answer: None."""

    ep: int


EnvCommand = StartEpisode | StepEpisode | DropEpisode
EnvAnswer = tuple[bool, Any]
"""``(True, value)`` or ``(False, error message)``: one failing episode never stops the others."""


class EnvHost:
    """Runs :data:`EnvCommand` s for many episodes (inside a worker process or in-process)."""

    def __init__(self, factory: EnvFactory, env_mode: str = "auto"):
        self.factory = factory
        self.env_mode = env_mode
        self._env: TaskEnv | None = None
        self._episodes: dict[int, tuple[str, list[str]]] = {}
        self._own: dict[int, TaskEnv] = {}
        self._free: list[TaskEnv] = []
        self._current: int | None = None

    def _main_env(self) -> TaskEnv:
        if self._env is None:
            self._env = self.factory()
            if self.env_mode == "auto":
                fast = type(self._env).reset_to_prefix is not TaskEnv.reset_to_prefix
                self.env_mode = "multiplex" if fast else "pool"
        return self._env

    def _env_for(self, ep: int) -> TaskEnv:
        env = self._main_env()
        if self.env_mode == "multiplex":
            return env
        if ep not in self._own:
            in_use = {id(x) for x in self._own.values()}
            if self._free:
                self._own[ep] = self._free.pop()
            elif id(env) not in in_use:
                self._own[ep] = env
            else:
                self._own[ep] = self.factory()
        return self._own[ep]

    def handle(self, commands: Sequence[EnvCommand]) -> list[EnvAnswer]:
        out: list[EnvAnswer] = []
        for cmd in commands:
            try:
                out.append((True, self._run(cmd)))
            except Exception as e:  # reported to the engine as this episode's env_error
                logger.debug("env command %s failed", cmd, exc_info=True)
                out.append((False, f"{type(e).__name__}: {e}"))
        return out

    def _run(self, cmd: EnvCommand) -> Any:
        ep = cmd.ep
        if not isinstance(cmd, DropEpisode):
            current, self._current = self._current, None  # unknown state if the command fails midway
        if isinstance(cmd, StartEpisode):
            env = self._env_for(ep)
            task_id, actions = cmd.task_id, env.expert_actions(cmd.task_id) if cmd.expert else list(cmd.actions)
            first, outcomes = env.reset_to_prefix(task_id, actions)
            self._episodes[ep] = (task_id, actions)
            self._current = ep
            return first, list(outcomes), env.game_file(task_id), env.max_steps, list(actions)
        if isinstance(cmd, StepEpisode):
            action = cmd.action
            task_id, actions = self._episodes[ep]
            env = self._env_for(ep)
            if self.env_mode == "multiplex" and current != ep:
                _, outcomes = env.reset_to_prefix(task_id, actions + [action])
                outcome = outcomes[-1]
            else:
                outcome = env.execute(action)
            actions.append(action)
            self._current = ep
            return outcome
        if isinstance(cmd, DropEpisode):
            self._episodes.pop(ep, None)
            if self._current == ep:
                self._current = None
            env = self._own.pop(ep, None)
            if env is not None:
                self._free.append(env)
            return None
        raise TypeError(f"unknown env command {cmd!r}")

    def close(self) -> None:
        seen: set[int] = set()
        for env in [self._env, *self._own.values(), *self._free]:
            if env is not None and id(env) not in seen:
                seen.add(id(env))
                env.close()


def _worker_main(conn: Any, factory: EnvFactory, env_mode: str) -> None:
    logging.basicConfig(level=os.environ.get("STECA_WORKER_LOGLEVEL", "WARNING"))
    host = EnvHost(factory, env_mode)
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg is None:
                break
            conn.send(host.handle(msg))
    finally:
        host.close()
        conn.close()


class _LocalWorker:
    def __init__(self, factory: EnvFactory, env_mode: str):
        self.host = EnvHost(factory, env_mode)
        self._pending: deque[list[EnvCommand]] = deque()

    def submit(self, commands: list[EnvCommand]) -> None:
        self._pending.append(commands)

    def collect(self, timeout: float | None = None) -> list[EnvAnswer]:
        return self.host.handle(self._pending.popleft() if self._pending else [])

    def close(self) -> None:
        self.host.close()


class _ProcessWorker:
    def __init__(self, factory: EnvFactory, env_mode: str, ctx: Any):
        self.factory, self.env_mode, self.ctx = factory, env_mode, ctx
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, self.factory, self.env_mode), daemon=True)
        self.proc.start()
        child.close()

    def submit(self, commands: list[EnvCommand]) -> None:
        self.conn.send(commands)

    def collect(self, timeout: float | None = None) -> list[EnvAnswer]:
        if timeout is not None and not self.conn.poll(timeout):
            raise TimeoutError(f"no answer from the environment worker within {timeout:.0f} s")
        return self.conn.recv()

    def restart(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(5)
        except Exception:
            pass
        self._start()

    def close(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(10)
        except (BrokenPipeError, OSError):
            pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# ---------------------------------------------------------------------------------------- engine
@dataclass
class _Episode:
    uid: int
    job: RolloutJob
    rollout: int
    seed: int
    worker: int
    state: EpisodeState | None = None
    params: SamplingParams | None = None


class RolloutEngine:
    """Runs :class:`RolloutJob` s with one policy over environments built by ``env_factory``.

    ``num_workers``: environment processes (0: environments run in this process).
    ``max_active``: episodes in flight at once (the generation batch). ``default_params``: sampling
    of jobs without their own. ``start_method``: multiprocessing start method (``spawn`` is safe
    with a model loaded in this process). ``show_progress``: a tqdm bar over episodes.
    ``worker_timeout_s``: a worker that does not answer a turn's commands in this time is killed and
    restarted; its episodes end with ``env_error``.
    """

    def __init__(self, policy: Policy, env_factory: EnvFactory, num_workers: int = 0, max_active: int = 64,
                 default_params: SamplingParams | None = None, seed: int = 0, env_mode: str = "auto",
                 start_method: str = "spawn", show_progress: bool = True, progress_desc: str = "episodes",
                 worker_timeout_s: float | None = 600.0, action_parser: str = "released"):
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        parse_action_as("", action_parser)  # rejects an unknown parser name now
        self.action_parser = action_parser
        self.policy = policy
        self.env_factory = env_factory
        self.num_workers = num_workers
        self.max_active = max_active
        self.default_params = default_params or SamplingParams()
        self.seed = seed
        self.show_progress = show_progress
        self.worker_timeout_s = worker_timeout_s
        self.progress_desc = progress_desc
        self.stats = EngineStats()
        if num_workers <= 0:
            self._workers: list[Any] = [_LocalWorker(env_factory, env_mode)]
        else:
            ctx = mp.get_context(start_method)
            self._workers = [_ProcessWorker(env_factory, env_mode, ctx) for _ in range(num_workers)]
        self._task_worker: dict[str, int] = {}
        self._load = [0] * len(self._workers)
        self._uid = 0

    # ---------------------------------------------------------------- public API
    def run(self, jobs: Iterable[RolloutJob], sink: Callable[[RolloutResult], None] | None = None) -> list[RolloutResult]:
        """Run every job; call ``sink`` on each result as it finishes; return all results."""
        results = []
        for r in self.run_iter(jobs):
            if sink is not None:
                sink(r)
            results.append(r)
        return results

    def run_iter(self, jobs: Iterable[RolloutJob]) -> Iterator[RolloutResult]:
        """Yield each rollout the moment it finishes (completion order, deterministic for a seed)."""
        from tqdm.auto import tqdm

        jobs = list(jobs)
        queue: deque[_Episode] = deque()
        for job in jobs:
            if job.n < 1:
                raise ValueError(f"job {job.job_id!r}: n must be at least 1, got {job.n}")
            job_seed = job.seed if job.seed is not None else mix_seed(self.seed, job.job_id)
            for k in range(job.n):
                self._uid += 1
                queue.append(_Episode(self._uid, job, k, mix_seed(job_seed, k), -1,
                                      params=job.params or self.default_params))
        bar = tqdm(total=len(queue), desc=self.progress_desc, disable=not self.show_progress, dynamic_ncols=True)
        active: list[_Episode] = []
        n_success = 0
        drops: list[list[EnvCommand]] = [[] for _ in self._workers]
        try:
            while queue or active:
                admitted = []
                while queue and len(active) + len(admitted) < self.max_active:
                    admitted.append(queue.popleft())
                # the workers reach the admitted episodes' states (loading games) while the model
                # generates the active episodes' turn; the new episodes join from the next turn
                pending = self._submit_starts(admitted, drops)
                outputs, errors = self._generate(active) if active else ([], {})
                started = self._collect_starts(pending)
                finished = [e for e in started if e.state.finished]  # type: ignore[union-attr]
                finished += self._step(active, outputs, errors, drops)
                active = [e for e in active + started if not e.state.finished]  # type: ignore[union-attr]
                for e in finished:
                    self._release(e, drops)
                    self.stats.episodes += 1
                    n_success += bool(e.state.success)  # type: ignore[union-attr]
                    bar.update(1)
                    bar.set_postfix(success=n_success, refresh=False)
                    yield RolloutResult(e.job.job_id, e.rollout, e.state)  # type: ignore[arg-type]
        finally:
            bar.close()

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers = []

    def __enter__(self) -> "RolloutEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _route(self, task_id: str) -> int:
        w = self._task_worker.get(task_id)
        if w is None:
            w = min(range(len(self._workers)), key=lambda i: (self._load[i], i))
            self._task_worker[task_id] = w
        return w

    def _release(self, e: _Episode, drops: list[list[EnvCommand]]) -> None:
        if e.worker >= 0:
            drops[e.worker].append(DropEpisode(e.uid))
            self._load[e.worker] -= 1

    def _submit(self, per_worker: list[list[EnvCommand]], drops: list[list[EnvCommand]]) -> list[tuple[list[EnvCommand], int]]:
        """Send each worker its commands (pending drops first) without waiting for the answers."""
        t0 = time.perf_counter()
        sent = []
        for i, w in enumerate(self._workers):
            cmds = drops[i] + per_worker[i]
            n_drop = len(drops[i])
            drops[i] = []
            if cmds:
                w.submit(cmds)
            sent.append((cmds, n_drop))
        self.stats.env_s += time.perf_counter() - t0
        return sent

    def _collect(self, sent: list[tuple[list[EnvCommand], int]]) -> list[list[EnvAnswer]]:
        """The answers to :meth:`_submit`'s commands, per worker (drops left out)."""
        t0 = time.perf_counter()
        answers: list[list[EnvAnswer]] = []
        for i, w in enumerate(self._workers):
            cmds, n_drop = sent[i]
            if not cmds:
                answers.append([])
                continue
            try:
                res = w.collect(self.worker_timeout_s)
            except (EOFError, ConnectionError, OSError, TimeoutError) as err:
                logger.error("environment worker %d died (%s); restarting it", i, err)
                w.restart()
                res = [(False, f"environment worker died: {err}")] * len(cmds)
            answers.append(res[n_drop:])
        self.stats.env_s += time.perf_counter() - t0
        return answers

    def _dispatch(self, per_worker: list[list[EnvCommand]], drops: list[list[EnvCommand]]) -> list[list[EnvAnswer]]:
        """Send each worker its commands, then collect: the workers run in parallel."""
        return self._collect(self._submit(per_worker, drops))

    def _submit_starts(self, eps: list[_Episode], drops: list[list[EnvCommand]]) -> Any:
        """Send the commands that reset admitted episodes to their prefix (+ forced turn); None if none."""
        if not eps:
            return None
        per_worker: list[list[EnvCommand]] = [[] for _ in self._workers]
        index: list[list[_Episode]] = [[] for _ in self._workers]
        for e in eps:
            e.worker = self._route(e.job.task_id)
            self._load[e.worker] += 1
            turns = list(e.job.prefix) + ([e.job.forced_output] if e.job.forced_output is not None else [])
            actions = [a for a in (parse_action_as(t, self.action_parser) for t in turns) if a is not None]
            per_worker[e.worker].append(StartEpisode(e.uid, e.job.task_id, tuple(actions), e.job.expert))
            index[e.worker].append(e)
        return self._submit(per_worker, drops), index

    def _collect_starts(self, pending: Any) -> list[_Episode]:
        """Open the episodes of :meth:`_submit_starts` with their answers; return them (some may be finished)."""
        if pending is None:
            return []
        sent, index = pending
        answers = self._collect(sent)
        out = []
        for w, eps_w in enumerate(index):
            for e, (ok, value) in zip(eps_w, answers[w]):
                self._open(e, ok, value)
                out.append(e)
        return out

    def _open(self, e: _Episode, ok: bool, value: Any) -> None:
        job = e.job
        extra = {"job_id": job.job_id, "rollout": e.rollout, "seed": e.seed, "n_prefix_turns": len(job.prefix),
                 "forced": job.forced_output is not None, **job.meta}
        if not ok:
            e.state = EpisodeState(task_id=job.task_id, game_file="", messages=list(job.prompt),
                                   n_prompt_messages=len(job.prompt), finished=True, terminate_reason=EndReason.ENV_ERROR,
                                   extra={**extra, "error": value})
            return
        first, outcomes, game_file, env_max, actions = value
        max_steps = job.max_steps or env_max
        state = new_episode(job.task_id, game_file, job.prompt, first)
        state.extra.update(extra)
        if job.expert:
            turns = [expert_turn(a) for a in actions]
        else:
            turns = list(job.prefix) + ([job.forced_output] if job.forced_output is not None else [])
        it = iter(outcomes)
        for text in turns:
            outcome = next(it) if parse_action_as(text, self.action_parser) is not None else None
            record_step(state, text, outcome, max_steps)
            if state.finished:
                break
        if job.expert and not state.finished:
            state.finished, state.terminate_reason = True, EndReason.EXPERT_EXHAUSTED
        e.state = state
        e.job = replace(job, max_steps=max_steps) if job.max_steps != max_steps else job

    def _step(self, active: list[_Episode], outputs: list[str | None], errors: dict[int, str],
              drops: list[list[EnvCommand]]) -> list[_Episode]:
        """Record the generated turn of every active episode and step their environments in parallel."""
        if not active:
            return []
        finished: list[_Episode] = []
        per_worker: list[list[EnvCommand]] = [[] for _ in self._workers]
        index: list[list[tuple[_Episode, str]]] = [[] for _ in self._workers]
        for e, out in zip(active, outputs):
            st = e.state
            assert st is not None
            if out is None:
                st.finished, st.terminate_reason = True, EndReason.GENERATION_ERROR
                st.extra["error"] = errors.get(e.uid, "generation failed")
                finished.append(e)
                continue
            action = parse_action_as(out, self.action_parser)
            if action is None:
                record_step(st, out, None, e.job.max_steps or MAX_STEPS)
                if st.finished:
                    finished.append(e)
                continue
            per_worker[e.worker].append(StepEpisode(e.uid, action))
            index[e.worker].append((e, out))
        answers = self._dispatch(per_worker, drops)
        for w, items in enumerate(index):
            for (e, out), (ok, value) in zip(items, answers[w]):
                st = e.state
                assert st is not None
                if ok:
                    self.stats.env_steps += 1
                    record_step(st, out, value, e.job.max_steps or MAX_STEPS)
                else:
                    st.messages.append(Message("assistant", out))
                    st.steps += 1
                    st.finished, st.terminate_reason = True, EndReason.ENV_ERROR
                    st.extra["error"] = value
                if st.finished:
                    finished.append(e)
        return finished

    def _generate(self, active: list[_Episode]) -> tuple[list[str | None], dict[int, str]]:
        """Outputs per active episode (None where generation failed) and the failures' messages."""
        batch = [e.state.messages for e in active]  # type: ignore[union-attr]
        rows = [replace(e.params, seed=mix_seed(e.seed, e.state.steps)) for e in active]  # type: ignore[union-attr]
        t0 = time.perf_counter()
        try:
            outputs, errs = self._call(batch, rows)
        except FatalPolicyError:
            raise
        except Exception as err:
            logger.warning("batched generation failed (%s: %s); retrying one conversation at a time",
                           type(err).__name__, err)
            outputs, errs = [], {}
            for i in range(len(batch)):
                try:
                    o, e = self._call([batch[i]], [rows[i]])
                    outputs.append(o[0])
                    if 0 in e:
                        errs[i] = e[0]
                except FatalPolicyError:
                    raise
                except Exception as one:
                    outputs.append(None)
                    errs[i] = f"{type(one).__name__}: {one}"
        self.stats.generate_s += time.perf_counter() - t0
        return outputs, {active[i].uid: msg for i, msg in errs.items()}

    def _call(self, batch: list[list[Message]], rows: list[SamplingParams]) -> tuple[list[str | None], dict[int, str]]:
        """``policy.generate`` with per-row params (or one call per distinct params)."""
        if self.policy.supports_row_params:
            calls: list[tuple[list[int], Any]] = [(list(range(len(batch))), rows)]
        else:
            groups: dict[SamplingParams, list[int]] = {}
            for i, p in enumerate(rows):
                groups.setdefault(replace(p, seed=None), []).append(i)
            calls = [(idx, rows[idx[0]]) for idx in groups.values()]
        outputs: list[str | None] = [None] * len(batch)
        errors: dict[int, str] = {}
        for idx, params in calls:
            sub = [batch[i] for i in idx]
            self.stats.generate_calls += 1
            try:
                texts: list[str | None] = list(self.policy.generate(sub, params))
            except RowErrors as err:
                texts = list(err.outputs)
                for j, msg in err.errors.items():
                    errors[idx[j]] = msg
            for j, t in zip(idx, texts):
                outputs[j] = t
            self.stats.generations += sum(t is not None for t in texts)
        return outputs, errors


# ---------------------------------------------------------------------------------------- evaluation
def load_finished(path: Path) -> EpisodeState | None:
    """The finished episode stored at ``path`` (STeCa's per-task output), or None: the task runs again."""
    return load_finished_json(path, EpisodeState.from_output, lambda state: state.finished)


def run_evaluation(engine: RolloutEngine, task_ids: Sequence[str], prompt: Sequence[Message],
                   output_path_for: Callable[[str], Path], params: SamplingParams | None = None,
                   override: bool = False, max_steps: int | None = None, expert: bool = False) -> dict[str, EpisodeState]:
    """Evaluate one episode per task; each finished episode is written to ``output_path_for(task)`` at once.

    Tasks whose output file already holds a finished episode are not run again unless
    ``override``; their episode is read back, so the returned mapping (and a summary built from
    it) covers every task of ``task_ids`` exactly once, however often the run was interrupted.
    A task whose episode failed (environment or generation error) is recorded as a failure.
    """
    done: dict[str, EpisodeState] = {}
    todo: list[str] = []
    for task in dict.fromkeys(task_ids):  # unique, order kept
        state = None if override else load_finished(output_path_for(task))
        if state is not None:
            done[task] = state
        else:
            todo.append(task)
    if done:
        logger.info("%d of %d tasks already evaluated; running %d", len(done), len(done) + len(todo), len(todo))
    jobs = [RolloutJob(job_id=t, task_id=t, prompt=prompt, params=params, max_steps=max_steps, expert=expert)
            for t in todo]
    for n, result in enumerate(engine.run_iter(jobs), 1):
        write_json_atomic(output_path_for(result.job_id), result.to_output())
        done[result.job_id] = result.episode
        kill_point(n)
    return {t: done[t] for t in dict.fromkeys(task_ids)}
