"""Prompts: the instruction and one in-context example per environment, in the SFT layout.

Layout (identical for SFT data, sampling and evaluation)::

    user:      <instruction>[ + in-context example]
    assistant: OK
    user:      <first observation, goal included>
    assistant: Thought: ...\\nAction: ...
    user:      Observation: ...
    ...

The in-context example goes **inside the instruction turn**, after the instruction, as a
transcript between ``<example>`` tags (see :func:`render_example`). The turn sequence therefore
stays exactly the SFT data's ``[instruction, "OK", first observation, ...]``; with
``icl_num=0`` the first turn is the bare instruction, byte-identical to the SFT data's when the
instruction comes from the data.

Instructions: ALFWorld data that carries the authors' instruction (the first user turn of an SFT
file such as ``alfworld_sft.json``) is used as is (:func:`instruction_from_sft`); otherwise (for
generated games) our own ``<env>_instruction.txt``. Examples: our own ``<env>_example.json``
(observations produced by the real engine, thoughts written for this project).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from eval_agent.types import Message

PROMPT_DIR = Path(__file__).resolve().parent
ACK = "OK"
EXAMPLE_HEADER = "Here is an example of a complete episode:"


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
    obj = json.loads(path.read_text(encoding="utf-8"))
    return [Message(m["role"], m["content"]) for m in obj["conversation"]]


def instruction_from_sft(path: str | os.PathLike) -> str:
    """The instruction of an SFT file: the first user turn of its first record (JSON array or JSONL)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
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


def build_prompt(instruction: str, example: Sequence[Message] | None = None) -> list[Message]:
    """The turns before the first observation: ``[user: instruction (+ example), assistant: OK]``."""
    text = instruction
    if example:
        text = f"{instruction.rstrip()}\n\n{EXAMPLE_HEADER}\n<example>\n{render_example(example)}\n</example>"
    return [Message("user", text), Message("assistant", ACK)]


def prompt_for(env_name: str, sft_file: str | os.PathLike | None = None, icl_num: int = 1) -> list[Message]:
    """The evaluation prompt for ``env_name``: the data's instruction when ``sft_file`` is given (else
    ours), plus our in-context example when ``icl_num >= 1`` (only one example ships per environment)."""
    if icl_num < 0:
        raise ValueError("icl_num must be >= 0")
    instruction = instruction_from_sft(sft_file) if sft_file else builtin_instruction(env_name)
    example = builtin_example(env_name) if icl_num >= 1 else None
    return build_prompt(instruction, example)


__all__ = ["build_prompt", "prompt_for", "instruction_from_sft", "builtin_instruction", "builtin_example",
           "render_example", "ACK"]
