"""Replay an SFT file against its games and report what the engine says about every trajectory.

Real expert data is imperfect: some trajectories contain actions the engine rejects, reworded
observations or skipped steps, and some never reach the goal. For each trajectory this reports
whether it wins, the first turn where the recorded observation differs from the engine's, and the
actions the engine rejected; ``--filtered_output`` writes the winning trajectories to a new file.

    python -m steca.data.datacheck --sft_file data/alfworld_sft.json --data_dir data/alfworld \\
        --report report.jsonl [--filtered_output alfworld_sft.winning.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from eval_agent.envs import make_env
from eval_agent.envs.task_env import TaskEnv
from eval_agent.types import parse_action
from eval_agent.storage import check_writable
from steca.records import SFTRecord, load_sft, nonempty, write_records

logger = logging.getLogger(__name__)
OBS_PREFIX = "Observation: "


@dataclass
class TrajectoryCheck:
    """What replaying one trajectory showed."""

    id: str
    game_file: str
    won: bool = False
    n_actions: int = 0
    first_observation_matches: bool = False
    all_observations_match: bool = False
    first_divergence: int | None = None  # index of the first action whose observation differs
    recorded: str | None = None
    engine: str | None = None
    rejected_actions: list[str] = field(default_factory=list)
    turns_without_action: int = 0
    won_at: int | None = None
    error: str | None = None


def episode_turns(rec: SFTRecord) -> tuple[str, list[tuple[str, str | None]]]:
    """The first observation and ``(assistant turn, recorded observation after it)`` pairs.

    The conversation is ``[instruction, "OK", first observation, (assistant, observation)*]``.
    """
    conv = rec.conversations
    start = next((i for i, m in enumerate(conv) if m.role == "assistant"), None)
    if start is None or start + 1 >= len(conv):
        raise ValueError(f"record {rec.id}: no first observation after the instruction turn")
    first = conv[start + 1].content
    pairs: list[tuple[str, str | None]] = []
    for i in range(start + 2, len(conv)):
        if conv[i].role == "assistant":
            nxt = conv[i + 1].content if i + 1 < len(conv) and conv[i + 1].role == "user" else None
            pairs.append((conv[i].content, nxt))
    return first, pairs


def check_trajectory(env: TaskEnv, rec: SFTRecord) -> TrajectoryCheck:
    """Replay ``rec`` in ``env`` (all of its actions, also after a win) and compare observations."""
    out = TrajectoryCheck(rec.id, rec.game_file)
    try:
        first, pairs = episode_turns(rec)
        engine_first = env.reset(rec.game_file)
    except Exception as e:  # unknown game file, malformed conversation
        out.error = f"{type(e).__name__}: {e}"
        return out
    out.first_observation_matches = engine_first == first
    matches = out.first_observation_matches
    if not matches:
        out.first_divergence, out.recorded, out.engine = -1, first, engine_first
    for k, (turn, recorded) in enumerate(pairs):
        action = parse_action(turn)
        if action is None:
            out.turns_without_action += 1
            continue
        outcome = env.execute(action)
        out.n_actions += 1
        if not outcome.valid:
            out.rejected_actions.append(action)
        if outcome.won and out.won_at is None:
            out.won_at = k
        out.won = outcome.won  # as the engine says after the last action
        rec_obs = recorded[len(OBS_PREFIX):] if recorded and recorded.startswith(OBS_PREFIX) else recorded
        if recorded is not None and rec_obs != outcome.observation and matches:
            matches = False
            out.first_divergence, out.recorded, out.engine = k, rec_obs, outcome.observation
    out.all_observations_match = matches
    return out


_WORKER_ENV: list[TaskEnv] = []  # one env per worker process


def _init_worker(exp_config: str, split: str, data_dir: str) -> None:
    _WORKER_ENV.append(make_env(exp_config, split, data_dir=data_dir))


def _check_in_worker(rec: SFTRecord) -> TrajectoryCheck:
    return check_trajectory(_WORKER_ENV[0], rec)


def check_file(sft_file: str | Path, data_dir: str | Path, exp_config: str = "alfworld", split: str = "train",
               limit: int | None = None, num_workers: int = 1) -> tuple[list[TrajectoryCheck], list[SFTRecord]]:
    """Check every readable record of ``sft_file`` (in record order); unreadable records are logged."""
    loaded = load_sft(sft_file)
    records = nonempty(loaded, sft_file, "SFT record")
    records = records[:limit] if limit else records
    bar = tqdm(total=len(records), desc="replaying trajectories", dynamic_ncols=True)
    if num_workers > 1 and len(records) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(num_workers, _init_worker, (exp_config, split, str(data_dir))) as pool:
            checks = []
            for c in pool.imap(_check_in_worker, records, chunksize=4):
                checks.append(c)
                bar.update()
    else:
        env = make_env(exp_config, split, data_dir=data_dir)
        checks = []
        for r in records:
            checks.append(check_trajectory(env, r))
            bar.update()
        env.close()
    bar.close()
    return checks, records


def summarize(checks: Sequence[TrajectoryCheck]) -> dict[str, object]:
    return {
        "trajectories": len(checks),
        "won": sum(c.won for c in checks),
        "all_observations_match": sum(c.all_observations_match for c in checks),
        "first_observation_matches": sum(c.first_observation_matches for c in checks),
        "with_rejected_actions": sum(bool(c.rejected_actions) for c in checks),
        "errors": sum(c.error is not None for c in checks),
        "not_won_ids": [c.id for c in checks if not c.won],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft_file", required=True)
    p.add_argument("--data_dir", required=True, help="ALFWorld data root (holds json_2.1.1/)")
    p.add_argument("--exp_config", default="alfworld")
    p.add_argument("--split", default="train", help="split folder the games are in (game files resolve anywhere)")
    p.add_argument("--report", default=None, help="write one JSON line per trajectory here")
    p.add_argument("--filtered_output", default=None, help="write the winning trajectories to this SFT file")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--num_workers", type=int, default=2, help="replay in this many processes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for out in (args.report, args.filtered_output):
        if out:
            check_writable(out)
    checks, records = check_file(args.sft_file, args.data_dir, args.exp_config, args.split, args.limit,
                                 args.num_workers)
    if args.report:
        write_records(args.report, [asdict(c) for c in checks], fmt="jsonl")
    if args.filtered_output:
        keep = {c.id for c in checks if c.won}
        write_records(args.filtered_output, [r for r in records if r.id in keep], fmt="json")
    summary = summarize(checks)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
