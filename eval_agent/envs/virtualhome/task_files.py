"""VirtualHome tasks in STeCa's jsonl format: loading with clear errors, the goal and reachability.

A line of ``vh_seen_test.jsonl`` (see ``shared/data/virtualhome/README.md``) holds a task title and
description, the ground-truth program (``new_program_lines``, ``[ACTION] <name> (id) ...``), its
English steps (``action_list``), the scene (``TrimmedTestScene{k}_graph/`` inside ``path``; any ``<Name><k>_graph/`` works), the
program's object ids (``object_id_dict``) and the goal test (``revised_graph``). A bad line is
reported with the file, the line number, the task id and the field, and skipped; the rest of the
file still loads.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval_agent.storage import read_utf8

logger = logging.getLogger(__name__)

_SCENE_RE = re.compile(r"([A-Za-z]+\d+)_graph/")
_PROGRAM_RE = re.compile(r"^\[(\w+)\]((?:\s*<[^>]+>\s*\(\d+\))*)\s*$")
_PARAM_RE = re.compile(r"<([^>]+)>\s*\((\d+)\)")
RELATIONS = ("ON", "INSIDE", "BETWEEN", "CLOSE", "FACING", "HOLDS_RH", "HOLDS_LH", "SITTING")
FILLER_MIN_ID = 2000

Edge = tuple[int, str, int]


class TaskFileError(ValueError):
    """A task line failed validation; the message names the file, the line, the task id and the field."""

    def __init__(self, path: str | Path, line: int, field_name: str | None, problem: str,
                 task_id: str | None = None):
        self.path, self.line, self.field_name, self.problem, self.task_id = str(path), line, field_name, problem, task_id
        where = f"{path}, line {line}"
        if task_id is not None:
            where += f" (id={task_id!r})"
        if field_name is not None:
            where += f", field {field_name!r}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class ProgramLine:
    """One script line: ``action`` (upper case) and ``(name, node id)`` parameters."""

    action: str
    params: tuple[tuple[str, int], ...]

    def __str__(self) -> str:
        return f"[{self.action}]" + "".join(f" <{n}> ({i})" for n, i in self.params)


@dataclass(frozen=True)
class Goal:
    """STeCa's goal test: ``nodes`` must equal the current nodes (lists compared as sets),
    ``absent`` edges must not hold and ``present`` edges must hold."""

    nodes: tuple[dict[str, Any], ...]
    absent: tuple[Edge, ...]
    present: tuple[Edge, ...]

    def node_ids(self) -> set[int]:
        return {int(n["id"]) for n in self.nodes}


@dataclass(frozen=True)
class VHTask:
    """One VirtualHome task. ``task_id`` is unique within a file (``id``, or ``id_k`` for the k-th repeat)."""

    task_id: str
    raw_id: str
    line: int
    title: str
    description: str
    program: tuple[ProgramLine, ...]
    action_list: tuple[str, ...]
    scene: str
    path: str
    object_ids: dict[str, int]
    goal: Goal
    observations: tuple[str, ...] = ()
    init_graph_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def instruction(self) -> str:
        """The goal text shown to the agent: ``<title>. <description>``."""
        desc = self.description.strip()
        title = self.title.strip().rstrip(".")
        if desc and not desc.endswith("."):
            desc += "."
        return f"{title}. {desc}".strip()


def parse_program_line(text: str) -> ProgramLine:
    """Parse ``[ACTION] <name> (id) <name> (id)``; raises ValueError on anything else."""
    m = _PROGRAM_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a script line: {text!r}")
    params = tuple((n.strip().lower().replace(" ", "_"), int(i)) for n, i in _PARAM_RE.findall(m.group(2)))
    return ProgramLine(m.group(1).upper(), params)


def _edges(value: Any, field_name: str) -> tuple[Edge, ...]:
    if not isinstance(value, list):
        raise _Bad(field_name, f"expected a list, got {type(value).__name__}")
    out = []
    for i, e in enumerate(value):
        try:
            rel = str(e["relation_type"]).upper()
            edge = (int(e["from_id"]), rel, int(e["to_id"]))
        except (KeyError, TypeError, ValueError):
            raise _Bad(f"{field_name}[{i}]", "expected {from_id, relation_type, to_id}") from None
        if rel not in RELATIONS:
            raise _Bad(f"{field_name}[{i}].relation_type", f"unknown relation {rel!r}")
        out.append(edge)
    return tuple(out)


class _Bad(ValueError):
    def __init__(self, field_name: str, problem: str):
        self.field_name, self.problem = field_name, problem
        super().__init__(f"{field_name}: {problem}")


def _need(obj: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise _Bad(key, "missing required field")
    if not isinstance(obj[key], typ):
        raise _Bad(key, f"expected {getattr(typ, '__name__', typ)}, got {type(obj[key]).__name__}")
    return obj[key]


def task_from_dict(obj: dict[str, Any], task_id: str, line: int) -> VHTask:
    """Validate one decoded line and build its :class:`VHTask`; raises ``_Bad`` naming the field."""
    title = _need(obj, "task", str)
    description = obj.get("description", "") or ""
    if not isinstance(description, str):
        raise _Bad("description", "expected str")
    lines = _need(obj, "new_program_lines", list)
    program = []
    for i, text in enumerate(lines):
        if not isinstance(text, str):
            raise _Bad(f"new_program_lines[{i}]", "expected a string")
        try:
            program.append(parse_program_line(text))
        except ValueError as e:
            raise _Bad(f"new_program_lines[{i}]", str(e)) from None
    actions = obj.get("action_list") or []
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise _Bad("action_list", "expected a list of strings")
    path = _need(obj, "path", str)
    m = _SCENE_RE.search(path)
    if not m:
        raise _Bad("path", f"no scene folder '<Scene><k>_graph/' (e.g. TrimmedTestScene2_graph/) in {path!r}")
    oid = _need(obj, "object_id_dict", dict)
    try:
        object_ids = {str(k).lower().replace(" ", "_"): int(v) for k, v in oid.items()}
    except (TypeError, ValueError):
        raise _Bad("object_id_dict", "expected a mapping from names to integer node ids") from None
    rg = _need(obj, "revised_graph", dict)
    nodes = rg.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, dict) and "id" in n for n in nodes):
        raise _Bad("revised_graph.nodes", "expected a list of node objects with an 'id'")
    goal = Goal(tuple(nodes), _edges(rg.get("revised_nodes", []), "revised_graph.revised_nodes"),
                _edges(rg.get("revised_add_edges", []), "revised_graph.revised_add_edges"))
    obs = obj.get("ObserANDState") or []
    key_match = re.search(r"([A-Za-z]+\d+_graph/.+)\.txt$", path)
    return VHTask(task_id=task_id, raw_id=str(obj.get("id", task_id)), line=line, title=title,
                  description=description, program=tuple(program), action_list=tuple(actions),
                  scene=m.group(1), path=path, object_ids=object_ids, goal=goal,
                  observations=tuple(o for o in obs if isinstance(o, str)),
                  init_graph_key=key_match.group(1) if key_match else "")


def load_tasks(path: str | Path, known_scenes: set[str] | None = None) -> tuple[list[VHTask], list[TaskFileError]]:
    """Read a STeCa VirtualHome jsonl file. Returns the good tasks and one error per bad line.

    Lines that are not JSON, miss a field, or name a scene outside ``known_scenes`` are reported
    (and logged) and skipped. Ids are made unique in file order: the k-th repeat of ``id`` becomes
    ``id_k``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such task file")
    tasks: list[VHTask] = []
    errors: list[TaskFileError] = []
    seen: dict[str, int] = {}
    for lineno, text in enumerate(read_utf8(p).splitlines(), start=1):
        if not text.strip():
            continue
        raw_id = None
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise _Bad("<line>", f"expected a JSON object, got {type(obj).__name__}")
            raw_id = str(obj.get("id", f"line{lineno}"))
            k = seen.get(raw_id, 0)
            seen[raw_id] = k + 1
            task = task_from_dict(obj, raw_id if k == 0 else f"{raw_id}_{k}", lineno)
            if known_scenes is not None and task.scene not in known_scenes:
                raise _Bad("path", f"unknown scene {task.scene} (known: {sorted(known_scenes)})")
        except json.JSONDecodeError as e:
            err = TaskFileError(p, lineno, None, f"not valid JSON: {e.msg}")
        except _Bad as e:
            err = TaskFileError(p, lineno, e.field_name, e.problem, raw_id)
        else:
            tasks.append(task)
            continue
        logger.warning("%s", err)
        errors.append(err)
    return tasks, errors
