"""Sampling stages on the real ALFWorld engine with a tiny random model, and the whole data chain.

One module-scoped run plays the chain on the first shared trajectory (alfworld_0, 5 expert steps):
expert steps -> explored steps -> Monte Carlo for both -> D_s, D_c, D_e -> merged training file.
The model is a real (random, nano) Llama, so its turns are noise: explorations fail, and only
states that are already won score 1. That is enough to check the plumbing, the record contract,
resuming, sharding and SIGKILL recovery; the method's selection logic is tested on hand-built
records in ``test_method_*.py``.
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

from steca.collection.collect_cli import main as collect_main
from steca.records import load_pairs, load_sft, load_steps, write_records
from eval_agent.envs import make_env
from eval_agent.prompts import prompt_for
from steca.method.trajectories import prompt_length
from steca.sampling.sampling_cli import evaluation_stop
from steca.sampling.sampling_cli import main as sampling_main
from steca.sampling.stages import Shard, expert_steps, explore_steps, mc_job, monte_carlo
from image_checks import colored_fraction

REPO = Path(__file__).resolve().parents[1]
MC_ARGS = ["--num_rollouts", "2", "--max_steps", "7", "--max_new_tokens", "8", "--save_rollouts", "--seed", "0",
           "--log_level", "WARNING"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, alfworld_data, alfworld_sft_sample):
    from steca.training.bootstrap import bootstrap_model

    root = tmp_path_factory.mktemp("chain")
    sft = load_sft(alfworld_sft_sample, strict=True).records
    write_records(root / "sft.json", sft[:1])
    texts = [m.content for r in sft[:5] for m in r.conversations]
    model = bootstrap_model(texts, root / "model", size="nano")
    env = ["--env", "alfworld", "--env_data", str(alfworld_data), "--split", "train"]
    model_args = ["--model_path", str(model), "--backend", "hf"]
    # the expert stage through its command line; the model stages share one engine (one model load)
    sampling_main(["expert_steps", *env, "--sft", str(root / "sft.json"), "--output", str(root / "expert.jsonl"),
                   "--log_level", "WARNING"])
    policy = HFPolicy(str(model))
    engine = RolloutEngine(policy, partial(make_env, "alfworld", "train", str(alfworld_data)), max_active=16,
                           show_progress=False)
    # what the command line samples with: the evaluation prompt and the evaluation config's stop strings
    prompt = prompt_for("alfworld", root / "sft.json", 1, alfworld_data)
    stop = evaluation_stop("hf")
    try:
        explore_steps(sft[:1], engine, root / "explore.jsonl", SamplingParams(0.0, max_new_tokens=8, stop=stop),
                      max_steps=7, prompt=prompt)
        for kind in ("expert", "explore"):
            # expert_mc.jsonl is compared with the command line's (batch-invariant, the default); the explored
            # steps' rollouts are compared with nothing, so they are sampled in batches, which is faster
            policy.batch_invariant = kind == "expert"
            monte_carlo(load_steps(root / f"{kind}.jsonl", strict=True).records, engine, root / f"{kind}_mc.jsonl",
                        num_rollouts=2, params=SamplingParams(1.0, max_new_tokens=8, stop=stop), max_steps=7,
                        save_rollouts=True, prompt=prompt)
    finally:
        engine.close()
    return {"root": root, "env": env, "model_args": model_args, "sft": sft[:1], "prompt": prompt, "model": model}


def _records(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda d: (d["id"], d["iteration"]))


def test_expert_steps_records(chain):
    recs = load_steps(chain["root"] / "expert.jsonl", strict=True).records
    assert sorted(r.iteration for r in recs) == [0, 1, 2, 3, 4]
    sft = chain["sft"][0]
    for r in recs:
        assert r.agent_final_reward == 1.0  # alfworld_0's expert actions win in the engine
        assert r.agent_step_conversations == sft.conversations[:3 + 2 * r.iteration + 2]
        assert r.agent_step_output == sft.conversations[3 + 2 * r.iteration].content
        assert r.extra["step_won"] == (r.iteration == 4)


def test_explored_steps_records(chain):
    recs = load_steps(chain["root"] / "explore.jsonl", strict=True).records
    assert sorted(r.iteration for r in recs) == [0, 1, 2, 3, 4]
    k = len(chain["prompt"]) + 1  # the evaluation prompt (with its in-context example), then the first observation
    for r in recs:
        n = k + 2 * r.iteration
        assert prompt_length(r.agent_step_conversations) == k
        assert r.agent_conversations[:n + 2] == r.agent_step_conversations
        assert r.agent_step_conversations[n].role == "assistant"
        assert r.agent_step_output == r.agent_step_conversations[n].content
        # the prefix turns are the expert's; observations come from the engine
        assert [m.content for m in r.agent_step_conversations[k:n:2]] == \
            [m.content for m in chain["sft"][0].conversations[3:3 + 2 * r.iteration:2]]
        assert r.agent_final_reward == 0.0 and r.extra["steps"] <= 7


def test_exploration_and_mc_prompts_equal_the_evaluation_prompt(chain, alfworld_data, tmp_path):
    """Turn for turn: the prompt an evaluation run writes, the explored records' and the MC jobs'."""
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "eval_agent.main", "--exp_config", "alfworld", "--split", "train",
                           "--agent_config", "hf", "--model_name", str(chain["model"]), "--data_dir", str(alfworld_data),
                           "--sft_file", str(chain["root"] / "sft.json"), "--output_path", str(out), "--max_tasks", "1",
                           "--max_steps", "1", "--max_new_tokens", "4", "--num_workers", "0", "--device", "cpu"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    episode = json.loads(next(p for p in out.glob("*.json") if p.name != "summary.json").read_text())
    eval_turns = [(m["role"], m["content"]) for m in episode["conversations"]]
    prompt = [(m.role, m.content) for m in chain["prompt"]]
    assert len(prompt) == 16 and eval_turns[:len(prompt)] == prompt  # instruction, OK, 14 example turns
    assert "Your task is to:" in eval_turns[len(prompt)][1]  # then the task's own first observation
    for kind in ("explore", "expert"):
        for r in load_steps(chain["root"] / f"{kind}.jsonl", strict=True).records:
            if kind == "explore":
                assert [(m.role, m.content) for m in r.agent_step_conversations[:len(prompt)]] == prompt
            job = mc_job(r, 2, SamplingParams(1.0), prompt=chain["prompt"])
            assert [(m.role, m.content) for m in job.prompt] == prompt
            assert list(job.prefix) == [s.content for s in chain["sft"][0].conversations[3:3 + 2 * r.iteration:2]]


def test_mc_step_reward_is_mean_of_rollout_outcomes(chain):
    for kind in ("expert", "explore"):
        recs = load_steps(chain["root"] / f"{kind}_mc.jsonl", strict=True).records
        assert sorted(r.iteration for r in recs) == [0, 1, 2, 3, 4]
        for r in recs:
            assert len(r.mc_outcomes) == 2 and r.extra["mc_errors"] == 0
            # the nano model's rollouts of one state all end alike (fractional rewards: test_fractional_rewards.py)
            assert set(r.mc_outcomes) == {r.mc_step_reward}
            assert len(r.extra["mc_rollout_turns"]) == 2
    expert = {r.iteration: r for r in load_steps(chain["root"] / "expert_mc.jsonl").records}
    assert expert[4].mc_step_reward == 1.0 == expert[4].agent_step_reward  # the last expert step wins: every rollout is a success
    assert expert[4].extra["mc_rollout_turns"] == [[], []]
    assert all(expert[t].mc_step_reward == 0.0 == expert[t].agent_step_reward for t in range(4))  # the random model never finishes
    # the two rollouts of a state draw different samples
    assert expert[0].extra["mc_rollout_turns"][0] != expert[0].extra["mc_rollout_turns"][1]


def test_rerun_is_a_no_op_and_shards_partition(chain, alfworld_data, alfworld_sft_sample, tmp_path):
    out = chain["root"] / "expert.jsonl"
    before = out.read_text()
    sampling_main(["expert_steps", *chain["env"], "--sft", str(chain["root"] / "sft.json"), "--output", str(out),
                   "--log_level", "WARNING"])
    assert out.read_text() == before
    sft = load_sft(alfworld_sft_sample, strict=True).records[:2]
    env = make_env("alfworld", "train", str(alfworld_data))
    try:
        keys = []
        for i in range(2):
            expert_steps(sft, env, tmp_path / f"p{i}.jsonl", Shard(2, i))
            keys.append({(d["id"], d["iteration"]) for d in _records(tmp_path / f"p{i}.jsonl")})
    finally:
        env.close()
    assert not keys[0] & keys[1]
    assert {k[0] for k in keys[0] | keys[1]} == {r.id for r in sft}


@pytest.mark.slow(seconds=110)  # with the module's chain fixture and two CLI runs
def test_sigkill_midway_then_resume_gives_the_same_records(chain, tmp_path):
    out = tmp_path / "mc.jsonl"
    cmd = [sys.executable, str(REPO / "sampling" / "run_sampling.py"), "mc", *chain["env"], *chain["model_args"],
           "--steps", str(chain["root"] / "expert.jsonl"), "--output", str(out), *MC_ARGS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the killed run keeps 2 rollouts in flight, the resumed one 16: per-row seeds make batching irrelevant;
    # the run kills itself right after its 2nd record (a deterministic crash point, not a timed one)
    killed = subprocess.run(cmd + ["--max_active", "2"], cwd=REPO, env={**env, KILL_AFTER_RECORDS_ENV: "2"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert out.read_text().count("\n") == 2
    subprocess.run(cmd + ["--max_active", "16"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert _records(out) == _records(chain["root"] / "expert_mc.jsonl")


def test_whole_chain_builds_three_sets_and_a_valid_merged_file(chain, alfworld_data):
    root = chain["root"]
    common = ["--sft", str(root / "sft.json"), "--explore_steps", str(root / "explore_mc.jsonl"), "--log_level", "WARNING",
              "--encoder", "hashing"]  # the same encoder whether or not MiniLM is installed
    s_c = collect_main("calibrated", "alfworld", common + ["--expert_steps", str(root / "expert_mc.jsonl"),
                                                           "--output", str(root / "sets" / "cali.json"),
                                                           "--replay_check", "true", "--env_data", str(alfworld_data)])
    s_s = collect_main("expert", "alfworld", common + ["--expert_steps", str(root / "expert_mc.jsonl"),
                                                       "--output", str(root / "sets" / "expert.json")])
    s_e = collect_main("explored", "alfworld", common + ["--output", str(root / "sets" / "explored.json")])
    # r_explore(t) = 0 <= r_expert(t-1) = 0 for t = 2, 3, 4: three calibrations (stand-in reflections)
    assert s_c["pairs"] == 3 and s_c["settings"]["reflection_stand_in"]
    assert s_c["settings"]["replay"]["checked"] == 3
    # D_s: the whole expert trajectory (exploration from t=0 failed) and t=4 (1.0 vs 0.0)
    assert s_s["per_rule"] and s_s["pairs"] == 2
    assert s_e["pairs"] == 0
    merged = collect_main("merge", "alfworld", [str(root / "sets" / f"{n}.json") for n in ("cali", "expert", "explored")]
                          + ["--output", str(root / "train.json"), "--log_level", "WARNING"])
    assert merged["pairs"] == 5 and merged["invalid_records"] == []
    pairs = load_pairs(root / "train.json", strict=True).records
    for p in pairs:
        assert p.extra["rule"] and p.extra["set"] in ("calibrated", "expert")
        if p.extra["set"] == "calibrated":
            assert isinstance(p.extra["replay_executable"], bool)
    for png in (root / "sets" / "cali_step_rewards.png", root / "sets" / "cali_distances.png",
                root / "train_distances.png"):
        assert colored_fraction(png) > 0.002  # bars drawn
