"""Replaying the authors' real trajectories: the data check reproduces what the raw engine says."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from steca.data.datacheck import main as datacheck_main
from steca.records import load_sft

# From ../shared/data/alfworld/README.md: replaying every Action: line in the raw engine.
NOT_WINNING = {6, 9, 12, 15, 22, 26, 32, 40, 55, 59, 62, 68, 71, 72, 77, 97, 106, 109, 123, 127, 132, 133, 137,
               138, 145, 150, 153, 154, 158, 159}


@pytest.mark.slow
def test_replay_of_the_real_sample(alfworld_data: Path, alfworld_sft_sample: Path, tmp_path: Path) -> None:
    report, filtered = tmp_path / "report.jsonl", tmp_path / "winning.json"
    summary = datacheck_main(["--sft_file", str(alfworld_sft_sample), "--data_dir", str(alfworld_data),
                              "--report", str(report), "--filtered_output", str(filtered), "--num_workers", "2"])
    assert summary["trajectories"] == 151
    assert summary["first_observation_matches"] == 151
    assert summary["won"] == 121
    assert {int(i.split("_")[1]) for i in summary["not_won_ids"]} == NOT_WINNING
    assert summary["all_observations_match"] == 90
    assert summary["errors"] == 0
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(rows) == 151
    diverged = [r for r in rows if not r["all_observations_match"]]
    assert all(r["recorded"] != r["engine"] and r["first_divergence"] is not None for r in diverged)
    assert 0 < sum(bool(r["rejected_actions"]) for r in rows) < 151
    kept = load_sft(filtered, strict=True).records
    assert len(kept) == 121 and all(int(r.id.split("_")[1]) not in NOT_WINNING for r in kept)


def test_unknown_game_file_is_reported_not_fatal(alfworld_data: Path, alfworld_sft_sample: Path, tmp_path: Path) -> None:
    data = json.loads(alfworld_sft_sample.read_text())[:2]
    data[0]["game_file"] = "data/json_2.1.1/train/missing_task/trial_0"
    sft = tmp_path / "two.json"
    sft.write_text(json.dumps(data))
    report = tmp_path / "r.jsonl"
    summary = datacheck_main(["--sft_file", str(sft), "--data_dir", str(alfworld_data), "--report", str(report),
                              "--num_workers", "1"])
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert summary["errors"] == 1 and "missing_task" in rows[0]["error"]
    assert rows[1]["won"] and rows[1]["error"] is None
