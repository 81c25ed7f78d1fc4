"""The check the released code never made: does a calibrated trajectory still work in the environment?

A calibrated pair joins the expert suffix ``a*_t, a*_{t+1}, ...`` onto a state the expert never
visited (after the deviated action ``â_t``). Replaying it answers two questions, stored in the
record: ``replay_executable`` (every suffix action is accepted by the engine) and
``replay_success`` (the task is won by the end of the suffix).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

from tqdm import tqdm

from eval_agent.envs.task_env import TaskEnv
from steca.method.trajectories import split_expert
from steca.records import PairRecord, SFTRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    executable: bool
    success: bool
    failed_action: str | None = None
    failed_index: int | None = None
    error: str | None = None


def replay_calibration(env: TaskEnv, game: str, prefix: Sequence[str], deviated: str | None,
                       suffix: Sequence[str]) -> ReplayResult:
    """Reach ``prefix + [deviated]`` in ``env``, then execute ``suffix`` until it is won or rejected.

    ``executable`` is False at the first suffix action the engine rejects (``valid`` False) or
    that is missing (None); ``success`` is True when an outcome reports ``won``.
    """
    start = list(prefix) + ([deviated] if deviated else [])
    _, outcomes = env.reset_to_prefix(game, start)
    if any(o.won for o in outcomes):
        return ReplayResult(True, True)
    for i, action in enumerate(suffix):
        if action is None:
            return ReplayResult(False, False, None, i, "expert turn without an action")
        out = env.execute(action)
        if not out.valid:
            return ReplayResult(False, False, action, i)
        if out.won:
            return ReplayResult(True, True)
    return ReplayResult(True, False)


# Same shape as eval_agent.engine.EngineStats (a dataclass of counters), on purpose: the two count
# different things, and a shared base would only share "= 0".
@dataclass
class ReplaySummary:
    checked: int = 0
    executable: int = 0
    success: int = 0
    dropped: int = 0
    errors: int = 0

    def as_dict(self) -> dict:
        rate = (lambda k: k / self.checked if self.checked else None)
        return {"checked": self.checked, "executable": self.executable, "success": self.success,
                "executable_rate": rate(self.executable), "success_rate": rate(self.success),
                "dropped": self.dropped, "errors": self.errors}


def check_calibrated_pairs(env: TaskEnv, pairs: Iterable[PairRecord], sft: dict[str, SFTRecord],
                           drop_non_executable: bool = False) -> tuple[list[PairRecord], ReplaySummary]:
    """Replay every calibrated pair (``extra.set == "calibrated"``), flag it, optionally drop failures.

    Pairs of other sets pass through unchanged. A pair whose replay raises keeps
    ``replay_executable = None`` and the error in ``replay_error`` (and is kept).
    """
    kept: list[PairRecord] = []
    summary = ReplaySummary()
    for pair in tqdm(list(pairs), desc="replay calibrated", unit="pair"):
        if pair.extra.get("set") != "calibrated":
            kept.append(pair)
            continue
        summary.checked += 1
        src, t = str(pair.extra.get("source_id")), pair.extra.get("iteration")
        try:
            exp = sft.get(src)
            if exp is None or not isinstance(t, int):
                raise ValueError(f"pair {pair.id}: no expert trajectory {src!r} / iteration {t!r} to replay")
            actions = split_expert(exp).actions()
            res = replay_calibration(env, exp.game_file or str(pair.extra.get("game_file")),
                                     [a for a in actions[:t] if a is not None],
                                     pair.extra.get("deviated_action"), actions[t:])
        except Exception as e:  # noqa: BLE001 - one bad record must not stop the check
            logger.warning("replay of %s failed: %s", pair.id, e)
            summary.errors += 1
            pair.extra.update(replay_executable=None, replay_success=None, replay_error=str(e))
            kept.append(pair)
            continue
        pair.extra.update(replay_executable=res.executable, replay_success=res.success,
                          replay_failed_action=res.failed_action)
        summary.executable += res.executable
        summary.success += res.success
        if drop_non_executable and not res.executable:
            summary.dropped += 1
            continue
        kept.append(pair)
    logger.info("replay check: %s", summary.as_dict())
    return kept, summary
