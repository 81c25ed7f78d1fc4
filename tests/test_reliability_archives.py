"""Reliability of ``steca.data.download`` with hostile and broken archives (failure 11).

Before the fix the download step reused a corrupt archive forever, accepted an archive with only
the train split, extracted a 300 MB member from a 316 KB zip, and guarded paths with a string
prefix check (``../<target>_evil/x`` passed it).
"""
from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from eval_agent.envs.alfworld_game_files import collect_games
from steca.data.download import (ARCHIVES, UnsafeArchiveError, _safe_extract, archive_problem, fetch,
                                 unpack_alfworld, unpack_plain, verify_alfworld)


def _zip(path: Path, members: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            zf.writestr(info, data)
    return path


def test_a_sibling_folder_with_the_target_as_prefix_is_outside(tmp_path: Path) -> None:
    target = tmp_path / "virtualhome"
    target.mkdir()
    archive = _zip(tmp_path / "evil.zip", {"ok.txt": b"fine", "../virtualhome_evil/x": b"escaped"})
    with pytest.raises(UnsafeArchiveError, match="would unpack outside"):
        _safe_extract(archive, target)
    assert not (tmp_path / "virtualhome_evil").exists() and not (target / "ok.txt").exists()


@pytest.mark.parametrize("mode,kind", [(stat.S_IFLNK | 0o777, "symbolic link"), (stat.S_IFCHR | 0o644, "device"),
                                       (stat.S_IFIFO | 0o644, "special file")])
def test_links_and_devices_are_refused(tmp_path: Path, mode: int, kind: str) -> None:
    archive = _zip(tmp_path / "links.zip", {"data/passwd": b"/etc/passwd"}, {"data/passwd": mode})
    with pytest.raises(UnsafeArchiveError, match=kind):
        unpack_plain(archive, tmp_path / "out", "trajectories")
    assert not (tmp_path / "out" / "trajectories" / "data").exists()


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.bin", "w") as f:
            for _ in range(32):
                f.write(bytes(1 << 20))  # 32 MB of zeros compress about 1000 times
    assert archive.stat().st_size < 200_000
    with pytest.raises(UnsafeArchiveError, match="compressed .* times"):
        unpack_plain(archive, tmp_path / "out", "virtualhome")
    assert not (tmp_path / "out" / "virtualhome" / "zeros.bin").exists()
    with pytest.raises(UnsafeArchiveError, match="over the limit of 1000000"):
        _safe_extract(archive, tmp_path / "o2", max_member=1_000_000, max_ratio=1e9)
    with pytest.raises(UnsafeArchiveError, match="more than 2000000 bytes"):
        _safe_extract(archive, tmp_path / "o3", max_total=2_000_000, max_ratio=1e9)


def test_a_member_larger_than_it_declares_is_stopped(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "liar.zip", {"a.txt": b"x" * 5000})
    data = bytearray(archive.read_bytes())
    # patch the declared size (local header at offset 22, central directory entry at +24) down to 100
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 22:local + 26] = (100).to_bytes(4, "little")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises((UnsafeArchiveError, zipfile.BadZipFile)):
        _safe_extract(archive, tmp_path / "out")
    out = tmp_path / "out" / "a.txt"
    assert not out.exists() or out.stat().st_size <= 100


def test_a_corrupt_archive_on_disk_is_downloaded_again(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", {"trajectories/alfworld_sft.json": b"[]"})
    dest = tmp_path / "archives"
    dest.mkdir()
    name = ARCHIVES["trajectories"][1]
    full = good.read_bytes()
    (dest / name).write_bytes(full[: len(full) // 2])  # an interrupted download
    assert archive_problem(dest / name) is not None
    calls = []

    def download(file_id: str, out: Path) -> None:  # the network, replaced by a local copy
        calls.append(file_id)
        shutil.copyfile(good, out)

    path = fetch("trajectories", dest, download)
    assert calls == [ARCHIVES["trajectories"][0]] and archive_problem(path) is None
    assert fetch("trajectories", dest, download) == path and len(calls) == 1  # a sound copy is reused
    assert not list(dest.glob("*.part"))


def test_a_failed_download_leaves_no_archive(tmp_path: Path) -> None:
    def download(file_id: str, out: Path) -> None:
        out.write_bytes(b"<html>quota exceeded</html>")

    with pytest.raises(RuntimeError, match="could not download"):
        fetch("alfworld", tmp_path, download)
    assert not any(tmp_path.iterdir())


def test_an_archive_with_only_the_train_split_fails_verification(alfworld_data: Path, tmp_path: Path) -> None:
    archive = tmp_path / "train_only.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for g in collect_games(alfworld_data, "train")[:1]:
            for f in (g.path, g.path.parent / "traj_data.json"):
                zf.write(f, f"alfworld/{f.relative_to(alfworld_data)}")
    out = tmp_path / "data"
    out.mkdir()
    report = verify_alfworld(unpack_alfworld(archive, out), verify_games=0)
    assert not report.ok
    assert any("missing split folder(s) valid_seen, valid_unseen" in p for p in report.problems)
