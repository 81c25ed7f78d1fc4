"""Fetch the authors' data archives, unpack them into the project's layout, and verify them.

    python -m steca.data.download --what alfworld --output_dir data          # needs network (gdown)
    python -m steca.data.download --what alfworld --archive alfworld_data.zip --output_dir data

Layout after unpacking (what ``--data_dir`` of every stage expects):

* ``<output_dir>/alfworld/json_2.1.1/{train,valid_seen,valid_unseen}/<task>/<trial>/...``
* ``<output_dir>/virtualhome/...`` (the authors' ``virtualhome_master`` tree)
* ``<output_dir>/trajectories/...`` (the authors' expert SFT files, e.g. ``alfworld_sft.json``)

Verification counts ALFWorld's playable games per split (ALFWorld's own filter; the reference
counts are valid_seen 140 and valid_unseen 134) and loads games in the real engine
(``--verify_games``: how many per split, ``-1`` for all).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

# Google Drive ids of the authors' archives (from the STeCa README)
ARCHIVES = {
    "alfworld": ("1y7Vqeo0_xm9d3I07vZaP6qbPFtyuJ6kI", "alfworld_data.zip"),
    "virtualhome": ("1kZKWkWhtJ-DneqfS1Nb_FybR1RBxPeef", "virtualhome_master.zip"),
    "trajectories": ("1tqZyqzyE7NnJdUJlwwfcwnPUFMafKdfA", "data.zip"),
}
EXPECTED_ALFWORLD = {"valid_seen": 140, "valid_unseen": 134}


@dataclass
class VerifyReport:
    counts: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def fetch(what: str, dest_dir: Path) -> Path:
    """Download one archive with gdown (network needed) and return its path."""
    import gdown

    file_id, name = ARCHIVES[what]
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / name
    if not out.exists():
        result = gdown.download(id=file_id, output=str(out), quiet=False)
        if result is None or not out.exists():
            raise RuntimeError(f"could not download {name} (Google Drive id {file_id}); download it by hand "
                               f"and pass --archive")
    return out


def _safe_extract(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            dest = (target / member).resolve()
            if not str(dest).startswith(str(target.resolve())):
                raise ValueError(f"{archive}: member {member!r} would unpack outside {target}")
        zf.extractall(target)


def unpack_alfworld(archive: Path, output_dir: Path) -> Path:
    """Unpack an archive holding a ``json_2.1.1`` folder anywhere inside into ``output_dir/alfworld``."""
    root = output_dir / "alfworld"
    with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
        staging = Path(tmp)
        _safe_extract(archive, staging)
        found = sorted(staging.rglob("json_2.1.1"), key=lambda p: len(p.parts))
        if not found:
            raise FileNotFoundError(f"{archive}: no json_2.1.1 folder inside")
        root.mkdir(parents=True, exist_ok=True)
        target = root / "json_2.1.1"
        for split_dir in sorted(p for p in found[0].iterdir() if p.is_dir()):
            dest = target / split_dir.name
            if dest.exists():
                logger.info("%s exists; keeping it", dest)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(split_dir), dest)
    return root


def unpack_plain(archive: Path, output_dir: Path, name: str) -> Path:
    target = output_dir / name
    target.mkdir(parents=True, exist_ok=True)
    _safe_extract(archive, target)
    return target


def verify_alfworld(root: Path, verify_games: int = 3) -> VerifyReport:
    """Count playable games per split and load ``verify_games`` of each (``-1``: all) in the engine."""
    from eval_agent.envs.alfworld_env import AlfWorldEnv
    from eval_agent.envs.alfworld_game_files import collect_games

    report = VerifyReport()
    base = root / "json_2.1.1"
    for folder, split in (("train", "train"), ("valid_seen", "dev"), ("valid_unseen", "test")):
        if not (base / folder).is_dir():
            continue
        try:
            games = collect_games(root, split)
        except (OSError, ValueError, json.JSONDecodeError) as e:
            report.problems.append(f"{base / folder}: {e}")
            continue
        report.counts[folder] = len(games)
        expected = EXPECTED_ALFWORLD.get(folder)
        if expected is not None and len(games) != expected:
            report.problems.append(f"{base / folder}: {len(games)} playable games, expected {expected}")
        n = len(games) if verify_games < 0 else min(verify_games, len(games))
        env = AlfWorldEnv(root, split)
        loaded = 0
        for g in games[:n]:
            try:
                first = env.reset(g.task_id)
                if "Your task is to" not in first:
                    raise ValueError("first observation has no goal")
                loaded += 1
            except Exception as e:  # report every broken game, keep checking the rest
                report.problems.append(f"{g.path}: does not load ({type(e).__name__}: {e})")
        env.close()
        report.loaded[folder] = loaded
    if not report.counts:
        report.problems.append(f"{base}: no split folders")
    return report


def main(argv: Sequence[str] | None = None) -> VerifyReport | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=[*ARCHIVES, "all"], default="all")
    p.add_argument("--output_dir", default="data")
    p.add_argument("--archive", default=None, help="use this local archive instead of downloading (one --what)")
    p.add_argument("--verify_games", type=int, default=3, help="games per split to load in the engine (-1: all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = list(ARCHIVES) if args.what == "all" else [args.what]
    if args.archive and len(targets) != 1:
        raise SystemExit("--archive needs a single --what")
    report = None
    for what in targets:
        archive = Path(args.archive) if args.archive else fetch(what, out / "archives")
        if what == "alfworld":
            root = unpack_alfworld(archive, out)
            report = verify_alfworld(root, args.verify_games)
            print(json.dumps({"alfworld_root": str(root), "counts": report.counts, "loaded": report.loaded,
                              "problems": report.problems}, indent=1))
            if not report.ok:
                raise SystemExit(f"verification failed: {len(report.problems)} problem(s)")
        else:
            print(f"{what}: unpacked into {unpack_plain(archive, out, what)}")
    return report


if __name__ == "__main__":
    main()
