"""Small typed records shared by environments, agents and the rollout engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    """One chat turn. ``role`` is ``user``, ``assistant`` or ``system``."""

    role: str
    content: str

    def to_dict(self, style: str = "role") -> dict[str, str]:
        if style == "sharegpt":
            return {"from": {"user": "human", "assistant": "gpt"}.get(self.role, self.role), "value": self.content}
        return {"role": self.role, "content": self.content}


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

    ``terminate_reason`` is one of ``success``, ``max_steps``, ``env_error``, ``generation_error``
    or None while the episode runs. Serialises to STeCa's per-task output (meta + conversations).
    """

    task_id: str
    game_file: str
    messages: list[Message] = field(default_factory=list)
    steps: int = 0
    reward: float = 0.0
    success: bool = False
    finished: bool = False
    terminate_reason: str | None = None
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
