"""The evaluation CLI contract: per-task JSON + summary, resume without --override, last line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval_agent.main import task_file_name

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "eval_agent.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


TYPES = ["pick", "clean", "heat", "cool", "look", "pick two"]
PER_TYPE = 4  # dev games per task type in the default run (STECA_FULL_DATA=1: all 140)


def _dev_games(alfworld_data: Path, root: Path, full: bool) -> tuple[Path, int]:
    """A data root whose ``valid_seen`` holds the first PER_TYPE games of each type (symlinks into the shared
    data, read in place), or the shared root itself for a full-data run; and its number of games."""
    games = sorted(p.parent.parent for p in (alfworld_data / "json_2.1.1" / "valid_seen").glob("*/*/traj_data.json"))
    if full:
        return alfworld_data, len(games)
    picked: dict[str, list[Path]] = {}
    for game in games:
        picked.setdefault(game.name.split("-")[0], []).append(game)
    split = root / "json_2.1.1" / "valid_seen"
    split.mkdir(parents=True)
    for trials in picked.values():
        for game in trials[:PER_TYPE]:
            (split / game.name).symlink_to(game, target_is_directory=True)
    return root, PER_TYPE * len(picked)


@pytest.mark.slow
def test_expert_scores_one_on_dev_games_of_every_type(alfworld_data: Path, tmp_path: Path, full_data: bool) -> None:
    data, n = _dev_games(alfworld_data, tmp_path / "data", full_data)
    assert n == (140 if full_data else PER_TYPE * len(TYPES))
    out = tmp_path / "dev"
    lines = _run("--exp_config", "alfworld", "--split", "dev", "--agent_config", "expert",
                 "--data_dir", str(data), "--output_path", str(out), "--num_workers", "2")
    assert lines[-1] == "Success rate: 1.0000"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tasks"] == n and summary["n_success"] == n
    assert len(list(out.glob("*.json"))) == n + 1
    by_type = summary["success_by_type"]
    assert list(by_type) == TYPES
    assert sum(row["n_tasks"] for row in by_type.values()) == n
    assert all(row["success_rate"] == 1.0 and row["n_success"] == row["n_tasks"] for row in by_type.values())
    for kind, row in by_type.items():  # the printed table has one line per type
        assert any(line.startswith(kind) and f"{row['n_success']}/{row['n_tasks']}" in line for line in lines)


def test_resume_skips_finished_tasks(alfworld_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    common = ["--exp_config", "alfworld", "--split", "dev", "--agent_config", "expert",
              "--data_dir", str(alfworld_data), "--output_path", str(out), "--num_workers", "0"]
    _run(*common, "--max_tasks", "2")
    files = sorted(out.glob("*.json"))
    stamps = {f.name: f.stat().st_mtime_ns for f in files if f.name != "summary.json"}
    assert len(stamps) == 2
    # a half-written (unfinished) episode file from a killed run is redone
    third = json.loads(files[0].read_text())
    third["meta"]["finished"] = False
    (out / "unfinished.json").write_text(json.dumps(third))
    lines = _run(*common, "--max_tasks", "3")
    assert lines[-1] == "Success rate: 1.0000"
    for name, stamp in stamps.items():
        assert (out / name).stat().st_mtime_ns == stamp  # not redone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tasks"] == 3  # every task exactly once
    lines = _run(*common, "--max_tasks", "2", "--override")
    assert any((out / n).stat().st_mtime_ns != s for n, s in stamps.items())


def test_alfworld_task_types_from_game_paths() -> None:
    from eval_agent.envs.alfworld_env import alfworld_task_type

    root = "data/json_2.1.1/valid_seen"
    assert alfworld_task_type(f"{root}/pick_two_obj_and_place-Pen-None-Desk-313/trial_T1/game.tw-pddl") == "pick two"
    assert alfworld_task_type(f"{root}/pick_and_place_simple-Pen-None-Desk-313/trial_T1") == "pick"
    assert alfworld_task_type(f"{root}/pick_cool_then_place_in_recep-Apple-None-Fridge-1/trial_T1") == "cool"
    assert alfworld_task_type(f"{root}/look_at_obj_in_light-Book-None-DeskLamp-1/trial_T1") == "look"
    assert alfworld_task_type("somewhere/else/game.tw-pddl") is None


def test_task_file_names_are_flat() -> None:
    assert task_file_name("pick_and_place_simple-X-None-Y-1/trial_T2019") == "pick_and_place_simple-X-None-Y-1__trial_T2019.json"
