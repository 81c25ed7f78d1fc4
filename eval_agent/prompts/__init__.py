"""Prompts: the instruction and one in-context example per environment, built by ONE function
(:func:`prompt_for`) for evaluation and for every sampling stage (exploration, Monte Carlo).

Layout ``turns`` (the released code's, the default)::

    user:      <instruction>
    assistant: OK
    user:      <example: first observation>        \
    assistant: <example: Thought/Action>            |  the in-context example as chat turns,
    ...                                             |  ending with its last assistant turn
    assistant: <example: last Thought/Action>      /
    user:      <first observation, goal included>   <- the engine adds this one
    assistant: Thought: ...\nAction: ...
    user:      Observation: ...

With ``icl_num=0`` the prompt is ``[instruction, "OK"]``, the SFT data's own layout. Layout
``inline`` (an option, not the released one) puts the example inside the instruction turn as a
transcript between ``<example>`` tags, so the turn sequence stays ``[instruction, "OK", ...]``.

Instructions, in order: the first user turn of an SFT file (``sft_file``; the authors'
``alfworld_sft.json`` carries theirs); else the authors' instruction file found in the data root
(``<env>_inst.txt``, see :func:`authors_file`); else our own ``<env>_instruction.txt``. Example:
the authors' in-context example file in the data root (``<env>_icl.json``) when present, read at
run time and never copied into this repository; else our own ``<env>_example.json`` (observations
produced by the real engine, thoughts written for this project).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from eval_agent.storage import read_utf8
from eval_agent.types import Message

PROMPT_DIR = Path(__file__).resolve().parent
ACK = "OK"
EXAMPLE_HEADER = "Here is an example of a complete episode:"
LAYOUTS = ("turns", "inline")
# where the authors' prompt files may sit inside a data root (their repository's folder names)
AUTHORS_SUBDIRS = (".", "prompt", "instructions", "icl_examples", "prompt/instructions", "prompt/icl_examples",
                   "eval_agent/prompt/instructions", "eval_agent/prompt/icl_examples")
AUTHORS_NAMES = {"instruction": "{env}_inst.txt", "example": "{env}_icl.json"}


def authors_file(data_root: str | os.PathLike | None, env_name: str, kind: str) -> Path | None:
    """The authors' ``<env>_inst.txt`` (``kind="instruction"``) or ``<env>_icl.json`` (``"example"``) in
    ``data_root`` or one of :data:`AUTHORS_SUBDIRS` below it (also beside it), or None."""
    if data_root is None:
        return None
    name = AUTHORS_NAMES[kind].format(env=env_name)
    root = Path(data_root)
    for base in (root, root.parent):
        for sub in AUTHORS_SUBDIRS:
            path = base / sub / name
            if path.is_file():
                return path
    return None


def example_from_file(path: str | os.PathLike) -> list[Message]:
    """The first in-context example of an example file: a list of examples (each a list of
    ``{role, content}`` or ``{from, value}`` turns), one such list, or ``{"conversation": [...]}``."""
    p = Path(path)
    try:
        obj: Any = json.loads(read_utf8(p))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON (line {e.lineno}): {e.msg}") from e
    if isinstance(obj, dict):
        obj = obj.get("conversation")
    if isinstance(obj, list) and obj and isinstance(obj[0], list):
        obj = obj[0]
    if not isinstance(obj, list) or not obj:
        raise ValueError(f"{p}: expected a list of example conversations (lists of turns)")
    out = []
    for i, m in enumerate(obj):
        role = m.get("role", {"human": "user", "gpt": "assistant"}.get(m.get("from", ""))) if isinstance(m, dict) else None
        content = m.get("content", m.get("value")) if isinstance(m, dict) else None
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise ValueError(f"{p}, example 0, turn {i}: expected a user/assistant turn with text")
        out.append(Message(role, content))
    return out


def builtin_instruction(env_name: str) -> str:
    """Our own instruction text for ``env_name`` (``alfworld`` or ``virtualhome``)."""
    path = PROMPT_DIR / f"{env_name}_instruction.txt"
    if not path.exists():
        raise FileNotFoundError(f"no built-in instruction for environment {env_name!r} ({path})")
    return path.read_text(encoding="utf-8").strip()


def builtin_example(env_name: str) -> list[Message]:
    """Our own in-context example for ``env_name``: first observation, then assistant/user turns."""
    path = PROMPT_DIR / f"{env_name}_example.json"
    if not path.exists():
        raise FileNotFoundError(f"no built-in example for environment {env_name!r} ({path})")
    return example_from_file(path)


def instruction_from_sft(path: str | os.PathLike) -> str:
    """The instruction of an SFT file: the first user turn of its first record (JSON array or JSONL)."""
    p = Path(path)
    text = read_utf8(p)
    try:
        first: Any = json.loads(text)[0] if text.lstrip().startswith("[") else json.loads(text.splitlines()[0])
    except (json.JSONDecodeError, IndexError) as e:
        raise ValueError(f"{p}: cannot read the first record to take the instruction from: {e}") from e
    conv = first.get("conversations") if isinstance(first, dict) else None
    if not conv or not isinstance(conv[0], dict):
        raise ValueError(f"{p}, record 0, field 'conversations': missing or empty")
    turn = conv[0]
    role = turn.get("role", {"human": "user"}.get(turn.get("from", ""), turn.get("from")))
    content = turn.get("content", turn.get("value"))
    if role != "user" or not isinstance(content, str):
        raise ValueError(f"{p}, record 0, field 'conversations[0]': expected a user turn with text")
    return content


def render_example(example: Sequence[Message]) -> str:
    """A transcript of an example episode: observations as user lines, thoughts/actions as agent lines."""
    return "\n".join(m.content.strip() for m in example)


def build_prompt(instruction: str, example: Sequence[Message] | None = None, layout: str = "turns") -> list[Message]:
    """The turns before the first observation (see the module docstring for the two layouts)."""
    if layout not in LAYOUTS:
        raise ValueError(f"prompt layout must be one of {LAYOUTS}, got {layout!r}")
    if not example:
        return [Message("user", instruction), Message("assistant", ACK)]
    if layout == "inline":
        text = f"{instruction.rstrip()}\n\n{EXAMPLE_HEADER}\n<example>\n{render_example(example)}\n</example>"
        return [Message("user", text), Message("assistant", ACK)]
    turns = list(example)
    while turns and turns[-1].role == "user":  # the example ends with its last action; the task's observation follows
        turns.pop()
    return [Message("user", instruction), Message("assistant", ACK)] + turns


def prompt_for(env_name: str, sft_file: str | os.PathLike | None = None, icl_num: int = 1,
               data_root: str | os.PathLike | None = None, layout: str = "turns",
               instruction: str | None = None) -> list[Message]:
    """The prompt of evaluation AND of the sampling stages for ``env_name``.

    Instruction: ``instruction`` when given, else ``sft_file``'s first turn, else the authors'
    instruction file in ``data_root``, else ours. Example (when ``icl_num >= 1``; one ships per environment): the authors' example file in
    ``data_root``, else ours.
    """
    if icl_num < 0:
        raise ValueError("icl_num must be >= 0")
    inst_file = authors_file(data_root, env_name, "instruction")
    if instruction is not None:
        pass
    elif sft_file:
        instruction = instruction_from_sft(sft_file)
    elif inst_file is not None:
        instruction = inst_file.read_text(encoding="utf-8").strip()
    else:
        instruction = builtin_instruction(env_name)
    example = None
    if icl_num >= 1:
        ex_file = authors_file(data_root, env_name, "example")
        example = example_from_file(ex_file) if ex_file is not None else builtin_example(env_name)
    return build_prompt(instruction, example, layout)


__all__ = ["build_prompt", "prompt_for", "instruction_from_sft", "builtin_instruction", "builtin_example",
           "authors_file", "example_from_file", "render_example", "ACK", "LAYOUTS"]
