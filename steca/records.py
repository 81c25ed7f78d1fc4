"""Typed records for every file the STeCa pipeline reads or writes, and their readers/writers.

Three record families, all in the released STeCa field names:

* SFT trajectories: ``{id, game_file, conversations}`` where ``conversations`` is a list of
  ``{"from": "human"|"gpt", "value": ...}`` or ``{"role": "user"|"assistant", "content": ...}``.
* Step records (exploration and Monte Carlo): ``{id, iteration, game_file, agent_step_output,
  agent_step_reward, agent_step_conversations, agent_conversations, agent_final_reward}``.
* Training pairs: ``{id, prompt, chosen, rejected, reward}`` (message lists; extra keys kept).

Files may be a JSON array or JSONL (one object per line). Every validation error names the
file, the record (index and id when known) and the field. Readers are lenient by default: a bad
record is reported in ``LoadResult.errors`` and the rest of the file is still read; pass
``strict=True`` to raise on the first problem instead.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from eval_agent.storage import to_json_obj, write_json_atomic, write_jsonl_atomic
from eval_agent.types import Message

logger = logging.getLogger(__name__)

T = TypeVar("T")

ROLE_FROM_SHAREGPT = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                      "system": "system"}
SHAREGPT_FROM_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}


class RecordError(ValueError):
    """A record failed validation. The message names the file, the record and the field."""

    def __init__(self, path: str | os.PathLike | None, index: int | None, field_name: str | None,
                 problem: str, record_id: str | None = None):
        self.path = str(path) if path is not None else "<memory>"
        self.index = index
        self.field_name = field_name
        self.problem = problem
        self.record_id = record_id
        where = self.path
        if index is not None:
            where += f", record {index}"
        if record_id is not None:
            where += f" (id={record_id!r})"
        if field_name is not None:
            where += f", field {field_name!r}"
        super().__init__(f"{where}: {problem}")


def parse_messages(value: Any, field_name: str = "conversations") -> list[Message]:
    """Parse a list of ``{role, content}`` or ``{from, value}`` dicts; raises ValueError naming the turn."""
    if not isinstance(value, list):
        raise _FieldProblem(field_name, f"expected a list of messages, got {type(value).__name__}")
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _FieldProblem(f"{field_name}[{i}]", f"expected an object, got {type(m).__name__}")
        if "role" in m:
            role, content = m.get("role"), m.get("content")
            key = "content"
        elif "from" in m:
            role, content = ROLE_FROM_SHAREGPT.get(str(m.get("from"))), m.get("value")
            key = "value"
        else:
            raise _FieldProblem(f"{field_name}[{i}]", "message needs 'role'/'content' or 'from'/'value'")
        if role not in SHAREGPT_FROM_ROLE:
            raise _FieldProblem(f"{field_name}[{i}]", f"unknown role {m.get('role', m.get('from'))!r}")
        if not isinstance(content, str):
            raise _FieldProblem(f"{field_name}[{i}].{key}", "message text must be a string")
        out.append(Message(role, content))
    return out


def messages_style(value: list[dict[str, Any]]) -> str:
    """``sharegpt`` when messages use ``from``/``value``, else ``role``."""
    return "sharegpt" if value and isinstance(value[0], dict) and "from" in value[0] else "role"


def dump_messages(messages: Iterable[Message], style: str = "role") -> list[dict[str, str]]:
    return [m.to_dict(style) for m in messages]


class _FieldProblem(ValueError):
    def __init__(self, field_name: str, problem: str):
        self.field_name = field_name
        self.problem = problem
        super().__init__(f"{field_name}: {problem}")


def _require(obj: dict[str, Any], key: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise _FieldProblem(key, "missing required field")
    value = obj[key]
    if isinstance(value, bool) and types in (int, float, (int, float)):
        raise _FieldProblem(key, f"expected a number, got {value!r}")
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise _FieldProblem(key, f"expected {names}, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- SFT trajectories
@dataclass
class SFTRecord:
    """One expert trajectory in STeCa's SFT format."""

    id: str
    game_file: str
    conversations: list[Message]
    style: str = "role"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "SFTRecord":
        rid = _require(obj, "id", (str, int))
        game_file = _require(obj, "game_file", str, optional=True) or ""
        conv_raw = _require(obj, "conversations", list)
        conv = parse_messages(conv_raw)
        if not any(m.role == "assistant" for m in conv):
            raise _FieldProblem("conversations", "no assistant turn")
        extra = {k: v for k, v in obj.items() if k not in ("id", "game_file", "conversations")}
        return cls(str(rid), game_file, conv, messages_style(conv_raw), extra)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "game_file": self.game_file,
                             "conversations": dump_messages(self.conversations, self.style)}
        d.update(self.extra)
        return d


# ---------------------------------------------------------------- step records
@dataclass
class StepRecord:
    """A scored step: the state after an expert prefix and one action, in STeCa's field names.

    ``agent_step_conversations`` is the chat up to and including the step's assistant turn
    (and its observation); ``agent_conversations`` the whole exploration episode from there
    (explored steps only); ``agent_step_reward`` the Monte Carlo step reward (mean rollout
    outcome, filled by the MC stage); ``agent_final_reward`` the exploration's outcome.
    ``mc_outcomes`` keeps the individual rollout outcomes behind ``agent_step_reward``.
    """

    id: str
    iteration: int
    game_file: str
    agent_step_output: str
    agent_step_conversations: list[Message]
    agent_conversations: list[Message] | None = None
    agent_final_reward: float | None = None
    agent_step_reward: float | None = None
    mc_outcomes: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("id", "iteration", "game_file", "agent_step_output", "agent_step_reward",
            "agent_step_conversations", "agent_conversations", "agent_final_reward", "mc_outcomes")

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.iteration)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "StepRecord":
        rid = _require(obj, "id", (str, int))
        iteration = _require(obj, "iteration", int)
        game_file = _require(obj, "game_file", str, optional=True) or ""
        out = _require(obj, "agent_step_output", str)
        step_conv = parse_messages(_require(obj, "agent_step_conversations", list), "agent_step_conversations")
        conv_raw = _require(obj, "agent_conversations", list, optional=True)
        conv = parse_messages(conv_raw, "agent_conversations") if conv_raw is not None else None
        final = _require(obj, "agent_final_reward", (int, float), optional=True)
        step_reward = _require(obj, "agent_step_reward", (int, float), optional=True)
        mc = _require(obj, "mc_outcomes", list, optional=True)
        if mc is not None and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in mc):
            raise _FieldProblem("mc_outcomes", "expected a list of numbers")
        extra = {k: v for k, v in obj.items() if k not in cls.KEYS}
        return cls(str(rid), iteration, game_file, out, step_conv, conv,
                   None if final is None else float(final),
                   None if step_reward is None else float(step_reward),
                   None if mc is None else [float(x) for x in mc], extra)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "iteration": self.iteration, "game_file": self.game_file,
            "agent_step_output": self.agent_step_output, "agent_step_reward": self.agent_step_reward,
            "agent_step_conversations": dump_messages(self.agent_step_conversations),
            "agent_conversations": None if self.agent_conversations is None else dump_messages(self.agent_conversations),
            "agent_final_reward": self.agent_final_reward,
        }
        if self.mc_outcomes is not None:
            d["mc_outcomes"] = self.mc_outcomes
        d.update(self.extra)
        return d


# ---------------------------------------------------------------- training pairs
@dataclass
class PairRecord:
    """A reinforced-training sample: ``prompt`` context, ``chosen``/``rejected`` continuations, weight."""

    id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    reward: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("id", "prompt", "chosen", "rejected", "reward")

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "PairRecord":
        rid = _require(obj, "id", (str, int))
        prompt = parse_messages(_require(obj, "prompt", list), "prompt")
        chosen = parse_messages(_require(obj, "chosen", list), "chosen")
        rejected = parse_messages(_require(obj, "rejected", list), "rejected")
        if not any(m.role == "assistant" for m in chosen):
            raise _FieldProblem("chosen", "no assistant turn to train on")
        reward = _require(obj, "reward", (int, float))
        extra = {k: v for k, v in obj.items() if k not in cls.KEYS}
        return cls(str(rid), prompt, chosen, rejected, float(reward), extra)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "prompt": dump_messages(self.prompt),
                             "chosen": dump_messages(self.chosen), "rejected": dump_messages(self.rejected),
                             "reward": self.reward}
        d.update(self.extra)
        return d


# ---------------------------------------------------------------- generic file I/O
@dataclass
class LoadResult(Generic[T]):
    """Records read from a file plus the errors of the records that could not be read."""

    records: list[T]
    errors: list[RecordError]

    def raise_if_errors(self) -> "LoadResult[T]":
        if self.errors:
            raise self.errors[0]
        return self


def _iter_raw(path: Path) -> Iterator[tuple[int, Any, RecordError | None]]:
    """Yield ``(index, object, error)`` for a JSON array or JSONL file."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            yield 0, None, RecordError(path, None, None, f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}")
            return
        for i, obj in enumerate(data):
            yield i, obj, None
        return
    index = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield index, None, RecordError(path, index, None, f"line {lineno} is not valid JSON: {e.msg}")
        else:
            yield index, obj, None
        index += 1


def load_records(path: str | os.PathLike, parse: Callable[[dict[str, Any]], T],
                 strict: bool = False) -> LoadResult[T]:
    """Read a JSON array or JSONL file of records with ``parse``; collect (or raise) errors."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    records: list[T] = []
    errors: list[RecordError] = []
    for index, obj, err in _iter_raw(p):
        if err is None:
            if not isinstance(obj, dict):
                err = RecordError(p, index, None, f"expected a JSON object, got {type(obj).__name__}")
            else:
                try:
                    records.append(parse(obj))
                except _FieldProblem as e:
                    rid = obj.get("id")
                    err = RecordError(p, index, e.field_name, e.problem, None if rid is None else str(rid))
        if err is not None:
            if strict:
                raise err
            logger.warning("%s", err)
            errors.append(err)
    return LoadResult(records, errors)


def load_sft(path: str | os.PathLike, strict: bool = False) -> LoadResult[SFTRecord]:
    return load_records(path, SFTRecord.from_dict, strict)


def load_steps(path: str | os.PathLike, strict: bool = False) -> LoadResult[StepRecord]:
    return load_records(path, StepRecord.from_dict, strict)


def load_pairs(path: str | os.PathLike, strict: bool = False) -> LoadResult[PairRecord]:
    return load_records(path, PairRecord.from_dict, strict)


def write_records(path: str | os.PathLike, records: Iterable[Any], fmt: str | None = None) -> Path:
    """Write records atomically as ``json`` (array, indent 1) or ``jsonl``; the suffix decides by default."""
    fmt = fmt or ("jsonl" if Path(path).suffix == ".jsonl" else "json")
    if fmt == "jsonl":
        return write_jsonl_atomic(path, records)
    return write_json_atomic(path, [to_json_obj(r) for r in records])
