"""The STeCa data chain on real shared VirtualHome tasks, with a tiny random model built here.

Three short tasks of the shared ``vh_seen_test.jsonl`` (3133 open a window, 1639 sit on a chair,
218 switch on the television; 10 expert steps) play in the real ``evolving_graph`` simulator:
expert SFT trajectories from their ground-truth programs -> expert steps -> explored steps ->
Monte Carlo for both -> D_s, D_c, D_e -> merged training file. The model is a random nano Llama,
so its turns are noise: explorations fail and only states that are already won score 1. That
checks the plumbing and the record contract on VirtualHome; the selection logic itself is tested
on hand-built records in ``test_method_*.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from eval_agent.agents.policy import SamplingParams
from eval_agent.agents.hf import HFPolicy
from eval_agent.engine import RolloutEngine
from eval_agent.storage import KILL_AFTER_RECORDS_ENV
from eval_agent.envs.virtualhome import VirtualHomeEnv
from steca.generators.virtualhome_tasks import expert_sft_from_tasks
from steca.collection.collect_cli import main as collect_main
from steca.method.trajectories import prompt_length
from steca.records import load_pairs, load_sft, load_steps
from eval_agent.envs import make_env
from eval_agent.prompts import prompt_for
from steca.sampling.sampling_cli import evaluation_stop
from steca.sampling.sampling_cli import main as sampling_main
from steca.sampling.stages import explore_steps, monte_carlo

REPO = Path(__file__).resolve().parents[1]
TASKS = {"3133": 3, "1639": 3, "218": 4}  # task id -> expert steps
N_ROLLOUTS, MAX_STEPS, MAX_NEW = 2, 5, 8


@pytest.fixture(scope="module")
def chain(tmp_path_factory, virtualhome_data):
    from steca.training.bootstrap import bootstrap_model

    root = tmp_path_factory.mktemp("vh_chain")
    lines = (virtualhome_data / "vh_seen_test.jsonl").read_text().splitlines()
    picked = [ln for ln in lines if ln.strip() and str(json.loads(ln)["id"]) in TASKS]
    assert len(picked) == len(TASKS)
    tasks = root / "tasks.jsonl"
    tasks.write_text("\n".join(picked) + "\n")
    counts = expert_sft_from_tasks(tasks, virtualhome_data, root / "sft.json")
    assert counts == {"tasks": 3, "written": 3, "skipped": 0}
    sft = load_sft(root / "sft.json", strict=True).records
    model = bootstrap_model([m.content for r in sft for m in r.conversations], root / "model", size="nano")
    env = ["--env", "virtualhome", "--env_data", str(virtualhome_data), "--task_file", str(tasks)]
    sampling_main(["expert_steps", *env, "--sft", str(root / "sft.json"), "--output", str(root / "expert.jsonl"),
                   "--log_level", "WARNING"])
    factory = partial(make_env, "virtualhome", "train", str(virtualhome_data), task_file=str(tasks))
    policy = HFPolicy(str(model))
    engine = RolloutEngine(policy, factory, max_active=16, show_progress=False)
    # what the command line samples with: the evaluation prompt and the evaluation config's stop strings
    prompt = prompt_for("virtualhome", root / "sft.json", 1, virtualhome_data)
    stop = evaluation_stop("hf")
    try:
        explore_steps(sft, engine, root / "explore.jsonl", SamplingParams(0.0, max_new_tokens=MAX_NEW, stop=stop),
                      max_steps=MAX_STEPS, prompt=prompt)
        for kind in ("expert", "explore"):
            # expert_mc.jsonl is compared with the command line's (batch-invariant, the default); the explored
            # steps' rollouts are compared with nothing, so they are sampled in batches, which is faster
            policy.batch_invariant = kind == "expert"
            monte_carlo(load_steps(root / f"{kind}.jsonl", strict=True).records, engine, root / f"{kind}_mc.jsonl",
                        num_rollouts=N_ROLLOUTS, params=SamplingParams(1.0, max_new_tokens=MAX_NEW, stop=stop),
                        max_steps=MAX_STEPS, save_rollouts=True, prompt=prompt)
    finally:
        engine.close()
        policy.close()
    return {"root": root, "tasks": tasks, "env": env, "model": model, "sft": {r.id: r for r in sft},
            "data": virtualhome_data, "prompt": prompt}


def _records(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda d: (d["id"], d["iteration"]))


def test_expert_sft_from_shared_tasks(chain):
    for tid, n in TASKS.items():
        rec = chain["sft"][tid]
        assert rec.game_file.endswith(".txt") and "TrimmedTestScene" in rec.game_file
        assert len(rec.conversations) == 3 + 2 * n
        assert "Your task is to:" in rec.conversations[2].content


def test_expert_steps_records(chain):
    recs = load_steps(chain["root"] / "expert.jsonl", strict=True).records
    assert sorted((r.id, r.iteration) for r in recs) == sorted((t, i) for t, n in TASKS.items() for i in range(n))
    for r in recs:
        sft = chain["sft"][r.id]
        assert r.agent_final_reward == 1.0  # the ground-truth program wins in the simulator
        assert r.agent_step_conversations == sft.conversations[:3 + 2 * r.iteration + 2]
        assert r.agent_step_output == sft.conversations[3 + 2 * r.iteration].content
        assert r.extra["step_won"] == (r.iteration == TASKS[r.id] - 1)


def test_expert_step_prefixes_replay_in_the_simulator(chain):
    """Every expert step record, replayed action by action from a fresh reset (no snapshot cache), gives
    the record's observations, and wins exactly at the task's last step."""
    env = VirtualHomeEnv(chain["tasks"], chain["data"], prefix_cache_size=0)
    for r in load_steps(chain["root"] / "expert_mc.jsonl", strict=True).records:
        msgs = r.agent_step_conversations
        k = prompt_length(msgs)
        assert env.reset(r.game_file) == msgs[k - 1].content
        for turn, obs in zip(msgs[k::2], msgs[k + 1::2]):
            out = env.execute(turn.content.split("Action:")[-1].strip())
            assert out.valid and obs.content == f"Observation: {out.observation}"
        assert out.won == r.extra["step_won"]


def test_explored_steps_records(chain):
    recs = load_steps(chain["root"] / "explore.jsonl", strict=True).records
    assert len(recs) == sum(TASKS.values())
    k = len(chain["prompt"]) + 1  # the evaluation prompt (with its in-context example), then the first observation
    for r in recs:
        n = k + 2 * r.iteration
        assert r.agent_step_conversations[:k - 1] == chain["prompt"] and prompt_length(r.agent_step_conversations) == k
        assert r.agent_conversations[:n + 2] == r.agent_step_conversations
        assert r.agent_step_conversations[n].role == "assistant"
        assert r.agent_step_output == r.agent_step_conversations[n].content
        # the prefix is the expert's, its observations come from the simulator and equal the SFT file's
        assert r.agent_step_conversations[k - 1:n] == chain["sft"][r.id].conversations[2:3 + 2 * r.iteration]
        assert r.agent_final_reward == 0.0 and r.extra["steps"] <= MAX_STEPS


def test_mc_step_reward_is_mean_of_rollout_outcomes(chain):
    for kind in ("expert", "explore"):
        recs = load_steps(chain["root"] / f"{kind}_mc.jsonl", strict=True).records
        assert len(recs) == sum(TASKS.values())
        for r in recs:
            assert len(r.mc_outcomes) == N_ROLLOUTS and r.extra["mc_errors"] == 0
            assert set(r.mc_outcomes) == {r.mc_step_reward}  # all rollouts of a state end alike here
            assert all(s <= MAX_STEPS for s in r.extra["mc_steps"])
    for r in load_steps(chain["root"] / "expert_mc.jsonl").records:
        last = r.iteration == TASKS[r.id] - 1
        # a won state scores 1 without generating; the random model never finishes a task
        assert r.mc_step_reward == (1.0 if last else 0.0)
        assert (r.extra["mc_rollout_turns"] == [[], []]) == last


@pytest.mark.slow(seconds=90)  # with the module's chain fixture and two CLI runs
def test_sigkill_midway_then_resume_gives_the_same_records(chain, tmp_path):
    out = tmp_path / "mc.jsonl"
    cmd = [sys.executable, str(REPO / "sampling" / "run_sampling.py"), "mc", *chain["env"],
           "--model_path", str(chain["model"]), "--steps", str(chain["root"] / "expert.jsonl"), "--output", str(out),
           "--num_rollouts", str(N_ROLLOUTS), "--max_steps", str(MAX_STEPS), "--max_new_tokens", str(MAX_NEW),
           "--save_rollouts", "--seed", "0", "--log_level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the killed run keeps 2 rollouts in flight, the resumed one 16: per-row seeds make batching irrelevant.
    # The won last steps are written first (no generation); the run kills itself right after the first
    # generated record (a deterministic crash point, not a timed one).
    killed = subprocess.run(cmd + ["--max_active", "2"], cwd=REPO,
                            env={**env, KILL_AFTER_RECORDS_ENV: str(len(TASKS) + 1)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert out.read_text().count("\n") == len(TASKS) + 1
    with out.open("a") as f:
        f.write('{"id": "218", "iterat')  # a torn last line, as a kill during a write leaves it
    subprocess.run(cmd + ["--max_active", "16"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert _records(out) == _records(chain["root"] / "expert_mc.jsonl")


def test_three_sets_and_merged_file_load_strictly(chain):
    root, data = chain["root"], chain["data"]
    common = ["--sft", str(root / "sft.json"), "--explore_steps", str(root / "explore_mc.jsonl"), "--log_level", "WARNING",
              "--encoder", "hashing"]  # the same encoder whether or not MiniLM is installed
    expert = ["--expert_steps", str(root / "expert_mc.jsonl")]
    s_c = collect_main("calibrated", "virtualhome", common + expert + [
        "--output", str(root / "sets" / "cali.json"), "--reflector", "offline", "--replay_check", "true",
        "--env_data", str(data), "--env_task_file", str(chain["tasks"])])
    s_s = collect_main("expert", "virtualhome", common + expert + ["--output", str(root / "sets" / "expert.json")])
    s_e = collect_main("explored", "virtualhome", common + ["--output", str(root / "sets" / "explored.json")])
    assert s_c["settings"]["weights"] == "virtualhome" and s_c["settings"]["reflection_stand_in"]
    # released rule: t >= 2, r_explore(t) = 0 <= r_expert(t-1) = 0, exploration failed: t = 2 of every task, t = 3 of 218
    assert s_c["pairs"] == 4 and s_c["settings"]["replay"]["checked"] == 4
    # D_s: the 3 whole expert trajectories (explorations from t = 0 failed) + each last step (1.0 vs 0.0)
    assert s_s["pairs"] == 6
    assert s_e["pairs"] == 0  # the random model wins nothing
    sets = {n: load_pairs(root / "sets" / f"{n}.json", strict=True).records for n in ("cali", "expert", "explored")}
    for p in sets["cali"] + sets["expert"]:
        assert p.reward == pytest.approx(1.0 + p.extra["distance"])  # VirtualHome weights: 1 + d
    for p in sets["cali"]:
        assert p.extra["set"] == "calibrated" and isinstance(p.extra["replay_executable"], bool)
        if p.extra["deviated_action"] is None:  # an unparsable turn leaves the state as it was
            assert p.extra["replay_executable"] and p.extra["replay_success"]
        expert_action = chain["sft"][p.extra["source_id"]].conversations[3 + 2 * p.extra["iteration"]].content
        assert p.chosen[0].content.endswith(expert_action.split("\n")[-1])
    merged = collect_main("merge", "virtualhome", [str(root / "sets" / f"{n}.json") for n in ("cali", "expert", "explored")]
                          + ["--output", str(root / "train.json"), "--log_level", "WARNING"])
    assert merged["pairs"] == 10 and merged["invalid_records"] == []
    pairs = load_pairs(root / "train.json", strict=True).records
    assert sorted(p.id for p in pairs) == sorted(p.id for s in sets.values() for p in s)
