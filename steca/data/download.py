"""Fetch the authors' data archives, unpack them into the project's layout, and verify them.

    python -m steca.data.download --what alfworld --output_dir data          # needs network (gdown)
    python -m steca.data.download --what alfworld --archive alfworld_data.zip --output_dir data

Layout after unpacking (what ``--data_dir`` of every stage expects):

* ``<output_dir>/alfworld/json_2.1.1/{train,valid_seen,valid_unseen}/<task>/<trial>/...``
* ``<output_dir>/virtualhome/...`` (the authors' ``virtualhome_master`` tree, without its top folder)
* ``<output_dir>/trajectories/...`` (the authors' expert SFT files, e.g. ``trajectories/alfworld_sft.json``)

These are the paths :mod:`steca.stage_config` derives every stage's inputs from (``DATA_ROOT``).

Verification counts ALFWorld's playable games per split (ALFWorld's own filter; the reference
counts are valid_seen 140 and valid_unseen 134), requires every split (train, valid_seen,
valid_unseen) and loads games in the real engine (``--verify_games``: how many per split, ``-1``
for all).

Archives are untrusted input. An archive already on disk that fails its check (not a zip, a bad
CRC: an interrupted or corrupt download) is downloaded again; downloads go to a ``.part`` file
renamed when complete. Extraction refuses, before writing anything, members whose resolved path
leaves the target folder, symbolic links and device files, a member over
:data:`MAX_MEMBER_BYTES` or compressed more than :data:`MAX_RATIO` times, and archives over
:data:`MAX_TOTAL_BYTES` in all; while writing it stops a member that grows past its declared size.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

# Google Drive ids of the authors' archives (from the STeCa README)
ARCHIVES = {
    "alfworld": ("1y7Vqeo0_xm9d3I07vZaP6qbPFtyuJ6kI", "alfworld_data.zip"),
    "virtualhome": ("1kZKWkWhtJ-DneqfS1Nb_FybR1RBxPeef", "virtualhome_master.zip"),
    "trajectories": ("1tqZyqzyE7NnJdUJlwwfcwnPUFMafKdfA", "data.zip"),
}
EXPECTED_ALFWORLD = {"valid_seen": 140, "valid_unseen": 134}
ALFWORLD_SPLITS = ("train", "valid_seen", "valid_unseen")

# Extraction limits (the authors' archives are far below them: their largest member is a few MB,
# JSON compresses about 10x).
MAX_MEMBER_BYTES = 1 << 30
MAX_TOTAL_BYTES = 64 << 30
MAX_RATIO = 200.0
_RATIO_FROM_BYTES = 1 << 20  # tiny members may compress far better; the ratio counts from 1 MB up
_CHUNK = 1 << 20


class UnsafeArchiveError(ValueError):
    """An archive member that would escape the target, is not a regular file, or is too large."""


@dataclass
class VerifyReport:
    counts: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def gdown_download(file_id: str, out: Path) -> None:
    """Download a Google Drive file to ``out`` with gdown (network needed)."""
    import gdown

    gdown.download(id=file_id, output=str(out), quiet=False)


def archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a sound zip archive (not a zip, a member failing its CRC), or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"not a readable zip archive ({e})"
    return None if bad is None else f"member {bad!r} fails its CRC check"


def fetch(what: str, dest_dir: Path, download: Callable[[str, Path], None] = gdown_download) -> Path:
    """Download one archive (unless a sound copy is there) and return its path.

    A copy that fails :func:`archive_problem` is deleted and downloaded again. ``download`` writes
    the file of a Google Drive id to a path (default: gdown).
    """
    file_id, name = ARCHIVES[what]
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / name
    if out.exists():
        problem = archive_problem(out)
        if problem is None:
            return out
        logger.warning("%s: %s; downloading it again", out, problem)
        out.unlink()
    part = out.with_name(out.name + ".part")
    part.unlink(missing_ok=True)
    download(file_id, part)
    problem = archive_problem(part) if part.exists() else "nothing was downloaded"
    if problem is not None:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"could not download {name} (Google Drive id {file_id}): {problem}; download it by "
                           f"hand and pass --archive")
    part.replace(out)
    return out


def check_members(archive: Path, infos: Sequence[zipfile.ZipInfo], target: Path,
                  max_member: int = MAX_MEMBER_BYTES, max_total: int = MAX_TOTAL_BYTES,
                  max_ratio: float = MAX_RATIO) -> None:
    """Raise :class:`UnsafeArchiveError` for the first member that must not be extracted into ``target``."""
    root = target.resolve()
    total = 0
    for info in infos:
        name = info.filename
        if not (root / name).resolve().is_relative_to(root):
            raise UnsafeArchiveError(f"{archive}: member {name!r} would unpack outside {target}")
        mode = info.external_attr >> 16  # Unix mode; its file-type bits are 0 in zips made elsewhere
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a device or special file"
            raise UnsafeArchiveError(f"{archive}: member {name!r} is {kind}")
        if info.file_size > max_member:
            raise UnsafeArchiveError(f"{archive}: member {name!r} unpacks to {info.file_size} bytes, over the "
                                     f"limit of {max_member}")
        if info.file_size >= _RATIO_FROM_BYTES and info.file_size > max_ratio * max(1, info.compress_size):
            raise UnsafeArchiveError(f"{archive}: member {name!r} is compressed {info.file_size / max(1, info.compress_size):.0f} "
                                     f"times, over the limit of {max_ratio:.0f} (a zip bomb?)")
        total += info.file_size
        if total > max_total:
            raise UnsafeArchiveError(f"{archive}: unpacks to more than {max_total} bytes")


def _safe_extract(archive: Path, target: Path, max_member: int = MAX_MEMBER_BYTES,
                  max_total: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO) -> None:
    """Extract ``archive`` into ``target`` after :func:`check_members`, never writing past a declared size."""
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        check_members(archive, infos, target, max_member, max_total, max_ratio)
        for info in infos:
            dest = target / info.filename
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with zf.open(info) as src, dest.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > info.file_size:
                        raise UnsafeArchiveError(f"{archive}: member {info.filename!r} unpacks to more than the "
                                                 f"{info.file_size} bytes it declares")
                    out.write(chunk)


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
    """Unpack into ``output_dir/name``; an archive whose members all sit in one top folder (``data/``,
    ``virtualhome_master/``) is unpacked without that folder, so the files land where the stage
    configuration (:mod:`steca.stage_config`) looks for them, e.g. ``trajectories/alfworld_sft.json``."""
    target = output_dir / name
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
        staging = Path(tmp)
        _safe_extract(archive, staging)
        entries = list(staging.iterdir())
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        for entry in sorted(source.iterdir()):
            dest = target / entry.name
            if dest.exists():
                logger.info("%s exists; keeping it", dest)
                continue
            shutil.move(str(entry), dest)
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
    missing = [s for s in ALFWORLD_SPLITS if s not in report.counts]
    if missing:
        report.problems.append(f"{base}: missing split folder(s) {', '.join(missing)} (expected "
                               f"{', '.join(ALFWORLD_SPLITS)})")
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
