"""Errors a policy backend raises, and how the rollout engine treats them.

* :class:`FatalPolicyError` stops the run: bad credentials, a missing model, a server that is not
  there. Recording every episode as failed would be wrong (a rerun without ``--override`` would then
  skip them), so the engine re-raises it.
* :class:`RowErrors` says that some conversations of a batch could not be answered (a prompt longer
  than the model's context, a request the server rejected). It carries the answers of the other
  rows, so the engine keeps them and ends only the failed episodes (``generation_error``).
Any other exception from ``generate`` makes the engine retry the batch one conversation at a time.
"""
from __future__ import annotations


class PolicyError(RuntimeError):
    """Base class of the backends' errors."""


class FatalPolicyError(PolicyError):
    """An error that no retry or other conversation can avoid; the run must stop."""


class RowErrors(PolicyError):
    """Some rows of a batch failed. ``outputs[i]`` is None exactly for the rows in ``errors``."""

    def __init__(self, outputs: list[str | None], errors: dict[int, str]):
        self.outputs = outputs
        self.errors = errors
        first = min(errors) if errors else None
        detail = f"; row {first}: {errors[first]}" if first is not None else ""
        super().__init__(f"{len(errors)} of {len(outputs)} conversations failed{detail}")
