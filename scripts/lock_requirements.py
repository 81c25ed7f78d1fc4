"""Re-resolve requirements.txt and requirements-gpu.txt with pip and write requirements-lock.json.

The lock records, for each resolution (``cpu`` = requirements.txt alone, ``gpu`` = the GPU file, which
includes the CPU one), every package pip would install with its version and its declared requirements
(``Requires-Dist`` lines that apply: no extras, or the extras that were requested). tests/test_pins.py
reads it offline and checks that the two resolutions agree on every shared package (a GPU install
replaces nothing), that every pin is what pip resolved, and that every requirement of every locked
package is met by the locked versions.

Needs network access to the package index (pip's ``--dry-run --report``: metadata only, nothing is
installed). One resolution per interpreter (``--python``, repeatable); the existing lock's resolutions
for other Pythons are kept while the requirement files are unchanged, so one Python can be added or
redone alone:

    python scripts/lock_requirements.py --python python3.11 --python python3.12
    python scripts/lock_requirements.py --python /path/to/python3.12     # redo 3.12, keep 3.11

Resolve with the machine's own pip configuration: overriding it (``PIP_CONFIG_FILE=/dev/null``,
``PIP_FIND_LINKS=``) lets pip drift to other torch builds than the pinned one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FILES = {"cpu": "requirements.txt", "gpu": "requirements-gpu.txt"}
LOCK = "requirements-lock.json"


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def file_digest(path: Path) -> str:
    """sha256 of a requirements file, so the test can tell when the lock is older than the file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve(python: str, requirements: Path) -> dict[str, Any]:
    """pip's dry-run resolution of ``requirements`` for interpreter ``python``: ``{name: {version, requires, extras}}``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-r", str(requirements)]
        logger.info("%s", " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=requirements.parent)
        data = json.loads(report.read_text())
    packages: dict[str, Any] = {}
    for item in data["install"]:
        meta = item["metadata"]
        extras = sorted(item.get("requested_extras") or [])
        keep = [req for req in meta.get("requires_dist") or [] if applies(req, extras)]
        packages[canonical(meta["name"])] = {"version": meta["version"], "requires": keep, "extras": extras}
    return packages


def applies(requirement: str, extras: list[str]) -> bool:
    """Whether a ``Requires-Dist`` line is part of the install: no ``extra`` in its marker, or a requested extra."""
    from packaging.requirements import Requirement

    marker = Requirement(requirement).marker
    if marker is None or "extra" not in str(marker):
        return True
    # other marker variables (python_version...) are judged by the test for each interpreter
    return any(_extra_marker_true(str(marker), e) for e in extras)


def _extra_marker_true(marker: str, extra: str) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate({"extra": extra})


def python_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def _kept_resolutions(lock_path: Path, inputs: dict[str, str]) -> dict[str, Any]:
    """The resolutions of an existing lock made from the same requirement files (their sha256 equal to
    ``inputs``): a run for some Pythons keeps those of the others. A lock of other files keeps nothing."""
    if not lock_path.is_file():
        return {}
    old = json.loads(lock_path.read_text())
    if old.get("inputs") != inputs:
        logger.info("%s was made from other requirement files: its resolutions are not kept", lock_path)
        return {}
    return dict(old.get("resolutions", {}))


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", default=None,
                    help="interpreter to resolve for (repeatable; default: this one)")
    ap.add_argument("--output", default=str(ROOT / LOCK))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    pythons = args.python or [sys.executable]
    lock: dict[str, Any] = {
        "generated_by": "python scripts/lock_requirements.py",
        "inputs": {name: file_digest(ROOT / name) for name in FILES.values()},
        "resolutions": {},
    }
    out = Path(args.output)
    kept = _kept_resolutions(out, lock["inputs"])
    for py in pythons:
        ver = python_version(py)
        kept = {k: v for k, v in kept.items() if v["python"] != ver}
        for kind, name in FILES.items():
            lock["resolutions"][f"{kind}-py{ver}"] = {"python": ver, "file": name,
                                                      "packages": resolve(py, ROOT / name)}
    lock["resolutions"].update(kept)
    out.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n")
    logger.info("wrote %s (%d resolutions)", out, len(lock["resolutions"]))
    return out


if __name__ == "__main__":
    main()
