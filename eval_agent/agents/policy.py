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
    """A chat model (or a scripted agent) that answers many conversations at once.

    The contract every backend keeps, and the rollout engine relies on:

    * ``params`` is one :class:`SamplingParams` for every row, or, when the class sets
      ``supports_row_params``, a sequence with one per row (each row sampled with its own seed);
      a backend without it gets one call per distinct setting from the engine;
    * when some rows fail and others do not, ``generate`` raises
      :class:`~eval_agent.agents.errors.RowErrors` carrying the other rows' answers (the engine ends
      only the failed episodes, as ``generation_error``);
    * :class:`~eval_agent.agents.errors.FatalPolicyError` means no retry can help (the run stops);
      any other exception makes the engine retry the batch one conversation at a time.
    """

    supports_row_params: bool = False
    """True when ``generate`` accepts one :class:`SamplingParams` per row."""

    @abstractmethod
    def generate(self, batch: Sequence[Sequence[Message]], params: RowParams) -> list[str]:
        """One assistant reply per conversation, in order (see the class docstring for ``params`` and errors)."""

    def close(self) -> None:
        """Release the model, servers or connections."""


RowParams = SamplingParams | Sequence[SamplingParams]
"""What :meth:`Policy.generate` takes: one setting for all rows, or one per row."""
