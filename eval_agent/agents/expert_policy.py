"""The scripted expert as a policy of the rollout engine (``--agent_config expert``)."""
from __future__ import annotations

from typing import Sequence

from eval_agent.agents.errors import FatalPolicyError
from eval_agent.agents.policy import Policy, RowParams
from eval_agent.types import Message


class ExpertPolicy(Policy):
    """The expert plays through :class:`~eval_agent.engine.RolloutEngine` like every other agent.

    Its turns are the environment's expert plan (``TaskEnv.expert_actions``: ALFWorld's oracle and
    planner, VirtualHome's ground-truth program). Only the environment can compute a plan, so the
    engine's environment workers compute and replay it for jobs with ``expert=True`` (in parallel
    over the workers, with the same resume and output rules as a model); an episode that the plan
    leaves unfinished ends as ``expert_exhausted``. The engine therefore never asks this policy for a
    turn, and asking it is an error.
    """

    supports_row_params = True

    def generate(self, batch: Sequence[Sequence[Message]], params: RowParams) -> list[str]:
        raise FatalPolicyError("the expert's turns come from the environment's plan (RolloutJob.expert=True); "
                               "it cannot write a turn of its own")
