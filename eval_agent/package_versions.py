"""Which installed packages differ from the versions an adapter's fast path was tested with."""
from __future__ import annotations

import importlib.metadata
from typing import Mapping


def untested_versions(tested: Mapping[str, tuple[str, ...]]) -> list[str]:
    """``"<package> <installed> (tested: <versions>)"`` for every package of ``tested`` whose installed
    version (or absence: ``not installed``) is not one of its tested versions; empty when all match."""
    wrong = []
    for package, versions in tested.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed not in versions:
            wrong.append(f"{package} {installed} (tested: {', '.join(versions)})")
    return wrong
