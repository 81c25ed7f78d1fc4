"""The download step's unpack-and-verify part, on a small archive of real games built by the test."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from eval_agent.envs.alfworld_game_files import collect_games
from steca.data.download import main as download_main
from steca.data.download import unpack_alfworld, verify_alfworld


def _archive(alfworld_data: Path, tmp_path: Path) -> Path:
    games = collect_games(alfworld_data, "dev")[:2] + collect_games(alfworld_data, "train")[:1]
    archive = tmp_path / "alfworld_data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for g in games:
            for f in (g.path, g.path.parent / "traj_data.json"):
                rel = f.relative_to(alfworld_data)
                zf.write(f, f"alfworld_release/data/{rel}")
    return archive


def test_unpack_and_verify_a_small_archive(alfworld_data: Path, tmp_path: Path) -> None:
    archive = _archive(alfworld_data, tmp_path)
    out = tmp_path / "data"
    out.mkdir()
    root = unpack_alfworld(archive, out)
    assert root == out / "alfworld"
    assert len(collect_games(root, "dev")) == 2 and len(collect_games(root, "train")) == 1
    report = verify_alfworld(root, verify_games=-1)
    assert report.counts == {"train": 1, "valid_seen": 2} and report.loaded == report.counts
    assert len(report.problems) == 2 and "expected 140" in report.problems[0]  # a partial valid_seen is flagged
    assert "missing split folder(s) valid_unseen" in report.problems[1]  # and so is a missing split


def test_cli_fails_loudly_on_an_incomplete_archive(alfworld_data: Path, tmp_path: Path) -> None:
    archive = _archive(alfworld_data, tmp_path)
    with pytest.raises(SystemExit, match="verification failed"):
        download_main(["--what", "alfworld", "--archive", str(archive), "--output_dir", str(tmp_path / "d")])


def test_archive_without_games_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(FileNotFoundError, match="no json_2.1.1"):
        unpack_alfworld(archive, tmp_path)
