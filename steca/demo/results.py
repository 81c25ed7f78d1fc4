"""The demo's results as data: the rows (methods), the columns (environment x split) and the loader of a
run folder's evaluations. :mod:`steca.demo.comparison` computes intervals and paired tests from them and
:mod:`steca.demo.report` writes ``results.md``, the seeds report and the plots.

A run folder (``runs/demo_seed0``) holds, per environment, ``<eval dir>/<row>/<split>/summary.json``
(written by ``python -m eval_agent.main``: ``n_tasks``, ``n_success``, ``success_rate``, optionally
``success_by_type``) next to one JSON file per game (``meta.id``, ``meta.success``): ALFWorld under ``eval/``
(splits ``dev`` and ``test``), VirtualHome under ``vh/eval/`` (``seen`` and ``unseen``). Every folder under
an eval dir is a row: the known ones (:data:`KNOWN_ROWS`) in the paper's order, any other after them.
Everything here only reads those files; a column whose summaries are missing shows ``—``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from eval_agent.envs.alfworld_env import ALFWORLD_TASK_TYPES, alfworld_task_type


MISSING = "—"  # a cell whose evaluation summary does not exist


@dataclass(frozen=True)
class MethodRow:
    """One row of the table: the folder its evaluations live in (``<eval dir>/<folder>/<split>/``), its
    label, and its kind: ``base`` (the SFT agent every method starts from), ``baseline`` (the rows a
    method must beat; the best of them is every method's second comparison), ``method`` or ``ablation``."""

    folder: str
    label: str
    kind: str = "ablation"


# The rows the report knows, in the paper's order; an evaluation folder not listed here still gets a row
# (after these, labelled with its folder name, compared like an ablation).
KNOWN_ROWS: tuple[MethodRow, ...] = (
    MethodRow("sft", "SFT (base agent)", "base"),
    MethodRow("sft_more", "SFT + same extra steps on expert data (fair baseline)", "baseline"),
    MethodRow("rft", "RFT (SFT on expert + successful explorations)", "baseline"),
    MethodRow("eto", "ETO (trajectory DPO, 1 iteration)", "baseline"),
    MethodRow("ipr", "IPR (outcome DPO + step DPO + SFT, 1 iteration)", "baseline"),
    MethodRow("steca", "STeCa", "method"),  # the report names who wrote its reflections
    MethodRow("steca_no_dc", "STeCa w/o D_c", "ablation"),
    MethodRow("steca_no_weighting", "STeCa w/o reward weighting", "ablation"),
    MethodRow("steca_dpo", "STeCa pairs + DPO (in place of the reinforced objective)", "ablation"),
    MethodRow("steca_first", "STeCa, first deviated step only (paper rule)", "ablation"),
)
BASE_ROW = "sft"
MAIN_ROW = "steca"  # the method whose discordance with the base row sizes the paired sample-size estimate

@dataclass(frozen=True)
class Environment:
    """Where one environment's outputs live in a run folder."""

    name: str
    root: str          # folder under the run dir ("" for ALFWorld, "vh" for VirtualHome)
    stage_prefix: str  # prefix of its stage names ("": the stages no other environment claims)


@dataclass(frozen=True)
class Column:
    """One column of the table: an environment's split."""

    key: str
    env: Environment
    split: str  # split folder under <eval dir>/<method>/
    label: str

    def summary_path(self, run_dir: str | os.PathLike, method: str) -> Path:
        return Path(run_dir) / self.env.root / "eval" / method / self.split / "summary.json"


ALFWORLD = Environment("ALFWorld", "", "")
VIRTUALHOME = Environment("VirtualHome", "vh", "vh_")
ENVIRONMENTS: tuple[Environment, ...] = (ALFWORLD, VIRTUALHOME)
# the paper's layout: seen and unseen of each environment
COLUMNS: tuple[Column, ...] = (
    Column("alfworld_seen", ALFWORLD, "dev", "ALFWorld seen"),
    Column("alfworld_unseen", ALFWORLD, "test", "ALFWorld unseen"),
    Column("vh_seen", VIRTUALHOME, "seen", "VirtualHome seen"),
    Column("vh_unseen", VIRTUALHOME, "unseen", "VirtualHome unseen"),
)


def environment_of(stage: str) -> Environment:
    """The environment a stage belongs to, from its name (``vh_*``: VirtualHome; the rest: ALFWorld)."""
    for env in ENVIRONMENTS:
        if env.stage_prefix and stage.startswith(env.stage_prefix):
            return env
    return ALFWORLD


@dataclass(frozen=True)
class SplitResult:
    """Success on one split: ``rate = n_success / n_tasks``; ``outcomes`` the win of each game (from the
    per-game files next to the summary; None when there are none), ``per_type`` ``{type: (wins, games)}``."""

    n_tasks: int
    n_success: int
    outcomes: Mapping[str, bool] | None = None
    per_type: Mapping[str, tuple[int, int]] | None = None

    @property
    def rate(self) -> float:
        return self.n_success / self.n_tasks if self.n_tasks else 0.0


RunResults = Mapping[str, Mapping[str, SplitResult]]  # {row folder: {column key: SplitResult}}

def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a JSON object")
    return obj


def load_outcomes(split_dir: Path) -> dict[str, bool] | None:
    """``{game id: success}`` from the per-game files (``meta.id``, ``meta.success``) of an evaluation
    folder, or None when it has none. A malformed file raises ``ValueError`` naming it and the field."""
    out: dict[str, bool] = {}
    for path in sorted(split_dir.glob("*.json")):
        if path.name.startswith("summary"):
            continue
        meta = _read_json(path).get("meta")
        if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
            raise ValueError(f"{path}: field 'meta.id' missing or not a string")
        out[meta["id"]] = bool(meta.get("success"))
    return out or None


def _per_type(summary: Mapping, outcomes: Mapping[str, bool] | None, path: Path) -> dict[str, tuple[int, int]] | None:
    """Per-type ``(wins, games)``: the summary's ``success_by_type`` (``{type: {n_tasks, n_success, ...}}``,
    written by ``eval_agent.main``) when it has one, else counted from the games whose id names an ALFWorld
    task type (:func:`eval_agent.envs.alfworld_env.alfworld_task_type`; older runs)."""
    given = summary.get("success_by_type")
    if isinstance(given, dict) and given:
        out = {}
        for name, v in given.items():
            if not (isinstance(v, dict) and isinstance(v.get("n_tasks"), int) and isinstance(v.get("n_success"), int)):
                raise ValueError(f"{path}: field 'success_by_type.{name}' needs integer n_tasks and n_success")
            out[str(name)] = (v["n_success"], v["n_tasks"])
        return out
    if not outcomes:
        return None
    counts: dict[str, list[int]] = {}
    for game, won in outcomes.items():
        t = alfworld_task_type(game)
        if t is not None:
            c = counts.setdefault(t, [0, 0])
            c[0] += int(won)
            c[1] += 1
    order = list(ALFWORLD_TASK_TYPES.values())
    return {t: (counts[t][0], counts[t][1]) for t in order if t in counts} or None


def eval_folders(run_dir: str | os.PathLike) -> list[str]:
    """The row folders that have an evaluation summary in any column of a run."""
    found = set()
    for env in ENVIRONMENTS:
        base = Path(run_dir) / env.root / "eval"
        if base.is_dir():
            found.update(p.parent.parent.name for p in base.glob("*/*/summary.json"))
    return sorted(found)


def method_rows(folders: Sequence[str]) -> list[MethodRow]:
    """The rows for these folders: the known ones in :data:`KNOWN_ROWS`' order, then the others by name."""
    known = {r.folder for r in KNOWN_ROWS}
    return [r for r in KNOWN_ROWS if r.folder in folders] + [MethodRow(f, f) for f in sorted(set(folders) - known)]


def load_results(run_dir: str | os.PathLike) -> dict[str, dict[str, SplitResult]]:
    """``{row folder: {column key: SplitResult}}`` from the evaluation summaries and per-game files of every
    column.

    Missing summaries are left out (the table shows ``—``); a malformed one raises ``ValueError``
    naming the file and the field.
    """
    out: dict[str, dict[str, SplitResult]] = {}
    for folder in eval_folders(run_dir):
        for col in COLUMNS:
            path = col.summary_path(run_dir, folder)
            if not path.is_file():
                continue
            obj = _read_json(path)
            for key in ("n_tasks", "n_success"):
                if not isinstance(obj.get(key), int):
                    raise ValueError(f"{path}: field {key!r} missing or not an integer")
            outcomes = load_outcomes(path.parent)
            out.setdefault(folder, {})[col.key] = SplitResult(obj["n_tasks"], obj["n_success"], outcomes,
                                                              _per_type(obj, outcomes, path))
    return out
