"""Run a pipeline stage once: skip it when its completion marker exists, write the marker after success.

The marker ``<run_dir>/.stages/<name>.json`` records the command, the wall-clock seconds and the CPU
seconds (user + system of the stage's whole process tree, from ``resource.getrusage(RUSAGE_CHILDREN)``).
It is written atomically and only when the command exits with status 0; an interrupted or failed
stage leaves no marker, so the next run starts it again (the stage scripts themselves resume their
partial JSONL outputs and checkpoints).
"""
from __future__ import annotations

import json
import logging
import os
import re
import resource
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)

MARKER_DIR = ".stages"
# lines of a failed stage's log worth showing even when they are far from its end: a rank's traceback or
# C++ abort sits above the launcher's summary, which alone fills the last twenty lines
_ERROR_LINE = re.compile(r"Traceback|Error|Exception|terminate called|what\(\)|Aborted|Killed|Signal \d+")


@dataclass
class StageTiming:
    """What a finished stage's marker holds."""

    name: str
    command: list[str]
    wall_s: float
    cpu_s: float
    finished_at: float


def marker_path(run_dir: str | os.PathLike, name: str) -> Path:
    """``<run_dir>/.stages/<name>.json``; ``name`` must be a plain file name."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad stage name {name!r}: use letters, digits, '_' or '-'")
    return Path(run_dir) / MARKER_DIR / f"{name}.json"


def is_done(run_dir: str | os.PathLike, name: str) -> bool:
    """True when stage ``name`` of ``run_dir`` has a completion marker."""
    return marker_path(run_dir, name).is_file()


def read_timings(run_dir: str | os.PathLike) -> list[StageTiming]:
    """The markers of ``run_dir`` in the order the stages finished (unreadable markers are skipped)."""
    out = []
    folder = Path(run_dir) / MARKER_DIR
    if not folder.is_dir():
        return out
    for p in folder.glob("*.json"):
        try:
            out.append(StageTiming(**json.loads(p.read_text(encoding="utf-8"))))
        except (ValueError, TypeError) as e:
            logger.warning("%s: unreadable stage marker (%s); ignored", p, e)
    return sorted(out, key=lambda t: t.finished_at)


def _write_marker(path: Path, timing: StageTiming) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(timing), indent=1), encoding="utf-8")
    os.replace(tmp, path)


def run_stage(run_dir: str | os.PathLike, name: str, command: Sequence[str],
              env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
              log: str | os.PathLike | None = None) -> StageTiming | None:
    """Run ``command`` unless stage ``name`` is already done; return its timing, or None when skipped.

    ``env`` entries are added to the current environment. With ``log``, the command's output (its
    progress bars, library warnings) is appended to that file instead of the console, so that the
    console shows only the stages. Raises ``subprocess.CalledProcessError`` (no marker written) when the
    command fails.
    """
    marker = marker_path(run_dir, name)
    if marker.is_file():
        logger.info("stage %s: done before (%s), skipped", name, marker)
        return None
    full_env = dict(os.environ)
    full_env.update(env or {})
    logger.info("stage %s: %s%s", name, " ".join(command), f" (output: {log})" if log else "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    if log is None:
        subprocess.run(list(command), env=full_env, cwd=cwd, check=True)
    else:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            subprocess.run(list(command), env=full_env, cwd=cwd, check=True, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timing = StageTiming(name, list(command), round(wall, 2), round(cpu, 2), time.time())
    _write_marker(marker, timing)
    logger.info("stage %s: finished in %.1f s wall, %.1f s CPU (%d stages of this run done)", name, wall, cpu,
                len(list(marker.parent.glob("*.json"))))
    return timing


def failure_excerpt(log_text: str, tail: int = 20, max_error_lines: int = 30) -> str:
    """What to show of a failed stage's log: its error lines above the last ``tail`` lines, then those lines.

    The error lines (tracebacks, exceptions, C++ aborts) are the first ``max_error_lines`` matching lines
    before the tail, so that the reason a distributed rank died is shown even when the launcher's own
    summary fills the end of the log.
    """
    lines = log_text.splitlines()
    head, end = lines[:-tail] if tail else lines, lines[-tail:] if tail else []
    errors = [line for line in head if _ERROR_LINE.search(line)][:max_error_lines]
    if not errors:
        return "\n".join(end)
    return "\n".join(["[error lines above the end]", *errors, "[the end]", *end])
