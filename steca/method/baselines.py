"""Training data of the paper's baselines, built from the same files as STeCa's sets.

All three methods start from the SFT agent and read what stage 2 already wrote: the expert
trajectories (SFT file), the Monte Carlo step rewards of expert steps (``r_expert(t)``) and of the
agent's own steps taken after the expert prefix (``r_explore(t)``, with the exploration that
continued from there and its outcome ``R_explore(t)``). Step indices are 0-based; ``t = 0`` is an
exploration of the whole task from its start.

* **RFT** (rejection-sampling fine-tuning, Yuan et al. 2023, as the ETO and IPR papers use it as a
  baseline): SFT on ``D_expert ∪ {e ~ pi_base : R(e) = 1}``, the expert trajectories plus the
  agent's own successful explorations. By default only explorations from the task's start count
  (a whole trajectory written by the agent); ``from_start_only=False`` also keeps successful
  explorations that began after an expert prefix (the prefix's turns are the expert's).
* **ETO** (Song et al., ACL 2024, arXiv 2403.02502, Sec. 3): contrastive trajectory pairs
  ``(e_w, e_l)`` with ``e_w`` the expert trajectory and ``e_l`` the agent's failed exploration of the
  same task, ``R(e_w) > R(e_l)``; trained with trajectory-level DPO (:func:`steca.training.preference_losses.dpo_loss`).
* **IPR** (Xiong et al., EMNLP 2024, arXiv 2406.11176, Sec. 3): along the expert trajectory the agent
  takes its own step ``â_t`` in state ``s_t`` (after the expert prefix ``a*_0..a*_{t-1}``) and continues;
  where its step reward falls short of the expert's, ``r(s_t, a*_t) - r(s_t, â_t) > margin``, the
  step-level pair is ``(prompt = expert prefix(t), chosen = expert continuation a*_t.., rejected =
  the agent's continuation â_t..)``. Outcome-level pairs are ETO's pairs; the SFT part is the expert
  trajectories. The three parts feed IPR's mixture loss (:func:`steca.training.preference_losses.ipr_loss`).

Records: RFT writes SFT records (``{id, game_file, conversations}``); ETO and IPR write pair records
(``{id, prompt, chosen, rejected, reward}``) whose extras carry ``set``, ``rule``, ``source_id`` and
``iteration``; IPR's also carry ``level`` (``outcome`` | ``step`` | ``sft``; an ``sft`` record has an
empty ``rejected``). ``reward`` is 1 (none of these methods weighs its samples).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from eval_agent.types import Message
from steca.records import PairRecord, SFTRecord, StepRecord
from steca.method.trajectories import (expert_and_exploration, expert_at, exploration_from_step,
                                       explorations_from_start, split_expert)

logger = logging.getLogger(__name__)

SET_RFT, SET_ETO, SET_IPR = "rft", "eto", "ipr"
LEVEL_OUTCOME, LEVEL_STEP, LEVEL_SFT = "outcome", "step", "sft"
IPR_LEVELS = (LEVEL_OUTCOME, LEVEL_STEP, LEVEL_SFT)
RULE_RFT_EXPERT = "expert trajectory"
RULE_RFT_SUCCESS = "exploration succeeded: R_explore = 1"
RULE_OUTCOME = "exploration from t=0 failed: R_expert > R_explore"
RULE_SFT = "expert trajectory (SFT part)"


def rule_step_short(margin: float) -> str:
    return f"r_expert(t)-r_explore(t)>{margin:g}"


def succeeded(outcome: float | None) -> bool:
    """An episode succeeded when its outcome reward is 1 (``R >= 1``); a missing outcome is no success."""
    return outcome is not None and outcome >= 1.0


@dataclass
class BaselineResult:
    """Records of one builder, the candidates it turned away (by reason) and problems per record."""

    records: list = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    problems: list[dict] = field(default_factory=list)

    def problem(self, kind: str, task_id: str, t: int | None, message: str) -> None:
        logger.warning("%s: task %s step %s: %s", kind, task_id, t, message)
        self.problems.append({"kind": kind, "id": task_id, "iteration": t, "error": message})
        self.counts[f"problem:{kind}"] += 1

    def summary(self) -> dict:
        return {"records": len(self.records), "counts": dict(self.counts), "turned_away": dict(self.rejected),
                "problems": len(self.problems)}


def _ordered(steps: Iterable[StepRecord]) -> list[StepRecord]:
    return sorted(steps, key=lambda r: (r.id, r.iteration))


def build_rft(sft: Mapping[str, SFTRecord], explored_steps: Iterable[StepRecord],
              from_start_only: bool = True, dedupe: bool = True) -> BaselineResult:
    """RFT's SFT set: every expert trajectory, then every successful exploration (``R_explore(t) = 1``).

    An exploration from step ``t`` becomes ``expert prefix(t) + [â_t, o_t, â_{t+1}, ...]`` (its task
    prompt is the SFT record's). ``from_start_only`` keeps ``t = 0`` only; ``dedupe`` drops a trajectory
    whose messages equal one already kept for the same task (e.g. the agent replaying the expert).
    """
    res = BaselineResult()
    seen: set[tuple[str, tuple[Message, ...]]] = set()

    def keep(rec: SFTRecord, rule: str) -> None:
        key = (str(rec.extra["source_id"]), tuple(rec.conversations))
        if dedupe and key in seen:
            res.rejected["duplicate_trajectory"] += 1
            return
        seen.add(key)
        rec.extra.update({"set": SET_RFT, "rule": rule})
        res.records.append(rec)
        res.counts[f"rule:{rule}"] += 1

    for task_id, exp in sft.items():
        keep(SFTRecord(exp.id, exp.game_file, list(exp.conversations), exp.style, {"source_id": task_id}),
             RULE_RFT_EXPERT)
    for rec in _ordered(explored_steps):
        res.counts["candidates"] += 1
        if from_start_only and rec.iteration != 0:
            res.rejected["not_from_start"] += 1
            continue
        if not succeeded(rec.agent_final_reward):
            res.rejected["exploration_failed"] += 1
            continue
        traj = expert_at(sft, rec.id, rec.iteration, res.problem)
        if traj is None:
            continue
        try:
            conv = traj.prefix(rec.iteration) + exploration_from_step(rec)
        except ValueError as e:
            res.problem("bad_step_record", rec.id, rec.iteration, str(e))
            continue
        keep(SFTRecord(f"{rec.id}_rft_{rec.iteration}", rec.game_file, conv, "role",
                       {"source_id": rec.id, "iteration": rec.iteration}), RULE_RFT_SUCCESS)
    res.counts["records"] = len(res.records)
    return res


def _outcome_pairs(sft: Mapping[str, SFTRecord], explored_steps: Iterable[StepRecord], set_name: str,
                   res: BaselineResult, level: str | None) -> None:
    """ETO's pairs: ``(prompt, chosen = expert trajectory, rejected = failed exploration from t = 0)``.

    Kept when ``R_expert > R_explore`` with ``R_expert = 1`` (the expert trajectories succeed).
    """
    # Same loop head as datasets.build_explored, on purpose: the shared part is explorations_from_start and
    # expert_and_exploration; the outcome test (failed explorations here, successful ones there) and the
    # counters differ.
    for rec in explorations_from_start(explored_steps):
        res.counts["outcome_candidates"] += 1
        if rec.agent_final_reward is None:
            res.rejected["missing_outcome"] += 1
            continue
        if not 1.0 > rec.agent_final_reward:
            res.rejected["exploration_succeeded"] += 1
            continue
        got = expert_and_exploration(sft, rec, res.problem)
        if got is None:
            continue
        traj, rejected = got
        extra = {"set": set_name, "rule": RULE_OUTCOME, "source_id": rec.id, "iteration": 0,
                 "game_file": rec.game_file, "r_explore_outcome": rec.agent_final_reward}
        if level is not None:
            extra["level"] = level
        res.records.append(PairRecord(f"{rec.id}_{set_name}_outcome", traj.prompt, traj.suffix(0), rejected, 1.0, extra))
        res.counts[f"rule:{RULE_OUTCOME}"] += 1


def build_eto(sft: Mapping[str, SFTRecord], explored_steps: Iterable[StepRecord]) -> BaselineResult:
    """ETO's contrastive trajectory pairs: each task whose exploration from the start failed gives
    ``(chosen = expert trajectory, rejected = that exploration)`` on the task prompt."""
    res = BaselineResult()
    _outcome_pairs(sft, explored_steps, SET_ETO, res, None)
    res.counts["records"] = len(res.records)
    return res


@dataclass(frozen=True)
class IPRConfig:
    """Options of IPR's data: the step rule's margin, the first step index scored, and which parts to build.

    ``margin = 0``: a step pair whenever the agent's step reward is strictly below the expert's.
    ``min_step = 1``: ``t = 0`` is left to the outcome level (its step pair would repeat the outcome pair's
    prompt and chosen side).
    """

    margin: float = 0.0
    min_step: int = 1
    outcome_level: bool = True
    step_level: bool = True
    sft_level: bool = True


def build_ipr(sft: Mapping[str, SFTRecord], expert_steps: Iterable[StepRecord], explored_steps: Iterable[StepRecord],
              cfg: IPRConfig = IPRConfig()) -> BaselineResult:
    """IPR's three parts: outcome-level pairs (ETO's), step-level pairs where
    ``r_expert(t) - r_explore(t) > margin`` (``t >= min_step``), and the expert trajectories (SFT part)."""
    res = BaselineResult()
    explored = _ordered(explored_steps)
    if cfg.outcome_level:
        _outcome_pairs(sft, explored, SET_IPR, res, LEVEL_OUTCOME)
    if cfg.step_level:
        expert = {r.key: r for r in expert_steps}
        rule = rule_step_short(cfg.margin)
        for rec in explored:
            t = rec.iteration
            res.counts["step_candidates"] += 1
            if t < cfg.min_step:
                res.rejected["step_too_early"] += 1
                continue
            exp_rec = expert.get(rec.key)
            if exp_rec is None or exp_rec.mc_step_reward is None:
                res.rejected["missing_expert_reward"] += 1
                continue
            if rec.mc_step_reward is None:
                res.rejected["missing_explore_reward"] += 1
                continue
            if not exp_rec.mc_step_reward - rec.mc_step_reward > cfg.margin:
                res.rejected["agent_step_not_worse"] += 1
                continue
            traj = expert_at(sft, rec.id, t, res.problem)
            if traj is None:
                continue
            try:
                rejected = exploration_from_step(rec)
            except ValueError as e:
                res.problem("bad_step_record", rec.id, t, str(e))
                continue
            res.records.append(PairRecord(
                f"{rec.id}_ipr_step_{t}", traj.prefix(t), traj.suffix(t), rejected, 1.0,
                {"set": SET_IPR, "level": LEVEL_STEP, "rule": rule, "source_id": rec.id, "iteration": t,
                 "game_file": rec.game_file, "r_expert": exp_rec.mc_step_reward,
                 "r_explore": rec.mc_step_reward}))
            res.counts[f"rule:{rule}"] += 1
    if cfg.sft_level:
        for task_id, exp in sft.items():
            traj = split_expert(exp)
            res.records.append(PairRecord(f"{task_id}_ipr_sft", traj.prompt, traj.suffix(0), [], 1.0,
                                          {"set": SET_IPR, "level": LEVEL_SFT, "rule": RULE_SFT, "source_id": task_id,
                                           "iteration": 0, "game_file": exp.game_file}))
            res.counts[f"rule:{RULE_SFT}"] += 1
    res.counts.update({f"level:{lv}": sum(1 for r in res.records if r.extra.get("level") == lv) for lv in IPR_LEVELS})
    res.counts["records"] = len(res.records)
    return res
