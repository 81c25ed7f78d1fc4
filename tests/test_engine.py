"""The rollout engine on the real ALFWorld engine (TextWorld + fast-downward) and real policies.

Two real policies drive it: the tiny random-weights transformers model of ``engine_fixtures`` (it
almost never writes an ``Action:`` line, so it exercises invalid turns, max_steps and batching)
and :class:`ReplayPolicy`, which answers with the assistant turns of real expert trajectories
from the shared SFT sample (so episodes really move through the games and win). Both engines
(in-process and worker processes) must give the same results.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Sequence

import pytest

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.errors import FatalPolicyError
from eval_agent.engine import RolloutEngine, RolloutJob, run_evaluation
from eval_agent.storage import JsonlSink
from eval_agent.prompts import build_prompt, instruction_from_sft
from eval_agent.types import Message

from engine_fixtures import build_tiny_chat_model

WINNING = ["alfworld_0", "alfworld_11", "alfworld_1"]  # replay to won=True in the real engine


def _records(sft_file: Path, ids: Sequence[str]) -> list[dict]:
    by_id = {r["id"]: r for r in json.loads(Path(sft_file).read_text())}
    return [by_id[i] for i in ids]


def _assistant_turns(record: dict) -> list[str]:
    turns = [m["content"] for m in record["conversations"] if m["role"] == "assistant"]
    return turns[1:]  # drop the "OK" of the instruction turn


class ReplayPolicy(Policy):
    """Answers turn k of the episode whose first observation is X with the expert's turn k for X."""

    supports_row_params = True

    def __init__(self, records: Sequence[dict]):
        self.turns = {r["conversations"][2]["content"]: _assistant_turns(r) for r in records}
        self.calls: list[int] = []

    def generate(self, batch, params):
        self.calls.append(len(batch))
        out = []
        for conv in batch:
            first = next(m.content for m in conv if m.role == "user" and m.content in self.turns)
            k = sum(m.role == "assistant" for m in conv) - 1  # the prompt's "OK" is not a step
            out.append(self.turns[first][k])
        return out


def _kept_open_env(data_dir, split):
    """A real AlfWorldEnv that outlives the engines of this module (games load once per module)."""
    from eval_agent.envs.alfworld_env import AlfWorldEnv

    class KeptOpen(AlfWorldEnv):
        def close(self) -> None:  # the module fixture closes it
            pass

    return KeptOpen(str(data_dir), split)


@pytest.fixture(scope="module")
def train_env_factory(alfworld_data):
    env = _kept_open_env(alfworld_data, "train")
    yield lambda: env
    super(type(env), env).close()


@pytest.fixture(scope="module")
def dev_env(alfworld_data):
    env = _kept_open_env(alfworld_data, "dev")
    yield env
    super(type(env), env).close()


@pytest.fixture(scope="module")
def prompt(alfworld_sft_sample) -> list[Message]:
    return build_prompt(instruction_from_sft(alfworld_sft_sample))


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, alfworld_sft_sample):
    from eval_agent.agents.hf import HFPolicy

    path = build_tiny_chat_model(tmp_path_factory.getbasetemp() / "tiny_chat_model", alfworld_sft_sample)
    return HFPolicy(str(path), device="cpu")


def _summary(results):
    return sorted((r.job_id, r.rollout, r.episode.steps, r.episode.success, r.episode.terminate_reason,
                   tuple(m.content for m in r.episode.messages)) for r in results)


def test_replayed_experts_win_with_interleaved_episodes(train_env_factory, prompt, alfworld_sft_sample):
    records = _records(alfworld_sft_sample, WINNING)
    policy = ReplayPolicy(records)
    jobs = [RolloutJob(r["id"], r["game_file"], prompt, n=2) for r in records]
    with RolloutEngine(policy, train_env_factory, num_workers=0, max_active=6, show_progress=False) as engine:
        results = engine.run(jobs)
    assert len(results) == 6
    for r in results:
        rec = next(x for x in records if x["id"] == r.job_id)
        assert r.episode.success and r.episode.terminate_reason == "success"
        assert r.episode.steps == len(_assistant_turns(rec))
    # all six episodes were answered together, one call per turn, on one multiplexed environment
    assert policy.calls[0] == 6 and len(policy.calls) == max(len(_assistant_turns(r)) for r in records)
    assert engine.stats.env_steps == sum(r.episode.steps for r in results)
    # episodes leave the batch when they end: the shortest trajectory finishes first
    assert results[0].job_id == "alfworld_11"


def test_prefix_and_forced_turn_reach_the_state(train_env_factory, prompt, alfworld_sft_sample):
    rec = _records(alfworld_sft_sample, ["alfworld_0"])[0]
    turns = _assistant_turns(rec)
    policy = ReplayPolicy([rec])
    jobs = [
        RolloutJob("whole", rec["game_file"], prompt, prefix=turns),  # the prefix itself wins
        RolloutJob("mid", rec["game_file"], prompt, prefix=turns[:2], forced_output=turns[2], n=2),
    ]
    with RolloutEngine(policy, train_env_factory, show_progress=False) as engine:
        results = {(r.job_id, r.rollout): r.episode for r in engine.run(jobs)}
    whole = results[("whole", 0)]
    assert whole.success and whole.steps == len(turns) and whole.extra["n_prefix_turns"] == len(turns)
    # the observations of the replayed prefix come from the engine and equal the expert data's
    data_obs = [m["content"] for m in rec["conversations"][4::2]]
    env_obs = [m.content for m in whole.messages[len(prompt) + 2::2]]
    assert env_obs[:2] == data_obs[:2]
    for k in range(2):
        mid = results[("mid", k)]
        assert mid.success and mid.steps == len(turns) and mid.extra["forced"]
    assert policy.calls == [2] * (len(turns) - 3)


def test_tiny_model_plays_dev_games_same_in_process_and_in_workers(tiny_policy, dev_env, alfworld_data, prompt,
                                                                   tmp_path):
    from eval_agent.envs.alfworld_env import AlfWorldEnv

    task_ids = dev_env.task_ids()[:2]
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    jobs = [RolloutJob(t, t, prompt, params=params, n=2, max_steps=2, seed=11) for t in task_ids]
    jobs.append(RolloutJob("greedy", task_ids[0], prompt, params=SamplingParams(max_new_tokens=8), max_steps=2))
    jobs.append(RolloutJob("broken", "no/such/task", prompt, max_steps=2))
    out = tmp_path / "rollouts.jsonl"
    with RolloutEngine(tiny_policy, lambda: dev_env, num_workers=0, max_active=8, show_progress=False) as engine:
        with JsonlSink(out) as sink:
            local = engine.run(jobs, sink=sink)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(local) == 6
    assert {(x["meta"]["job_id"], x["meta"]["rollout"]) for x in lines} == {(r.job_id, r.rollout) for r in local}
    reasons = {r.job_id: r.episode.terminate_reason for r in local}
    assert reasons["broken"] == "env_error" and "no/such/task" in next(
        r for r in local if r.job_id == "broken").episode.extra["error"]
    assert all(r.episode.finished and r.episode.steps == 2 for r in local if r.job_id != "broken")
    sampled = [r for r in local if r.job_id == task_ids[0]]
    assert sampled[0].episode.messages != sampled[1].episode.messages  # rollouts differ
    # two worker processes (a picklable factory) and smaller batches give the very same episodes
    factory = functools.partial(AlfWorldEnv, str(alfworld_data), "dev")
    with RolloutEngine(tiny_policy, factory, num_workers=2, max_active=3, show_progress=False) as engine:
        remote = engine.run(jobs)
    assert _summary(remote) == _summary(local)


def test_generation_errors_end_only_their_episode(tiny_model_path_policy_factory, train_env_factory, prompt,
                                                  alfworld_sft_sample):
    rec = _records(alfworld_sft_sample, ["alfworld_0"])[0]
    policy = tiny_model_path_policy_factory(max_model_len=1200)
    long_prefix = _assistant_turns(rec)[:4]
    jobs = [RolloutJob("short", rec["game_file"], prompt, max_steps=1, params=SamplingParams(max_new_tokens=4)),
            RolloutJob("long", rec["game_file"], prompt, prefix=long_prefix, params=SamplingParams(max_new_tokens=4))]
    with RolloutEngine(policy, train_env_factory, show_progress=False) as engine:
        results = {r.job_id: r.episode for r in engine.run(jobs)}
    assert results["long"].terminate_reason == "generation_error"
    assert "exceeds the model context" in results["long"].extra["error"]
    assert results["short"].terminate_reason == "max_steps"


def test_openai_backend_plays_dev_games_like_hf(tiny_policy, dev_env, prompt):
    """The same greedy episodes through a real OpenAI-compatible server on loopback as through hf."""
    from eval_agent.agents.openai_backend import OpenAIPolicy
    from eval_agent.agents.serve import make_server, serve_in_thread

    tasks = dev_env.task_ids()[:2]
    params = SamplingParams(max_new_tokens=8)
    jobs = [RolloutJob(t, t, prompt, params=params, max_steps=2) for t in tasks]
    server = make_server(tiny_policy, "tiny", port=0)
    serve_in_thread(server)
    client = OpenAIPolicy("tiny", base_url=server.base_url, max_concurrency=4)
    try:
        with RolloutEngine(client, lambda: dev_env, show_progress=False) as engine:
            served = engine.run(jobs)
    finally:
        client.close()
        server.close()
    with RolloutEngine(tiny_policy, lambda: dev_env, show_progress=False) as engine:
        local = engine.run(jobs)
    assert _summary(served) == _summary(local)
    assert all(r.episode.finished and r.episode.steps == 2 for r in served)


@pytest.fixture(scope="module")
def tiny_model_path_policy_factory(tmp_path_factory, alfworld_sft_sample):
    from eval_agent.agents.hf import HFPolicy

    path = build_tiny_chat_model(tmp_path_factory.getbasetemp() / "tiny_chat_model", alfworld_sft_sample)

    def make(**kw):
        return HFPolicy(str(path), device="cpu", **kw)

    make.model_dir = path  # type: ignore[attr-defined]
    return make


class _Unauthorised(Policy):
    def generate(self, batch, params):
        raise FatalPolicyError("bad credentials")


def test_fatal_policy_errors_stop_the_run(train_env_factory, prompt, alfworld_sft_sample):
    rec = _records(alfworld_sft_sample, ["alfworld_0"])[0]
    with RolloutEngine(_Unauthorised(), train_env_factory, show_progress=False) as engine:
        with pytest.raises(FatalPolicyError):
            engine.run([RolloutJob("a", rec["game_file"], prompt)])


# ------------------------------------------------------------------ resumable evaluation
class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


class CrashAfter(Policy):
    """Delegates to ``inner`` and dies on the ``n``-th call, like a process killed mid-run."""

    supports_row_params = True

    def __init__(self, inner: Policy, n: int):
        self.inner, self.n, self.calls = inner, n, 0

    def generate(self, batch, params):
        self.calls += 1
        if self.calls >= self.n:
            raise Crash()
        return self.inner.generate(batch, params)


def test_interrupted_evaluation_resumes_without_redoing_tasks(train_env_factory, alfworld_sft_sample, tmp_path):
    records = _records(alfworld_sft_sample, WINNING)
    tasks = [r["game_file"] for r in records]
    prompt = build_prompt(instruction_from_sft(alfworld_sft_sample))
    out = tmp_path / "eval"

    def path_for(task: str):
        return out / (task.replace("/", "__") + ".json")

    # the shortest trajectory (4 turns) ends before the crash on the 5th generation call
    with RolloutEngine(CrashAfter(ReplayPolicy(records), 5), train_env_factory, max_active=3,
                       show_progress=False) as engine:
        with pytest.raises(Crash):
            run_evaluation(engine, tasks, prompt, path_for)
    written = sorted(p.name for p in out.glob("*.json"))
    assert len(written) == 1 and not list(out.glob("*.tmp"))

    replay = ReplayPolicy(records)
    with RolloutEngine(replay, train_env_factory, max_active=3, show_progress=False) as engine:
        states = run_evaluation(engine, tasks, prompt, path_for)
    assert list(states) == tasks  # every task exactly once, in order
    assert all(s.success for s in states.values())
    assert max(replay.calls) == 2  # the finished task was not run again
    assert len(list(out.glob("*.json"))) == 3
    for task in tasks:
        saved = json.loads(path_for(task).read_text())
        assert saved["meta"]["success"] and saved["meta"]["id"] == task
    # rerun: nothing left to do
    again = ReplayPolicy(records)
    with RolloutEngine(again, train_env_factory, show_progress=False) as engine:
        assert len(run_evaluation(engine, tasks, prompt, path_for)) == 3
    assert again.calls == []
    # --override replays everything
    with RolloutEngine(again, train_env_factory, show_progress=False) as engine:
        run_evaluation(engine, tasks, prompt, path_for, override=True)
    assert again.calls[0] == 3


def test_cli_evaluation_killed_midway_resumes(tiny_model_path_policy_factory, alfworld_data, tmp_path):
    """``python -m eval_agent.main --agent_config hf``: killed right after the first task's file, rerun, all tasks once."""
    import os
    import signal
    import subprocess
    import sys

    from eval_agent.storage import KILL_AFTER_RECORDS_ENV

    model_dir = tiny_model_path_policy_factory.model_dir
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "eval_agent.main", "--exp_config", "alfworld", "--split", "dev",
           "--agent_config", "hf", "--model_name", str(model_dir), "--data_dir", str(alfworld_data),
           "--output_path", str(out), "--max_tasks", "2", "--max_steps", "2", "--max_new_tokens", "4",
           "--num_workers", "0", "--max_active", "1", "--device", "cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the run SIGKILLs itself right after its first task's file is written: a fixed crash point, not a race
    killed = subprocess.run(cmd, capture_output=True, text=True, env={**env, KILL_AFTER_RECORDS_ENV: "1"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert len(first) == 1 and "summary.json" not in first
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("Success rate: ")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tasks"] == 2 and sum(summary["terminate_reasons"].values()) == 2
    for name, mtime in first.items():  # finished tasks were not redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert len([p for p in out.glob("*.json") if p.name != "summary.json"]) == 2
