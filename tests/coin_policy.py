"""A seeded scripted policy that wins with a known probability (for end-to-end tests of Monte Carlo rewards).

:class:`CoinExpertPolicy` knows each task's expert actions (by the goal line of its first observation).
Each turn it flips a coin seeded by the row's sampling seed (the rollout engine derives one per rollout
and step): heads and still on the expert's path, it plays the expert's next action; otherwise it plays
:data:`WASTED_TURN`, and once off the path it never comes back. From a state ``k`` expert steps short of
the goal a rollout therefore wins with probability ``p_win ** k``, and which rollouts win is fixed by
the seeds, so a run is reproducible.
"""
from __future__ import annotations

import random
from typing import Sequence

from eval_agent.agents.policy import Policy
from eval_agent.agents.backend_utils import params_per_row
from eval_agent.types import parse_action
from eval_agent.types import Message
from steca.records import SFTRecord
from steca.method.trajectories import split_expert

GOAL_MARK = "Your task is to:"
WASTED_ACTION = "inventory"
WASTED_TURN = f"Thought: I am not sure what to do.\nAction: {WASTED_ACTION}"


def goal_line(messages: Sequence[Message]) -> tuple[int, str]:
    """Index of the first user turn with the goal, and the goal text after ``Your task is to:``."""
    for i, m in enumerate(messages):
        if m.role == "user" and GOAL_MARK in m.content:
            return i, m.content.split(GOAL_MARK, 1)[1].strip().split("\n")[0]
    raise ValueError("no goal line in the conversation")


class CoinExpertPolicy(Policy):
    """The expert's next action with probability ``p_win`` per turn, else a wasted turn for good."""

    supports_row_params = True

    def __init__(self, experts: Sequence[SFTRecord], p_win: float):
        self.p_win = p_win
        self.actions = {goal_line(r.conversations)[1]: list(split_expert(r).actions()) for r in experts}

    def heads(self, seed: int | None) -> bool:
        return random.Random(seed).random() < self.p_win

    def generate(self, batch: Sequence[Sequence[Message]], params) -> list[str]:
        out = []
        for msgs, row in zip(batch, params_per_row(params, len(batch))):
            i, goal = goal_line(msgs)
            plan = self.actions[goal]
            done = [parse_action(m.content) for m in msgs[i + 1:] if m.role == "assistant"]
            on_path = done == plan[:len(done)] and len(done) < len(plan)
            out.append(f"Thought: next step of the plan.\nAction: {plan[len(done)]}"
                       if on_path and self.heads(row.seed) else WASTED_TURN)
        return out


def rollout_won_by_transcript(turns: list[str], remaining: list[str]) -> bool:
    """Did a rollout that generated ``turns`` play exactly the ``remaining`` expert actions (and so win)?"""
    return [parse_action(t) for t in turns] == remaining

