"""Builders of STeCa's three training sets from step records and expert trajectories.

* D_c (calibrated): at each deviated explored step ``t`` (:mod:`steca.method.deviation`),
  ``prompt = expert prefix(t) + [â_t, o(â_t)]``, ``chosen = [Thought: <reflection>\\nAction: a*_t]
  + expert suffix after a*_t``, ``rejected`` = the exploration after ``â_t``; weight ``1 + k d``.
* D_e (explored successes): explorations from ``t = 0`` that succeed; ``prompt`` = the task
  prompt, ``chosen`` = the exploration, ``rejected`` = the expert trajectory; weight ``1 - k d``,
  kept only when ``d`` is below the scheme's threshold.
* D_s (expert sub-trajectories): steps where the expert beat the exploration by more than
  ``margin`` in both the MC step reward and the final outcome: ``prompt = expert prefix(t)``,
  ``chosen`` = expert suffix from ``a*_t``, ``rejected`` = the exploration from ``â_t``; plus whole
  expert trajectories paired with failed explorations from ``t = 0``; weight ``1 + k d``.

``d`` is the DTW deviation distance between ``chosen`` and ``rejected``
(:func:`steca.method.dtw.trajectory_distance`). Every record carries ``set`` and ``rule`` (which
rule selected it) besides the training fields. A record that cannot be built is reported in
``BuildResult.problems`` and the others are still built.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from eval_agent.types import Message
from steca.method.deviation import DeviationConfig, find_deviations
from steca.method.dtw import trajectory_distance
from steca.method.encoders import ActionEncoder
from steca.method.reflection import ReflectionRequest, Reflector, calibrated_turn
from steca.method.rewards import WeightScheme
from steca.method.trajectories import (expert_and_exploration, expert_at, exploration_continuation,
                                       exploration_from_step, explorations_from_start, step_turns)
from steca.records import PairRecord, SFTRecord, StepRecord

logger = logging.getLogger(__name__)

SET_CALIBRATED, SET_EXPLORED, SET_EXPERT = "calibrated", "explored", "expert"
RULE_EXPLORED_SUCCESS = "exploration_from_t0_succeeded & d<threshold"
RULE_EXPERT_WHOLE = "exploration_from_t0_failed: whole expert trajectory"


def rule_expert_beats(margin: float) -> str:
    return f"r_expert(t)-r_explore(t)>{margin:g} & R_expert-R_explore>{margin:g}"


@dataclass(frozen=True)
class ContinuationOptions:
    """How an exploration becomes a training side. Released: its final observation is dropped (the
    released builders slice it off), and a calibrated pair whose rejected side has no action is dropped."""

    keep_final_observation: bool = False
    keep_empty_rejected: bool = False

    def trim(self, messages: Sequence[Message]) -> list[Message]:
        """``messages`` without a final user turn, unless ``keep_final_observation``."""
        out = list(messages)
        if not self.keep_final_observation and out and out[-1].role == "user":
            out.pop()
        return out


RELEASED_CONTINUATION = ContinuationOptions()


@dataclass
class BuildResult:
    """Training pairs of one set, records that could not be built, and counts."""

    pairs: list[PairRecord] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    distances: list[float] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)

    def problem(self, kind: str, task_id: str, t: int | None, message: str) -> None:
        logger.warning("%s: task %s step %s: %s", kind, task_id, t, message)
        self.problems.append({"kind": kind, "id": task_id, "iteration": t, "error": message})
        self.counts[f"problem:{kind}"] += 1


def _distance(chosen: Sequence[Message], rejected: Sequence[Message], encoder: ActionEncoder) -> float:
    return trajectory_distance(chosen, rejected, encoder)


def build_calibrated(sft: dict[str, SFTRecord], expert_steps: Iterable[StepRecord],
                     explored_steps: Iterable[StepRecord], cfg: DeviationConfig, encoder: ActionEncoder,
                     reflector: Reflector, weights: WeightScheme, continuation: ContinuationOptions = RELEASED_CONTINUATION
                     ) -> BuildResult:
    """D_c: one calibrated pair per deviated step (reflection failures are reported in ``problems``).

    ``rejected`` is the exploration after ``â_t`` without its final observation; a pair whose
    rejected side has no action is dropped (both as released; ``continuation`` keeps either).

    Paper: arXiv 2502.14276, Sec. 3, calibrated trajectory construction: prefix ``a*_<t``, the
    deviated ``â_t`` and its observation, a reflective turn ending in ``a*_t``, then the expert
    suffix; weight ``1 + scale * d`` (:class:`~steca.method.rewards.WeightScheme`).
    """
    res = BuildResult()
    dev = find_deviations(expert_steps, explored_steps, cfg, encoder)
    res.rejected.update(dev.rejected)
    res.counts["candidates"] = dev.candidates
    res.counts["deviated"] = len(dev.deviations)
    staged = []
    for d in dev.deviations:
        traj = expert_at(sft, d.task_id, d.t, res.problem)
        if traj is None:
            continue
        try:
            turn, obs = step_turns(d.explored)
        except ValueError as e:
            res.problem("bad_step_record", d.task_id, d.t, str(e))
            continue
        prompt = traj.prefix(d.t) + [turn] + ([obs] if obs is not None else [])
        key = f"{d.task_id}:{d.t}"
        staged.append((d, traj, prompt, ReflectionRequest(key, tuple(prompt), d.explored_action or turn.content.strip(),
                                                          d.expert_action)))
    results = reflector.reflect([s[3] for s in staged]) if staged else []
    for (d, traj, prompt, req), refl in zip(staged, results):
        if not refl.ok:
            res.problem("reflection_failed", d.task_id, d.t, refl.error or "no reflection")
            continue
        first_obs = traj.steps[d.t].observation
        chosen = [Message("assistant", calibrated_turn(refl.thought, d.expert_action))]
        chosen += ([first_obs] if first_obs is not None else []) + traj.suffix(d.t + 1)
        rejected = continuation.trim(exploration_continuation(d.explored))
        try:
            dist = _distance(chosen, rejected, encoder)
        except ValueError:
            if not continuation.keep_empty_rejected:
                res.rejected["empty_rejected"] += 1
                continue
            dist = 0.0
            res.counts["no_rejected_actions"] += 1
        res.distances.append(dist)
        res.pairs.append(PairRecord(
            id=f"{d.task_id}_calibrated_{d.t}", prompt=prompt, chosen=chosen, rejected=rejected,
            reward=weights.calibrated(dist),
            extra={"set": SET_CALIBRATED, "rule": d.rule, "source_id": d.task_id, "iteration": d.t,
                   "game_file": d.explored.game_file, "distance": dist,
                   "r_explore": d.explore_reward, "r_expert_prev": d.expert_prev_reward,
                   "deviated_action": d.explored_action, "expert_action": d.expert_action,
                   "action_similarity": d.similarity, "reflection_source": refl.source,
                   "reflection_stand_in": refl.source == "offline-stand-in"}))
        res.counts[f"rule:{d.rule}"] += 1
    res.counts["pairs"] = len(res.pairs)
    return res


def build_explored(sft: dict[str, SFTRecord], explored_steps: Iterable[StepRecord], encoder: ActionEncoder,
                   weights: WeightScheme, continuation: ContinuationOptions = RELEASED_CONTINUATION) -> BuildResult:
    """D_e: successful explorations from ``t = 0``, kept when ``d < weights.explored_max_distance``.

    Paper: arXiv 2502.14276, Sec. 3, reinforced training (successful trajectories, weight ``1 - scale * d``).
    """
    res = BuildResult()
    # Same loop head as the ETO pairs in baselines.py (_outcome_pairs), on purpose: the shared part is
    # explorations_from_start and expert_and_exploration; the outcome test (successful explorations here,
    # failed ones there) and the counters differ.
    for rec in explorations_from_start(explored_steps):
        res.counts["candidates"] += 1
        if rec.agent_final_reward is None or rec.agent_final_reward < 1.0:
            res.rejected["exploration_failed"] += 1
            continue
        got = expert_and_exploration(sft, rec, res.problem)
        if got is None:
            continue
        traj, explored = got
        try:
            chosen = continuation.trim(explored)
            dist = _distance(chosen, traj.suffix(0), encoder)
        except ValueError as e:
            res.problem("bad_step_record", rec.id, 0, str(e))
            continue
        res.distances.append(dist)
        if not weights.keep_explored(dist):
            res.rejected["distance_too_large"] += 1
            continue
        res.pairs.append(PairRecord(
            id=f"{rec.id}_explored_0", prompt=traj.prompt, chosen=chosen, rejected=traj.suffix(0),
            reward=weights.explored(dist),
            extra={"set": SET_EXPLORED, "rule": RULE_EXPLORED_SUCCESS, "source_id": rec.id, "iteration": 0,
                   "game_file": rec.game_file, "distance": dist}))
        res.counts[f"rule:{RULE_EXPLORED_SUCCESS}"] += 1
    res.counts["pairs"] = len(res.pairs)
    return res


def build_expert(sft: dict[str, SFTRecord], expert_steps: Iterable[StepRecord], explored_steps: Iterable[StepRecord],
                 encoder: ActionEncoder, weights: WeightScheme, margin: float = 0.01,
                 include_whole: bool = True, min_step: int = 2,
                 continuation: ContinuationOptions = RELEASED_CONTINUATION) -> BuildResult:
    """D_s: expert suffixes where the expert step beat the explored step by more than ``margin``.

    Paper: arXiv 2502.14276, Sec. 3 (expert sub-trajectories among the successful trajectories);
    the margin rule is the released code's.

    Step rule (``t >= min_step``; the released code skips iterations 0 and 1, so 2): ``r_expert(t) - r_explore(t) > margin`` and
    ``R_expert - R_explore > margin``, where ``R`` is ``agent_final_reward`` (an expert step
    record without one counts as the expert's success, 1). Whole rule (``t = 0``, when
    ``include_whole``): the exploration from the start failed.
    """
    res = BuildResult()
    expert = {r.key: r for r in expert_steps}
    step_rule = rule_expert_beats(margin)
    for rec in sorted(explored_steps, key=lambda r: (r.id, r.iteration)):
        res.counts["candidates"] += 1
        t = rec.iteration
        if t == 0:
            if not include_whole:
                res.rejected["whole_trajectories_off"] += 1
                continue
            if rec.agent_final_reward is None or rec.agent_final_reward >= 1.0:
                res.rejected["exploration_succeeded"] += 1
                continue
            rule, used = RULE_EXPERT_WHOLE, {}
        elif t < min_step:
            res.rejected["step_too_early"] += 1
            continue
        else:
            exp_rec = expert.get(rec.key)
            if exp_rec is None or exp_rec.mc_step_reward is None:
                res.rejected["missing_expert_reward"] += 1
                continue
            if rec.mc_step_reward is None or rec.agent_final_reward is None:
                res.rejected["missing_explore_reward"] += 1
                continue
            expert_final = 1.0 if exp_rec.agent_final_reward is None else exp_rec.agent_final_reward
            if not exp_rec.mc_step_reward - rec.mc_step_reward > margin:
                res.rejected["expert_step_not_better"] += 1
                continue
            if not expert_final - rec.agent_final_reward > margin:
                res.rejected["expert_outcome_not_better"] += 1
                continue
            rule = step_rule
            used = {"r_expert": exp_rec.mc_step_reward, "r_explore": rec.mc_step_reward}
        traj = expert_at(sft, rec.id, t, res.problem)
        if traj is None:
            continue
        chosen = traj.suffix(t)
        try:
            rejected = continuation.trim(exploration_from_step(rec))
            dist = _distance(chosen, rejected, encoder)
        except ValueError as e:
            res.problem("bad_step_record", rec.id, t, str(e))
            continue
        res.distances.append(dist)
        res.pairs.append(PairRecord(
            id=f"{rec.id}_expert_{t}", prompt=traj.prefix(t), chosen=chosen, rejected=rejected,
            reward=weights.expert(dist),
            extra={"set": SET_EXPERT, "rule": rule, "source_id": rec.id, "iteration": t,
                   "game_file": rec.game_file, "distance": dist, **used}))
        res.counts[f"rule:{rule}"] += 1
    res.counts["pairs"] = len(res.pairs)
    return res
