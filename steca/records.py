"""Typed records for every file the STeCa pipeline reads or writes, and their readers/writers.

Three record families, all in the released STeCa field names:

* SFT trajectories: ``{id, game_file, conversations}`` where ``conversations`` is a list of
  ``{"from": "human"|"gpt", "value": ...}`` or ``{"role": "user"|"assistant", "content": ...}``.
* Step records (exploration and Monte Carlo): ``{id, iteration, game_file, agent_step_output,
  agent_step_reward, agent_step_conversations, agent_conversations, agent_final_reward}`` plus
  ``monte_carlo_step_reward`` and ``mc_outcomes`` once scored (see :class:`StepRecord`).
* Training pairs: ``{id, prompt, chosen, rejected, reward}`` (message lists; extra keys kept).

Files may be a JSON array or JSONL (one object per line), UTF-8 with or without a byte-order
mark. Every validation error names the file, the record (index and id when known) and the field.

What a reader refuses, and what it skips:

* the whole file is an error (:class:`RecordError` naming it) when it is empty, not UTF-8, not
  JSON, a JSON value that is neither an array nor JSONL (e.g. one object), or when none of its
  records can be read;
* a number outside its documented range (rewards and outcomes in [0, 1], weights finite and
  >= 0; NaN and infinities never) is an error unless ``skip_invalid`` is set, which drops such
  records and counts them;
* a record over :data:`MAX_RECORD_CHARS` characters of text is refused (it would be tokenised
  and copied into every step record of its trajectory);
* any other bad record is skipped and reported in ``LoadResult.errors`` (one summary warning
  with the count and the first few), unless ``strict=True`` makes the first one raise.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

from eval_agent.storage import UnreadableTextError, read_utf8, to_json_obj, write_json_atomic, write_jsonl_atomic
from eval_agent.types import Message

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The largest record the readers accept, in characters of text (sum over its strings). The authors'
# longest ALFWorld trajectory is about 20k characters; a bigger record is almost surely corrupt.
MAX_RECORD_CHARS = 2_000_000
# How many individual bad-record messages a reader logs before summarising the rest.
WARN_FIRST = 3

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


class InvalidNumberError(RecordError):
    """A reward, outcome or weight that is not finite or outside its documented range."""


class _FieldProblem(ValueError):
    def __init__(self, field_name: str, problem: str, invalid_number: bool = False):
        self.field_name = field_name
        self.problem = problem
        self.invalid_number = invalid_number
        super().__init__(f"{field_name}: {problem}")


def check_number(value: float, field_name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a float if it is finite and within ``[low, high]``, else a field problem naming it."""
    x = float(value)
    if not math.isfinite(x):
        raise _FieldProblem(field_name, f"{value!r} is not a finite number", invalid_number=True)
    if not low <= x <= high:
        raise _FieldProblem(field_name, f"{value!r} is outside its range [{low}, {high}]", invalid_number=True)
    return x


def _number(obj: dict[str, Any], key: str, low: float, high: float, optional: bool = False) -> float | None:
    value = _require(obj, key, (int, float), optional)
    return None if value is None else check_number(value, key, low, high)


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
def _outcome(obj: dict[str, Any], key: str) -> float | None:
    """An outcome-like number: a JSON number, or a JSON boolean read as 1.0 / 0.0 (the released writers
    store ``state.success`` and the environment's ``won`` as booleans); None when absent."""
    if key not in obj or obj[key] is None:
        return None
    value = obj[key]
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, (int, float)):
        raise _FieldProblem(key, f"expected a number or a boolean, got {type(value).__name__}")
    return check_number(value, key, 0.0, 1.0)


@dataclass
class StepRecord:
    """A scored step: the state after an expert prefix and one action, in STeCa's field names.

    ``agent_step_conversations`` is the chat up to and including the step's assistant turn
    (and its observation); ``agent_conversations`` the whole exploration episode from there
    (explored steps only); ``agent_final_reward`` the exploration's outcome (the expert's, for
    expert steps). Two rewards are kept apart, as in the released files:

    * ``agent_step_reward``: the environment's reward right after the step (1 if it won the task),
      the released sampling writers' meaning of this field;
    * ``mc_step_reward`` (file field ``monte_carlo_step_reward``, the released data-collection
      scripts' name): the Monte Carlo step reward, the mean outcome of the rollouts in
      ``mc_outcomes``. Files written before this split carried it under ``agent_step_reward``
      next to ``mc_outcomes``; such a record is read with that value as ``mc_step_reward``.

    Outcomes (``agent_final_reward``, both rewards, ``mc_outcomes``) may be JSON booleans (read as
    1/0). Records in the released writers' shapes (integer ids, extra ``time``, the 12-turn
    prompt with the in-context example) load unchanged.
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
    mc_step_reward: float | None = None

    KEYS = ("id", "iteration", "game_file", "agent_step_output", "agent_step_reward", "monte_carlo_step_reward",
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
        final = _outcome(obj, "agent_final_reward")
        step_reward = _outcome(obj, "agent_step_reward")
        mc_reward = _outcome(obj, "monte_carlo_step_reward")
        mc = _require(obj, "mc_outcomes", list, optional=True)
        outcomes = None
        if mc is not None:
            if not all(isinstance(x, (int, float)) for x in mc):
                raise _FieldProblem("mc_outcomes", "expected a list of numbers or booleans")
            outcomes = [check_number(float(x), f"mc_outcomes[{i}]", 0.0, 1.0) for i, x in enumerate(mc)]
            if mc_reward is None and "monte_carlo_step_reward" not in obj:  # written before the split
                mc_reward, step_reward = step_reward, None
        extra = {k: v for k, v in obj.items() if k not in cls.KEYS}
        return cls(str(rid), iteration, game_file, out, step_conv, conv, final, step_reward, outcomes, extra,
                   mc_reward)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "iteration": self.iteration, "game_file": self.game_file,
            "agent_step_output": self.agent_step_output, "agent_step_reward": self.agent_step_reward,
            "agent_step_conversations": dump_messages(self.agent_step_conversations),
            "agent_conversations": None if self.agent_conversations is None else dump_messages(self.agent_conversations),
            "agent_final_reward": self.agent_final_reward,
        }
        if self.mc_step_reward is not None:
            d["monte_carlo_step_reward"] = self.mc_step_reward
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
        reward = _number(obj, "reward", 0.0, math.inf)
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


def read_text_file(path: str | os.PathLike) -> str:
    """:func:`~eval_agent.storage.read_utf8` (plain UTF-8, no byte-order mark), its error as a :class:`RecordError`."""
    try:
        return read_utf8(path)
    except UnreadableTextError as e:
        raise RecordError(e.path, None, None, e.problem) from None


def _iter_raw(path: Path) -> Iterator[tuple[int, Any, RecordError | None]]:
    """Yield ``(index, object, error)`` for a JSON array or JSONL file; file-level problems raise."""
    text = read_text_file(path)
    stripped = text.lstrip()
    if not stripped:
        raise RecordError(path, None, None, "the file is empty" if not text else "the file holds only whitespace")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(path, None, None, f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}; "
                              "a truncated or unfinished file?") from None
        if not isinstance(data, list):
            raise RecordError(path, None, None, f"expected a JSON array, got {type(data).__name__}")
        for i, obj in enumerate(data):
            yield i, obj, None
        return
    if stripped.startswith("{") and "\n" in stripped.rstrip():
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            keys = ", ".join(list(whole)[:5])
            raise RecordError(path, None, None, f"the file is one JSON object (keys: {keys}), expected a JSON array "
                              "of records or JSONL (one record per line)")
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


def text_size(obj: Any) -> int:
    """Characters of text in a JSON value (its strings and keys, recursively)."""
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return sum(len(str(k)) + text_size(v) for k, v in obj.items())
    if isinstance(obj, list):
        return sum(text_size(v) for v in obj)
    return 0


def log_summary(what: str, errors: Sequence[Exception], total: int | None = None) -> None:
    """One warning for many bad records: the count and the first :data:`WARN_FIRST` messages."""
    if not errors:
        return
    first = "; ".join(str(e) for e in errors[:WARN_FIRST])
    more = f" (and {len(errors) - WARN_FIRST} more)" if len(errors) > WARN_FIRST else ""
    of = f" of {total}" if total is not None else ""
    logger.warning("%s: %d%s record(s) skipped: %s%s", what, len(errors), of, first, more)


def load_records(path: str | os.PathLike, parse: Callable[[dict[str, Any]], T],
                 strict: bool = False, skip_invalid: bool = False) -> LoadResult[T]:
    """Read a JSON array or JSONL file of records with ``parse``; collect (or raise) errors.

    Raises :class:`RecordError` for a file that is unreadable as a whole, that yields no usable
    record while it has bad ones, and (unless ``skip_invalid``) for the first record with an
    invalid number (see the module docstring); ``strict`` raises on any bad record.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    records: list[T] = []
    errors: list[RecordError] = []
    n_invalid_numbers = 0
    for index, obj, err in _iter_raw(p):
        if err is None:
            if not isinstance(obj, dict):
                err = RecordError(p, index, None, f"expected a JSON object, got {type(obj).__name__}")
            elif (size := text_size(obj)) > MAX_RECORD_CHARS:
                rid = obj.get("id")
                err = RecordError(p, index, None, f"the record holds {size} characters of text, over the limit of "
                                  f"{MAX_RECORD_CHARS} (steca.records.MAX_RECORD_CHARS)",
                                  None if rid is None else str(rid))
            else:
                try:
                    records.append(parse(obj))
                except _FieldProblem as e:
                    rid = obj.get("id")
                    cls = InvalidNumberError if e.invalid_number else RecordError
                    err = cls(p, index, e.field_name, e.problem, None if rid is None else str(rid))
        if err is not None:
            if isinstance(err, InvalidNumberError):
                if not skip_invalid:
                    raise InvalidNumberError(err.path, err.index, err.field_name,
                                             err.problem + " (--skip_invalid drops such records)", err.record_id)
                n_invalid_numbers += 1
            if strict:
                raise err
            errors.append(err)
    log_summary(str(p), errors, len(records) + len(errors))
    if n_invalid_numbers:
        logger.warning("%s: dropped %d record(s) with an invalid number (--skip_invalid)", p, n_invalid_numbers)
    if errors and not records:
        raise RecordError(p, None, None, f"no usable record: all {len(errors)} record(s) are bad; first: {errors[0]}")
    return LoadResult(records, errors)


def load_sft(path: str | os.PathLike, strict: bool = False, skip_invalid: bool = False) -> LoadResult[SFTRecord]:
    return load_records(path, SFTRecord.from_dict, strict, skip_invalid)


def load_steps(path: str | os.PathLike, strict: bool = False, skip_invalid: bool = False) -> LoadResult[StepRecord]:
    return load_records(path, StepRecord.from_dict, strict, skip_invalid)


def load_pairs(path: str | os.PathLike, strict: bool = False, skip_invalid: bool = False) -> LoadResult[PairRecord]:
    return load_records(path, PairRecord.from_dict, strict, skip_invalid)


def nonempty(result: LoadResult[T], path: str | os.PathLike, what: str = "record") -> list[T]:
    """The records of ``result``; a :class:`RecordError` naming ``path`` when there are none."""
    if not result.records:
        raise RecordError(path, None, None, f"no {what} in the file (an empty JSON array): nothing to do")
    return result.records


def write_records(path: str | os.PathLike, records: Iterable[Any], fmt: str | None = None) -> Path:
    """Write records atomically as ``json`` (array, indent 1) or ``jsonl``; the suffix decides by default."""
    fmt = fmt or ("jsonl" if Path(path).suffix == ".jsonl" else "json")
    if fmt == "jsonl":
        return write_jsonl_atomic(path, records)
    return write_json_atomic(path, [to_json_obj(r) for r in records])
