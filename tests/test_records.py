"""Record formats: round trips (JSON and JSONL), real data, and clear errors on malformed input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_agent.types import EpisodeState, Message
from eval_agent.storage import JsonlSink, read_jsonl_objects
from steca.records import (PairRecord, RecordError, SFTRecord, StepRecord, load_pairs, load_sft, load_steps,
                           write_records)


def _step(i: int) -> StepRecord:
    conv = [Message("user", "instr"), Message("assistant", "OK"), Message("user", "You are in a room."),
            Message("assistant", f"Thought: t{i}\nAction: go to desk 1"), Message("user", "Observation: ok")]
    return StepRecord(id=str(i), iteration=i, game_file="json_2.1.1/train/a/b", agent_step_output=conv[3].content,
                      agent_step_conversations=conv, agent_conversations=conv + [Message("assistant", "x")],
                      agent_final_reward=float(i % 2), agent_step_reward=0.0, mc_outcomes=[0.0, 1.0, 0.0, 1.0, 0.0],
                      mc_step_reward=0.4,
                      extra={"source": "explore"})


def _pair(i: int) -> PairRecord:
    return PairRecord(id=f"p{i}", prompt=[Message("user", "instr"), Message("assistant", "OK"), Message("user", "obs")],
                      chosen=[Message("assistant", "Thought: a\nAction: b")], rejected=[Message("assistant", "c")],
                      reward=1.0 + i / 100, extra={"set": "D_c", "rule": "deviation"})


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_round_trip_all_formats(tmp_path: Path, suffix: str) -> None:
    steps = [_step(i) for i in range(3)]
    pairs = [_pair(i) for i in range(3)]
    sft = [SFTRecord("s0", "g", [Message("user", "u"), Message("assistant", "a")], style="sharegpt")]
    for records, loader in ((steps, load_steps), (pairs, load_pairs), (sft, load_sft)):
        path = write_records(tmp_path / f"f{suffix}", records)
        back = loader(path, strict=True).records
        assert back == records
        again = loader(write_records(tmp_path / f"g{suffix}", back), strict=True).records
        assert again == records


def test_real_sft_sample_round_trips(alfworld_sft_sample: Path, tmp_path: Path) -> None:
    loaded = load_sft(alfworld_sft_sample, strict=True)
    assert len(loaded.records) == 151
    out = write_records(tmp_path / "copy.json", loaded.records)
    assert json.loads(out.read_text()) == json.loads(alfworld_sft_sample.read_text())


def test_sharegpt_style_is_kept(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps([{"id": 1, "game_file": "g", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "OK"}]}]))
    rec = load_sft(p, strict=True).records[0]
    assert rec.conversations == [Message("user", "hi"), Message("assistant", "OK")]
    assert rec.to_dict()["conversations"][1] == {"from": "gpt", "value": "OK"}


def test_broken_jsonl_line_and_missing_field_are_reported_rest_is_read(tmp_path: Path) -> None:
    p = tmp_path / "pairs.jsonl"
    good = [json.dumps(_pair(i).to_dict()) for i in range(3)]
    missing = _pair(9).to_dict()
    del missing["reward"]
    p.write_text("\n".join([good[0], "{not json", good[1], json.dumps(missing), good[2]]) + "\n")
    res = load_pairs(p)
    assert [r.id for r in res.records] == ["p0", "p1", "p2"]
    assert len(res.errors) == 2
    broken, miss = res.errors
    assert str(p) in str(broken) and "record 1" in str(broken) and "line 2" in str(broken)
    assert "record 3" in str(miss) and "p9" in str(miss) and "'reward'" in str(miss)
    with pytest.raises(RecordError, match="record 1"):
        load_pairs(p, strict=True)


def test_wrong_types_name_the_field(tmp_path: Path) -> None:
    bad = _step(1).to_dict()
    bad["iteration"] = "three"
    bad2 = _step(2).to_dict()
    bad2["agent_step_conversations"][1] = {"role": "robot", "content": "x"}
    p = write_records(tmp_path / "steps.json", [bad, _step(0).to_dict(), bad2])
    res = load_steps(p)
    assert [r.id for r in res.records] == ["0"]
    assert "'iteration'" in str(res.errors[0])
    assert "agent_step_conversations[1]" in str(res.errors[1]) and "robot" in str(res.errors[1])


def test_broken_json_array_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('[{"id": 1,')
    with pytest.raises(RecordError, match="not valid JSON") as e:
        load_sft(p)
    assert str(p) in str(e.value)


def test_jsonl_sink_repairs_a_torn_tail(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    with JsonlSink(p) as sink:
        sink.write(_pair(0))
        sink.write(_pair(1))
    with p.open("a") as f:  # a writer killed mid-line
        f.write('{"id": "p2", "prompt": [')
    with JsonlSink(p) as sink:
        sink.write(_pair(3))
    assert [o["id"] for o in read_jsonl_objects(p)] == ["p0", "p1", "p3"]
    assert load_pairs(p, strict=True).records[-1] == _pair(3)


def test_episode_state_output_round_trip() -> None:
    s = EpisodeState("t/1", "json_2.1.1/valid_seen/t/1", [Message("user", "a"), Message("assistant", "b")],
                     steps=1, reward=1.0, success=True, finished=True, terminate_reason="success",
                     n_prompt_messages=1, extra={"seed": 3})
    out = s.to_output()
    assert set(out) == {"meta", "conversations"}
    assert EpisodeState.from_output(json.loads(json.dumps(out))) == s
