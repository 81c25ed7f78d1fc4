"""The narrow interface of every policy backend: batches of chat histories in, assistant texts out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

from eval_agent.types import Message


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


class Policy(ABC):
    """A chat model (or a scripted agent) that answers many conversations at once."""

    @abstractmethod
    def generate(self, batch: Sequence[Sequence[Message]], params: SamplingParams) -> list[str]:
        """One assistant reply per conversation, in order."""

    def close(self) -> None:
        """Release the model, servers or connections."""
