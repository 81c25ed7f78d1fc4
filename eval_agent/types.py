"""Small typed records shared by environments, agents and the rollout engine, and the episode limits."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_STEPS = 40
"""Actions an episode may take (STeCa's evaluation and sampling limit); the one place this default lives."""


class EndReason(StrEnum):
    """Why an episode ended: ``EpisodeState.terminate_reason``, written as its plain string value.

    * ``success``: the engine reported ``won``.
    * ``max_steps``: the episode used its :data:`MAX_STEPS` (or the job's own limit) actions.
    * ``env_done``: the engine ended the game without a win.
    * ``env_error``: the environment raised (reset, prefix replay or step).
    * ``generation_error``: the policy failed for this row.
    * ``expert_exhausted``: the scripted expert ran out of actions before the episode ended.
    """

    SUCCESS = "success"
    MAX_STEPS = "max_steps"
    ENV_DONE = "env_done"
    ENV_ERROR = "env_error"
    GENERATION_ERROR = "generation_error"
    EXPERT_EXHAUSTED = "expert_exhausted"


FAILED_RUN = (EndReason.ENV_ERROR, EndReason.GENERATION_ERROR)
"""End reasons that mean the episode did not run to a real end (a stage retries or reports it)."""


@dataclass(frozen=True)
class Message:
    """One chat turn. ``role`` is ``user``, ``assistant`` or ``system``."""

    role: str
    content: str

    def to_dict(self, style: str = "role") -> dict[str, str]:
        if style == "sharegpt":
            return {"from": {"user": "human", "assistant": "gpt"}.get(self.role, self.role), "value": self.content}
        return {"role": self.role, "content": self.content}


_ACTION_RE = re.compile(r"Action:\s*(.*)")


def parse_action(text: str) -> str | None:
    """The action of a ``Thought: ...\\nAction: ...`` turn: the first line after the last ``Action:``.

    Returns None when the text has no ``Action:`` or the action is empty.
    """
    matches = _ACTION_RE.findall(text)
    if not matches:
        return None
    action = matches[-1].strip().split("\n")[0].strip()
    return action or None


_ACTION_REST_RE = re.compile(r"Action:\s?(.*)", re.DOTALL)
ACTION_PARSERS = ("released", "last_line")


def parse_action_as(text: str, mode: str = "released") -> str | None:
    """The action a model output sends to the environment.

    ``released`` (the released environments' parser): everything after the FIRST ``Action:`` (one
    optional space), later lines included, stripped. ``last_line``: :func:`parse_action`. The two
    differ only on outputs with text after the action line, which the released parser sends to the
    engine as part of the action (it then usually fails). None when there is no action.
    """
    if mode == "last_line":
        return parse_action(text)
    if mode != "released":
        raise ValueError(f"action parser must be one of {ACTION_PARSERS}, got {mode!r}")
    m = _ACTION_REST_RE.search(text)
    action = m.group(1).strip() if m else ""
    return action or None


@dataclass(frozen=True)
class StepOutcome:
    """What the engine said about one executed action.

    ``observation`` is the text as STeCa shows it to the agent (without the ``Observation: ``
    prefix, which the episode adds); ``valid`` is False when the engine rejected the action.
    """

    observation: str
    won: bool
    valid: bool = True
    done: bool = False


@dataclass
class EpisodeState:
    """The state of one episode: chat history, counters and outcome.

    ``terminate_reason`` is an :class:`EndReason` (stored as its string), or None while the episode
    runs. Serialises to STeCa's per-task output (meta + conversations).
    """

    task_id: str
    game_file: str
    messages: list[Message] = field(default_factory=list)
    steps: int = 0
    reward: float = 0.0
    success: bool = False
    finished: bool = False
    terminate_reason: EndReason | str | None = None
    n_prompt_messages: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_output(self) -> dict[str, Any]:
        return {
            "meta": {
                "id": self.task_id,
                "game_file": self.game_file,
                "steps": self.steps,
                "reward": self.reward,
                "success": self.success,
                "finished": self.finished,
                "terminate_reason": self.terminate_reason,
                "n_prompt_messages": self.n_prompt_messages,
                **self.extra,
            },
            "conversations": [m.to_dict() for m in self.messages],
        }

    @classmethod
    def from_output(cls, obj: dict[str, Any]) -> "EpisodeState":
        meta = dict(obj["meta"])
        known = {"id", "game_file", "steps", "reward", "success", "finished", "terminate_reason", "n_prompt_messages"}
        return cls(
            task_id=str(meta["id"]), game_file=meta.get("game_file", ""),
            messages=[Message(m["role"], m["content"]) for m in obj["conversations"]],
            steps=int(meta.get("steps", 0)), reward=float(meta.get("reward", 0.0)),
            success=bool(meta.get("success", False)), finished=bool(meta.get("finished", False)),
            terminate_reason=meta.get("terminate_reason"), n_prompt_messages=int(meta.get("n_prompt_messages", 0)),
            extra={k: v for k, v in meta.items() if k not in known},
        )
