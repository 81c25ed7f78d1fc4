"""The narrow interface every environment implements.

An environment plays one task at a time. It speaks in *engine actions* (``go to desk 1``); the
episode driver (:mod:`eval_agent.episode`) turns a model's raw text into an action, keeps the chat
history and counts steps, so every environment behaves the same way towards the agent.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from eval_agent.types import MAX_STEPS, StepOutcome

class TaskEnv(ABC):
    """One environment instance. Not thread-safe; give every worker process its own.

    Life cycle: ``reset(task_id)`` (or ``reset_to_prefix``), then ``execute(action)`` until the
    driver stops. ``task_ids()`` lists the tasks of the split this instance was built for.
    """

    name: str = "base"
    max_steps: int = MAX_STEPS

    @abstractmethod
    def task_ids(self) -> list[str]:
        """Ids of the tasks of this split, in a stable order."""

    @abstractmethod
    def game_file(self, task_id: str) -> str:
        """The file (or path-like name) that identifies the task in records."""

    @abstractmethod
    def reset(self, task_id: str) -> str:
        """Start ``task_id``; return the first observation text (the goal included)."""

    @abstractmethod
    def execute(self, action: str) -> StepOutcome:
        """Execute one engine action in the current task."""

    @abstractmethod
    def expert_actions(self, task_id: str) -> list[str]:
        """A list of engine actions that solves ``task_id`` from its initial state."""

    def task_type(self, task_id: str) -> str | None:
        """The task's type or category for per-type results (None: the environment has none)."""
        return None

    def reset_to_prefix(self, task_id: str, actions: Sequence[str]) -> tuple[str, list[StepOutcome]]:
        """Start ``task_id`` and execute ``actions``; return the first observation and each outcome.

        Subclasses override this with something faster than replaying (it is the hot path of
        Monte Carlo sampling); the result must be identical to reset + execute.
        """
        first = self.reset(task_id)
        return first, [self.execute(a) for a in actions]

    def close(self) -> None:
        """Release engine resources."""
