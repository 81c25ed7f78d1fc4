"""The VirtualHome task generator: own homes, searched expert programs, STeCa formats, splits;
and a tiny random-weights model playing generated tasks end to end through the hf backend."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from eval_agent.envs.virtualhome import VirtualHomeEnv, make_virtualhome_env
from steca.generators.virtualhome_tasks import VIRTUALHOME_SHORT_INSTRUCTION, candidate_goals, generate, main, make_home
from steca.records import load_sft

SMALL = dict(n_homes=3, n_unseen_homes=1, tasks_per_home=5, seen_per_home=2, seed=3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vh_generated")
    counts = generate(out, **SMALL)
    assert counts["train"] > 0 and counts["seen"] > 0 and counts["unseen"] > 0
    return out


def test_homes_are_well_formed():
    home = make_home(0, seed=1)
    rooms = {n["id"] for n in home["nodes"] if n["category"] == "Rooms"}
    inside_room: dict[int, int] = {}
    for e in home["edges"]:
        if e["relation_type"] == "INSIDE" and e["to_id"] in rooms:
            inside_room[e["from_id"]] = inside_room.get(e["from_id"], 0) + 1
    for n in home["nodes"]:
        if n["id"] not in rooms:
            assert inside_room.get(n["id"]) == 1, n
    assert sum(n["class_name"] == "character" for n in home["nodes"]) == 1
    kinds = {g.kind for g in candidate_goals(home)}
    assert {"switch_on", "put", "sit", "open", "close"} <= kinds
    assert make_home(0, seed=1) == home and make_home(0, seed=2) != home


def test_generated_files_play_in_the_env(generated: Path):
    homes = {}
    for split in ("train", "seen", "unseen"):
        env = make_virtualhome_env(split, data_dir=generated)
        assert not env.load_errors
        homes[split] = {env.task(t).scene for t in env.task_ids()}
        for tid in env.task_ids():
            assert env.is_reachable(tid)
            first = env.reset(tid)
            assert "Your task is to: " in first
            outs = [env.execute(a) for a in env.expert_actions(tid)]
            assert all(o.valid for o in outs) and outs[-1].won, tid
    assert homes["unseen"].isdisjoint(homes["train"] | homes["seen"])  # held-out homes
    train = [json.loads(l)["task"] for l in (generated / "vh_train.jsonl").read_text().splitlines()]
    seen = [json.loads(l)["id"] for l in (generated / "vh_seen_test.jsonl").read_text().splitlines()]
    assert train and seen
    sft = load_sft(generated / "vh_sft_train.json", strict=True).records
    assert len(sft) == len(train)
    conv = sft[0].conversations
    assert conv[1].content == "OK" and conv[3].content.startswith("Thought: ") and "\nAction: " in conv[3].content
    assert all(m.content.startswith("Observation: ") for m in conv[4::2])


def test_generation_is_deterministic(generated: Path, tmp_path: Path):
    generate(tmp_path, **SMALL)
    for name in ("vh_train.jsonl", "vh_seen_test.jsonl", "vh_unseen_test.jsonl", "vh_sft_train.json"):
        assert (tmp_path / name).read_text() == (generated / name).read_text(), name


def test_short_instruction_cli_changes_only_the_first_turn(generated: Path, tmp_path: Path):
    """``--instruction short`` (the CPU demo's) writes the reply-format-only first turn; tasks and every
    other turn are those of the default (full) instruction."""
    main(["--out", str(tmp_path), "--instruction", "short", *(f"--{k}={v}" for k, v in SMALL.items())])
    short = load_sft(tmp_path / "vh_sft_train.json", strict=True).records
    full = load_sft(generated / "vh_sft_train.json", strict=True).records
    assert [r.id for r in short] == [r.id for r in full]
    for s, f in zip(short, full):
        assert s.conversations[0].content == VIRTUALHOME_SHORT_INSTRUCTION != f.conversations[0].content
        assert s.conversations[1:] == f.conversations[1:]
    assert (tmp_path / "vh_unseen_test.jsonl").read_text() == (generated / "vh_unseen_test.jsonl").read_text()


@pytest.mark.slow
def test_tiny_hf_model_plays_generated_tasks(generated: Path, tmp_path: Path):
    from eval_agent.agents.policy import SamplingParams
    from eval_agent.agents.hf import HFPolicy
    from eval_agent.engine import RolloutEngine, RolloutJob
    from eval_agent.types import Message
    from steca.training.bootstrap import bootstrap_model

    records = json.loads((generated / "vh_sft_train.json").read_text())
    texts = [m["content"] for r in records[:8] for m in r["conversations"]]
    model_dir = bootstrap_model(texts, tmp_path / "tiny_vh_model", size="nano", seed=0)
    policy = HFPolicy(str(model_dir), device="cpu", max_batch_size=8)
    prompt = [Message("user", records[0]["conversations"][0]["content"]), Message("assistant", "OK")]
    factory = functools.partial(make_virtualhome_env, "seen", data_dir=str(generated))
    ids = VirtualHomeEnv(generated / "vh_seen_test.jsonl", generated).task_ids()[:2]
    jobs = [RolloutJob(job_id=t, task_id=t, prompt=prompt, max_steps=3,
                       params=SamplingParams(temperature=0.0, max_new_tokens=24)) for t in ids]
    with RolloutEngine(policy, factory, num_workers=0, max_active=4, show_progress=False) as engine:
        results = engine.run(jobs)
    assert len(results) == len(ids)
    for r in results:
        ep = r.episode
        # the random nano model never reaches a goal in 3 steps: every episode runs out of steps
        assert (ep.finished, ep.terminate_reason, ep.success, ep.steps) == (True, "max_steps", False, 3)
        users = [m.content for m in ep.messages[ep.n_prompt_messages:] if m.role == "user"]
        assert users[0].startswith("You are in the ") and len(users) == 1 + ep.steps
