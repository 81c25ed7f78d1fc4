"""Stage 2 of STeCa: expert steps, explored steps (with exploration rollouts) and Monte Carlo step rewards.

Explorations and Monte Carlo rollouts run through :class:`eval_agent.engine.RolloutEngine`: every
rollout of a stage is in flight together (one ``generate`` call per turn), the N rollouts of one
state are one job (same prompt, so a prefix-caching server shares it), and the environment reaches
each state with ``reset_to_prefix`` (ALFWorld: cached snapshots, no replay from a fresh reset).
Seeds derive from the job id (``<id>:<iteration>``), so a resumed or differently sharded run draws
the same samples.

Every stage streams :class:`~steca.records.StepRecord` lines (STeCa's field names) to a JSONL file,
flushed per record, and on restart skips the ``(id, iteration)`` keys the file already holds, so a
killed run loses at most the states in flight and never duplicates a record. ``part_num`` /
``part_idx`` shard the work by task (task ``i`` of the input goes to part ``i % part_num``).
Records of states whose rollouts could not be generated go to ``<output>.problems.jsonl``
instead (a rerun retries them).

Step indices are 0-based: iteration ``t`` scores the action taken after the expert prefix
``a*_0 .. a*_{t-1}``.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from eval_agent.agents.policy import SamplingParams
from eval_agent.engine import RolloutEngine, RolloutJob
from eval_agent.envs.task_env import TaskEnv
from eval_agent.types import FAILED_RUN, EndReason, Message
from steca.method.rewards import step_reward
from steca.method.trajectories import prompt_length, split_expert
from eval_agent.storage import JsonlSink, finished_keys
from steca.records import SFTRecord, StepRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Part ``part_idx`` of ``part_num``: the items whose index ``i`` has ``i % part_num == part_idx``."""

    part_num: int = 1
    part_idx: int = 0

    def __post_init__(self) -> None:
        if self.part_num < 1 or not 0 <= self.part_idx < self.part_num:
            raise ValueError(f"bad shard: part_idx {self.part_idx} of part_num {self.part_num}")

    def take(self, index: int) -> bool:
        return index % self.part_num == self.part_idx


@dataclass
class StageReport:
    written: int = 0
    skipped_done: int = 0
    problems: int = 0
    counts: dict = field(default_factory=dict)


def done_keys(path: str | Path) -> set[tuple[str, int]]:
    """``(id, iteration)`` of the complete records already in a JSONL output (torn lines ignored)."""
    return finished_keys(path, lambda o: (str(o["id"]), o["iteration"])
                         if isinstance(o, dict) and "id" in o and isinstance(o.get("iteration"), int) else None)


def open_outputs(output: str | Path) -> tuple[JsonlSink, JsonlSink, set[tuple[str, int]]]:
    """The stage's output and problems sinks (locked, tails repaired) and the keys already finished."""
    sink = JsonlSink(output)
    try:
        problems = JsonlSink(problems_path(output))
    except BaseException:
        sink.close()
        raise
    return sink, problems, done_keys(output)


def problems_path(output: str | Path) -> Path:
    p = Path(output)
    return p.with_name(p.name + ".problems.jsonl")


def _task_order(ids: Iterable[str]) -> dict[str, int]:
    order: dict[str, int] = {}
    for i in ids:
        order.setdefault(i, len(order))
    return order


# ------------------------------------------------------------------ expert steps
def expert_steps(sft: Sequence[SFTRecord], env: TaskEnv, output: str | Path, shard: Shard = Shard()) -> StageReport:
    """One record per expert step ``t``: ``prefix(t) + [a*_t, o_t]`` (the SFT text).

    ``agent_final_reward`` is the expert trajectory's outcome when its actions are replayed in
    ``env`` (1 if won). ``extra.step_won`` says whether ``a*_t`` itself won the game.
    """
    report = StageReport()
    sink, problems, done = open_outputs(output)
    with sink, problems:
        for i, rec in enumerate(tqdm(sft, desc="expert steps", unit="traj")):
            if not shard.take(i):
                continue
            traj = split_expert(rec)
            todo = [t for t in range(len(traj.steps)) if (rec.id, t) not in done]
            report.skipped_done += len(traj.steps) - len(todo)
            if not todo:
                continue
            try:
                won_at = _expert_won_steps(env, rec.game_file, traj.actions())
            except Exception as e:  # noqa: BLE001 - one broken game must not stop the run
                logger.warning("%s (%s): replay failed: %s", rec.id, rec.game_file, e)
                problems.write({"id": rec.id, "game_file": rec.game_file, "error": f"{type(e).__name__}: {e}"})
                report.problems += 1
                continue
            final = 1.0 if any(won_at) else 0.0
            for t in todo:
                step = traj.steps[t]
                sink.write(StepRecord(rec.id, t, rec.game_file, step.action_turn.content,
                                      traj.prefix(t) + step.messages(), None, final, 1.0 if won_at[t] else 0.0,
                                      extra={"kind": "expert", "step_won": won_at[t]}))
                report.written += 1
    return report


def _expert_won_steps(env: TaskEnv, game: str, actions: Sequence[str | None]) -> list[bool]:
    """Per expert step: did the engine report ``won`` right after it?"""
    real = [a for a in actions if a is not None]
    _, outcomes = env.reset_to_prefix(game, real)
    it = iter(outcomes)
    return [bool(next(it).won) if a is not None else False for a in actions]


# ------------------------------------------------------------------ explored steps
def job_prompt(messages: Sequence[Message]) -> list[Message]:
    """A chat's own turns before the task's first observation (the engine asks the environment for that
    one). The sampling CLI does not use it: it passes the evaluation prompt (:func:`eval_agent.prompts.prompt_for`)."""
    n = prompt_length(messages)
    msgs = list(messages[:n])
    return msgs[:-1] if msgs and msgs[-1].role == "user" else msgs


def job_id(task_id: str, t: int) -> str:
    return f"{task_id}:{t}"


def explore_steps(sft: Sequence[SFTRecord], engine: RolloutEngine, output: str | Path,
                  params: SamplingParams = SamplingParams(temperature=0.0, max_new_tokens=512),
                  shard: Shard = Shard(), max_steps: int | None = None,
                  prompt: Sequence[Message] | None = None) -> StageReport:
    """For every expert prefix ``t``: the base agent's own action ``â_t`` and its exploration to the end.

    ``prompt``: the turns before the first observation, the evaluation prompt as the released code
    samples with (``None``: each SFT record's own, without an in-context example). Record: ``agent_step_output = â_t``, ``agent_step_conversations = prefix(t) + [â_t, o]``,
    ``agent_conversations`` = the whole exploration chat, ``agent_final_reward`` = its outcome
    (1 if won within ``max_steps``). The prefix's observations are the environment's.
    """
    report = StageReport()
    sink, problems, done = open_outputs(output)
    jobs: list[RolloutJob] = []
    game_of: dict[str, str] = {}
    for i, rec in enumerate(sft):
        if not shard.take(i):
            continue
        traj = split_expert(rec)
        game_of[rec.id] = rec.game_file
        job_turns = list(prompt) if prompt is not None else job_prompt(rec.conversations)
        turns = [s.action_turn.content for s in traj.steps]
        for t in range(len(traj.steps)):
            if (rec.id, t) in done:
                report.skipped_done += 1
                continue
            jobs.append(RolloutJob(job_id(rec.id, t), rec.game_file, job_turns, prefix=turns[:t], params=params,
                                   max_steps=max_steps, meta={"sid": rec.id, "t": t}))
    with sink, problems:
        for res in engine.run_iter(jobs):
            ep = res.episode
            rid, t = ep.extra["sid"], ep.extra["t"]
            n = ep.n_prompt_messages + 1 + 2 * t
            if len(ep.messages) <= n or ep.terminate_reason in FAILED_RUN:
                problems.write({"id": rid, "iteration": t, "stage": "explore",
                                "terminate_reason": ep.terminate_reason, "error": ep.extra.get("error")})
                report.problems += 1
                continue
            step_won = ep.success and ep.steps == t + 1  # the explored step itself ended the episode as a win
            sink.write(StepRecord(rid, t, game_of[rid], ep.messages[n].content, ep.messages[:n + 2], ep.messages,
                                  1.0 if ep.success else 0.0, 1.0 if step_won else 0.0,
                                  extra={"kind": "explore", "terminate_reason": ep.terminate_reason,
                                         "steps": ep.steps}))
            report.written += 1
    return report


# ------------------------------------------------------------------ Monte Carlo
def mc_job(record: StepRecord, n: int, params: SamplingParams, max_steps: int | None = None,
           prompt: Sequence[Message] | None = None) -> RolloutJob:
    """The job of a step record: replay its earlier turns, force its step turn, then ``n`` rollouts.

    The record's own steps start after its task's first observation (found from its structure by
    :func:`prompt_length`, so the released 12-turn prompt with its in-context example is skipped).
    ``prompt``: the turns the rollouts see before the first observation (the evaluation prompt, as
    released; ``None``: the record's own).
    """
    msgs = list(record.agent_step_conversations)
    k = prompt_length(msgs)
    turns = [m.content for m in msgs[k:] if m.role == "assistant"]
    if not turns:
        raise ValueError(f"record {record.id!r} iteration {record.iteration}: field 'agent_step_conversations' "
                         "has no assistant step")
    job_turns = list(prompt) if prompt is not None else job_prompt(msgs)
    return RolloutJob(job_id(record.id, record.iteration), record.game_file, job_turns, prefix=turns[:-1],
                      forced_output=turns[-1], params=params, n=n, max_steps=max_steps,
                      meta={"sid": record.id, "t": record.iteration})


def monte_carlo(records: Sequence[StepRecord], engine: RolloutEngine, output: str | Path, num_rollouts: int = 5,
                params: SamplingParams = SamplingParams(temperature=1.0, max_new_tokens=512),
                shard: Shard = Shard(), max_steps: int | None = None, save_rollouts: bool = False,
                prompt: Sequence[Message] | None = None, failed_generation: str = "failure") -> StageReport:
    """Score each step record: ``mc_step_reward = mean outcome of num_rollouts rollouts`` from its state
    (file field ``monte_carlo_step_reward``; ``agent_step_reward`` keeps the environment's step reward).

    The state is the record's chat replayed in the environment with its step turn forced; a state
    that already won ends every rollout at once (outcome 1). A rollout whose generation fails counts
    as a failed rollout, outcome 0, as in the released code (``failed_generation="exclude"``: left
    out of the mean instead); a rollout that hits an environment error is left out
    (``extra.mc_errors`` counts both kinds left out); a state with none left is reported in the
    problems file. A record is written once all its rollouts are in.
    ``save_rollouts`` keeps each rollout's generated turns in ``extra.mc_rollout_turns``.
    """
    if failed_generation not in ("failure", "exclude"):
        raise ValueError(f"failed_generation must be 'failure' or 'exclude', got {failed_generation!r}")
    report = StageReport()
    sink, problems, done = open_outputs(output)
    order = _task_order(r.id for r in records)
    todo: dict[str, StepRecord] = {}
    jobs: list[RolloutJob] = []
    bad: list[dict] = []
    for r in records:
        if not shard.take(order[r.id]):
            continue
        if r.key in done:
            report.skipped_done += 1
            continue
        jid = job_id(r.id, r.iteration)
        if jid in todo:
            logger.warning("duplicate input record %s; keeping the first", r.key)
            continue
        try:
            jobs.append(mc_job(r, num_rollouts, params, max_steps, prompt))
        except ValueError as e:
            logger.warning("%s", e)
            bad.append({"id": r.id, "iteration": r.iteration, "stage": "mc", "error": str(e)})
            continue
        todo[jid] = r
    results: dict[str, list] = defaultdict(list)
    with sink, problems:
        for b in bad:
            problems.write(b)
            report.problems += 1
        for res in engine.run_iter(jobs):
            results[res.job_id].append(res)
            if len(results[res.job_id]) < num_rollouts:
                continue
            rolls = sorted(results.pop(res.job_id), key=lambda x: x.rollout)
            r = todo[res.job_id]
            excluded = FAILED_RUN if failed_generation == "exclude" else (EndReason.ENV_ERROR,)
            ok = [x for x in rolls if x.episode.terminate_reason not in excluded]
            if not ok:
                problems.write({"id": r.id, "iteration": r.iteration, "stage": "mc",
                                "error": rolls[0].episode.extra.get("error", "every rollout failed")})
                report.problems += 1
                continue
            outcomes = [1.0 if x.episode.success else 0.0 for x in ok]
            out = StepRecord(r.id, r.iteration, r.game_file, r.agent_step_output, r.agent_step_conversations,
                             r.agent_conversations, r.agent_final_reward, r.agent_step_reward, outcomes,
                             dict(r.extra), step_reward(outcomes))
            out.extra.update(mc_num_rollouts=num_rollouts, mc_temperature=params.temperature,
                             mc_errors=len(rolls) - len(ok), mc_steps=[x.episode.steps for x in ok],
                             mc_generation_failures=sum(x.episode.terminate_reason == EndReason.GENERATION_ERROR for x in rolls))
            if save_rollouts:
                out.extra["mc_rollout_turns"] = [_generated_turns(x) for x in ok]
            sink.write(out)
            report.written += 1
    return report


def _generated_turns(res) -> list[str]:
    """The assistant turns a rollout generated (after the replayed prefix and the forced step)."""
    ep = res.episode
    start = ep.n_prompt_messages + 1 + 2 * (ep.extra.get("n_prefix_turns", 0) + 1)
    return [m.content for m in ep.messages[start:] if m.role == "assistant"]
