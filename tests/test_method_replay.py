"""Replay check of calibrated trajectories in the real ALFWorld engine (item 3 of the issue)."""
from __future__ import annotations

import json

import pytest

from eval_agent.types import Message
from steca.method.trajectories import split_expert
from steca.records import PairRecord, load_sft
from eval_agent.envs import make_env
from steca.sampling.replay import check_calibrated_pairs, replay_calibration


@pytest.fixture(scope="module")
def env(alfworld_data):
    e = make_env("alfworld", "train", str(alfworld_data))
    yield e
    e.close()


@pytest.fixture(scope="module")
def sft0(alfworld_sft_sample):
    return load_sft(alfworld_sft_sample, strict=True).records[0]  # alfworld_0: toiletpaper -> hanger


def _pair(sft, t: int, deviated: str) -> PairRecord:
    return PairRecord(f"{sft.id}_calibrated_{t}", [Message("user", "p")], [Message("assistant", "Action: x")], [], 1.0,
                      {"set": "calibrated", "source_id": sft.id, "iteration": t, "deviated_action": deviated,
                       "game_file": sft.game_file})


def test_replay_flags_executable_and_broken_calibrations(env, sft0):
    actions = split_expert(sft0).actions()
    assert actions[2] == "take toiletpaper 1 from toilet 1"
    # looking at the toilet does not move the agent: the expert suffix still works and wins
    ok = replay_calibration(env, sft0.game_file, actions[:2], "examine toilet 1", actions[2:])
    assert ok.executable and ok.success
    # walking away first makes "take toiletpaper 1 from toilet 1" impossible
    bad = replay_calibration(env, sft0.game_file, actions[:2], "go to cabinet 1", actions[2:])
    assert not bad.executable and not bad.success
    assert bad.failed_action == "take toiletpaper 1 from toilet 1" and bad.failed_index == 0


def test_check_pairs_sets_flags_reports_rate_and_drops_on_request(env, sft0):
    pairs = [_pair(sft0, 2, "examine toilet 1"), _pair(sft0, 2, "go to cabinet 1"),
             PairRecord("other", [Message("user", "p")], [Message("assistant", "Action: x")], [], 1.0, {"set": "expert"})]
    kept, summary = check_calibrated_pairs(env, pairs, {sft0.id: sft0})
    assert [p.extra.get("replay_executable") for p in kept] == [True, False, None]
    assert summary.as_dict()["executable_rate"] == 0.5 and summary.success == 1
    kept, summary = check_calibrated_pairs(env, [_pair(sft0, 2, "examine toilet 1"), _pair(sft0, 2, "go to cabinet 1")],
                                           {sft0.id: sft0}, drop_non_executable=True)
    assert len(kept) == 1 and kept[0].extra["replay_success"] is True and summary.dropped == 1
    json.dumps(kept[0].to_dict())  # flags serialise
