"""Finding ALFWorld games on disk: the data-root layout, ALFWorld's filter, and game-file resolution.

A data root holds ``json_2.1.1/{train,valid_seen,valid_unseen}/<task>/<trial>/{game.tw-pddl,traj_data.json}``.
The filter is ALFWorld's own (``AlfredTWEnv.collect_game_files``): trials whose path contains
``movable`` or ``Sliced`` are skipped, and so are games whose ``game.tw-pddl`` lacks ``solvable`` or
says ``"solvable": false``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SPLIT_FOLDERS = {"train": "train", "dev": "valid_seen", "test": "valid_unseen",
                 "valid_seen": "valid_seen", "valid_unseen": "valid_unseen"}
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")


class GameNotFoundError(FileNotFoundError):
    """A game file named by a record or an argument does not exist under the data root."""


@dataclass(frozen=True)
class GameInfo:
    """One playable game: ``task_id`` is ``<task>/<trial>`` relative to its split folder."""

    task_id: str
    split_folder: str
    path: Path  # the game.tw-pddl file

    @property
    def game_file(self) -> str:
        """The STeCa-style name of the game: ``json_2.1.1/<split>/<task>/<trial>``."""
        return f"json_2.1.1/{self.split_folder}/{self.task_id}"


def default_data_root() -> Path | None:
    """``$ALFWORLD_DATA`` if set, else None."""
    value = os.environ.get("ALFWORLD_DATA")
    return Path(value) if value else None


def split_dir(data_root: str | os.PathLike, split: str) -> Path:
    """The folder of ``split`` (``train``/``dev``/``test`` or a folder name); raises if missing."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown ALFWorld split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}")
    folder = Path(data_root) / "json_2.1.1" / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise FileNotFoundError(f"ALFWorld split {split!r} not found: {folder} does not exist "
                                f"(data root {data_root}; expected json_2.1.1/{SPLIT_FOLDERS[split]}/)")
    return folder


def is_playable(trial_dir: Path) -> bool:
    """ALFWorld's filter for one trial folder."""
    if "movable" in str(trial_dir) or "Sliced" in str(trial_dir):
        return False
    game = trial_dir / GAME_FILE
    if not (trial_dir / TRAJ_FILE).exists() or not game.exists():
        return False
    with game.open(encoding="utf-8") as f:
        data = json.load(f)
    return bool(data.get("solvable", False))


def collect_games(data_root: str | os.PathLike, split: str) -> list[GameInfo]:
    """Every playable game of ``split``, sorted by task id (stable across machines)."""
    folder = split_dir(data_root, split)
    games = []
    for traj in sorted(folder.glob(f"*/*/{TRAJ_FILE}")):
        trial_dir = traj.parent
        if is_playable(trial_dir):
            task_id = f"{trial_dir.parent.name}/{trial_dir.name}"
            games.append(GameInfo(task_id, SPLIT_FOLDERS[split], trial_dir / GAME_FILE))
    return games


def resolve_game_file(game_file: str, data_root: str | os.PathLike) -> Path:
    """The ``game.tw-pddl`` path of a record's ``game_file`` (e.g. ``data/json_2.1.1/train/<task>/<trial>``).

    Accepts a trial folder or the game file itself, absolute or relative to ``data_root``; the part
    after ``json_2.1.1/`` is what matters, so the authors' paths work with any data root.
    """
    p = Path(game_file)
    candidates = [p] if p.is_absolute() else []
    marker = "json_2.1.1/"
    text = str(game_file).replace("\\", "/")
    if marker in text:
        candidates.append(Path(data_root) / "json_2.1.1" / text.split(marker, 1)[1])
    candidates.append(Path(data_root) / text)
    for c in candidates:
        if c.is_dir() and (c / GAME_FILE).exists():
            return c / GAME_FILE
        if c.is_file() and c.name == GAME_FILE:
            return c
    raise GameNotFoundError(f"game {game_file!r} not found under data root {data_root}")


def task_type_of(game_path: Path) -> str:
    """The task type recorded in the trial's ``traj_data.json``."""
    with (game_path.parent / TRAJ_FILE).open(encoding="utf-8") as f:
        return json.load(f)["task_type"]
