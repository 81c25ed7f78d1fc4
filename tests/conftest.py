"""Shared fixtures. Real test data lives outside the repository in ``../shared/data`` (or where
``STECA_SHARED_DATA`` points). A test that needs it fails under ``CI=true`` (or ``1``) when it is missing and
is skipped with a clear message otherwise (a user's clone has no ``../shared``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("STECA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    msg = (f"{what} not found at {path}. Tests on real data read ../shared/data next to the clone "
           f"(or set STECA_SHARED_DATA).")
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(msg + " CI=true, so this is an error.")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def full_data() -> bool:
    """``STECA_FULL_DATA=1``: the whole-data checks (every dev game, every shared trajectory) run on all of
    the data instead of their fixed stratified part, which keeps the default suite within its time budget."""
    return os.environ.get("STECA_FULL_DATA", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def alfworld_data() -> Path:
    """Root holding ``json_2.1.1/{train,valid_seen}`` and ``alfworld_sft_sample.json``."""
    return _need(shared_data_dir() / "alfworld", "The shared ALFWorld data")


@pytest.fixture(scope="session")
def alfworld_sft_sample(alfworld_data: Path) -> Path:
    return _need(alfworld_data / "alfworld_sft_sample.json", "The shared ALFWorld SFT sample")


@pytest.fixture(scope="session")
def virtualhome_data() -> Path:
    """Folder with ``scene_graphs/``, ``resources/`` and ``vh_seen_test.jsonl``."""
    return _need(shared_data_dir() / "virtualhome", "The shared VirtualHome data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the modules that hold ``slow`` tests first, each module's tests kept together.

    With ``pytest -n 2 --dist loadfile`` (scripts/test.sh) the long end-to-end modules then start at once on
    separate workers while the short ones fill the gaps, instead of one long module starting last. Only the
    order changes; no test depends on it (the suite also passes shuffled)."""
    slow_modules = {item.module.__name__ for item in items
                    if item.get_closest_marker("slow") is not None and getattr(item, "module", None) is not None}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (getattr(getattr(item, "module", None), "__name__", "") not in slow_modules,
                                 position[id(item)]))
