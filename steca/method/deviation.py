"""The deviation rule: which explored steps are worth calibrating.

An explored step ``t`` (the base agent's action ``â_t`` after the expert prefix ``a*_0..a*_{t-1}``)
is *deviated* when its Monte Carlo step reward drops below the value of the state it started from:

    r_explore(t) - r_expert(t-1) <= delta

where ``r_expert(t-1)`` is the step reward of the expert step ``t-1`` (the value of the state
after the expert prefix of step ``t``). The released code adds filters, each an option here:
the exploration from step ``t`` failed; ``â_t`` differs from ``a*_t`` as a string; and their
embedding cosine is below ``max_similarity`` (0.95); steps ``t < min_step`` (2) are skipped.
The paper calibrates only the first deviated step of a trajectory (``first_only``); the released
code turns every qualifying step into a sample (the default here).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from eval_agent.types import parse_action
from steca.method.encoders import ActionEncoder
from steca.records import StepRecord


@dataclass(frozen=True)
class DeviationConfig:
    """Options of the deviation rule; the defaults reproduce the released code."""

    delta: float = 0.0
    require_exploration_failed: bool = True
    require_action_differs: bool = True
    max_similarity: float | None = 0.95
    min_step: int = 2
    first_only: bool = False

    def rule_name(self) -> str:
        """A readable label of the rule, stored in every record the rule selects."""
        parts = [f"r_explore(t)-r_expert(t-1)<={self.delta:g}"]
        if self.require_exploration_failed:
            parts.append("exploration_failed")
        if self.require_action_differs:
            parts.append("action_differs")
        if self.max_similarity is not None:
            parts.append(f"cos<{self.max_similarity:g}")
        parts.append(f"t>={self.min_step}")
        parts.append("first_deviated_step" if self.first_only else "every_deviated_step")
        return " & ".join(parts)


RELEASED_RULE = DeviationConfig()
PAPER_RULE = DeviationConfig(require_exploration_failed=False, require_action_differs=False,
                             max_similarity=None, min_step=1, first_only=True)
RULE_PRESETS = {"released": RELEASED_RULE, "paper": PAPER_RULE}


@dataclass
class Deviation:
    """A selected explored step and the numbers that selected it."""

    task_id: str
    t: int
    explored: StepRecord
    expert_prev_reward: float
    explore_reward: float
    expert_action: str
    explored_action: str | None
    similarity: float | None
    rule: str


@dataclass
class DeviationResult:
    """Selected deviations plus, per condition, how many candidate steps it turned away."""

    deviations: list[Deviation]
    rejected: Counter = field(default_factory=Counter)
    candidates: int = 0


def step_conditions(t: int, explore_reward: float, expert_prev_reward: float, exploration_outcome: float | None,
                    expert_action: str, explored_action: str | None, similarity: float | None,
                    cfg: DeviationConfig) -> list[str]:
    """Names of the conditions step ``t`` fails (empty list: the step is deviated).

    Conditions: ``t >= min_step``; ``r_explore(t) - r_expert(t-1) <= delta``; exploration outcome
    ``< 1`` (failed); ``â_t != a*_t`` (stripped strings); ``cos(emb(â_t), emb(a*_t)) < max_similarity``.
    """
    failed = []
    if t < cfg.min_step:
        failed.append("step_too_early")
    if not explore_reward - expert_prev_reward <= cfg.delta:
        failed.append("no_reward_drop")
    if cfg.require_exploration_failed and (exploration_outcome is None or exploration_outcome >= 1.0):
        failed.append("exploration_succeeded")
    if cfg.require_action_differs and explored_action is not None and explored_action.strip() == expert_action.strip():
        failed.append("same_action")
    if cfg.max_similarity is not None and similarity is not None and not similarity < cfg.max_similarity:
        failed.append("similar_action")
    return failed


def find_deviations(expert_steps: Iterable[StepRecord], explored_steps: Iterable[StepRecord],
                    cfg: DeviationConfig, encoder: ActionEncoder | None = None) -> DeviationResult:
    """Apply the deviation rule to every explored step that has the rewards it needs.

    ``expert_steps`` supply ``r_expert(t-1)`` (``mc_step_reward``, the file field ``monte_carlo_step_reward``, of iteration ``t-1``) and the
    expert action ``a*_t`` (``agent_step_output`` of iteration ``t``); ``explored_steps`` supply
    ``r_explore(t)``, ``â_t`` and the exploration outcome ``agent_final_reward``. A missing reward
    or expert step counts as ``missing_*`` in ``rejected``. ``encoder`` is required when
    ``cfg.max_similarity`` is set.
    """
    if cfg.max_similarity is not None and encoder is None:
        raise ValueError("the similarity filter needs an action encoder")
    expert = {r.key: r for r in expert_steps}
    result = DeviationResult([])
    rule = cfg.rule_name()
    by_task: dict[str, list[StepRecord]] = {}
    for rec in explored_steps:
        by_task.setdefault(rec.id, []).append(rec)
    for task_id in sorted(by_task, key=_natural_key):
        for rec in sorted(by_task[task_id], key=lambda r: r.iteration):
            t = rec.iteration
            result.candidates += 1
            prev, cur = expert.get((task_id, t - 1)), expert.get((task_id, t))
            if t < cfg.min_step:
                result.rejected["step_too_early"] += 1
                continue
            if rec.mc_step_reward is None:
                result.rejected["missing_explore_reward"] += 1
                continue
            if prev is None or prev.mc_step_reward is None:
                result.rejected["missing_expert_reward"] += 1
                continue
            expert_action = parse_action(cur.agent_step_output) if cur is not None else None
            if expert_action is None:
                result.rejected["missing_expert_action"] += 1
                continue
            explored_action = parse_action(rec.agent_step_output)
            similarity = None
            if cfg.max_similarity is not None:
                similarity = 0.0 if explored_action is None else encoder.cosine(explored_action, expert_action)
            failed = step_conditions(t, rec.mc_step_reward, prev.mc_step_reward, rec.agent_final_reward,
                                     expert_action, explored_action, similarity, cfg)
            if failed:
                result.rejected.update(failed)
                continue
            result.deviations.append(Deviation(task_id, t, rec, prev.mc_step_reward, rec.mc_step_reward,
                                               expert_action, explored_action, similarity, rule))
            if cfg.first_only:
                break
    return result


def _natural_key(s: str) -> tuple:
    """Sort ``alfworld_2`` before ``alfworld_10``."""
    import re
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s))
